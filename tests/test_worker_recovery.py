"""A worker killed mid-export: the next worker start answers the request its status left at ``running``.

The killed worker is real: a subprocess runs a job whose export hangs, and is killed with SIGKILL once the
version's status says ``running``. In webhook mode no delivery would ask again, so ``serve`` (and
``requeue_interrupted``) must find it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace
from typing import Any, Callable, Dict

import pytest
from helpers import wait_for, worker_in_thread
from mlflow import MlflowClient

from mlflow_tfexport.constants import Tag
from mlflow_tfexport.export.recovery import owner_tags
from mlflow_tfexport.worker import (
    ExportWorker,
    Job,
    find_interrupted,
    is_interrupted,
    requeue_interrupted,
)

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals (SIGKILL)")

WAIT_S = 60.0

HANGING_WORKER = textwrap.dedent(
    """
    import sys, time
    from mlflow import MlflowClient
    from mlflow_tfexport.worker import ExportWorker, Job

    def hang(uri, **kwargs):
        time.sleep(300)

    client = MlflowClient(sys.argv[1], sys.argv[1])
    ExportWorker(client, export_fn=hang).process(Job(sys.argv[2], "1", sys.argv[3]))
    """
)


def _tags(name: str, version: str = "1") -> Dict[str, str]:
    return dict(MlflowClient().get_model_version(name, version).tags or {})


def _wait_for(predicate: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    return wait_for(predicate, what, timeout)


def _source(name: str, request: str, tmp_path: Any) -> None:
    client = MlflowClient()
    client.create_registered_model(name)
    client.create_model_version(name, source=str(tmp_path / "unused"), tags={Tag.FORMAT: "transformers"})
    client.set_model_version_tag(name, "1", Tag.REQUEST, request)


def _kill_mid_export(tracking_uri: str, name: str, request: str) -> int:
    """A worker process that dies (SIGKILL) while its export runs; returns its pid."""
    proc = subprocess.Popen([sys.executable, "-c", HANGING_WORKER, tracking_uri, name, request],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: _tags(name).get(Tag.REQUEST_STATUS, "").startswith("running") or proc.poll() is not None,
                  "the worker to start the export")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    tags = _tags(name)
    assert tags[Tag.REQUEST_STATUS] == f"running: {request} (1/1)"  # what the crash leaves behind
    assert tags[Tag.EXPORT_PID] == str(proc.pid)
    return proc.pid


@pytest.mark.integration
def test_serve_answers_a_request_whose_worker_was_killed(tracking_uri: str, tmp_path: Any) -> None:
    _source("crashed", "onnx", tmp_path)
    _kill_mid_export(tracking_uri, "crashed", "onnx")
    with worker_in_thread(secret="s"):
        # No delivery comes: the worker finds the interrupted request itself and answers it (the real
        # export fails here, the source being no model: what matters is that the status is final).
        tags = _wait_for(lambda: (t := _tags("crashed")).get(Tag.REQUEST_HANDLED) == "onnx" and t, "an answer")
        assert not tags[Tag.REQUEST_STATUS].startswith("running"), tags
        assert tags[Tag.EXPORT_PID] == str(os.getpid())  # the new worker ran it


def _fake_export(uri: str, **kwargs: Any) -> Any:
    return SimpleNamespace(model_uri=f"models:/{uri.split('/')[1]}/7")


@pytest.mark.integration
def test_requeue_takes_only_jobs_whose_worker_is_gone(tracking_uri: str, tmp_path: Any) -> None:
    client = MlflowClient()
    _source("dead", "onnx", tmp_path)
    dead_pid = _kill_mid_export(tracking_uri, "dead", "onnx")
    # A job running in this (live) process, one on another host with a fresh heartbeat, one with a stale one,
    # one written before workers named themselves, and a finished one.
    now = int(time.time())
    cases = {
        "live": {**owner_tags(), Tag.REQUEST_HEARTBEAT: str(now)},
        "remote-fresh": {**owner_tags(), Tag.EXPORT_HOST: "another-host", Tag.REQUEST_HEARTBEAT: str(now)},
        "remote-stale": {**owner_tags(), Tag.EXPORT_HOST: "another-host", Tag.REQUEST_HEARTBEAT: str(now - 3600)},
        "unnamed": {},
    }
    for name, tags in cases.items():
        _source(name, "torchscript:1x8", tmp_path)
        for key, value in {**tags, Tag.REQUEST_STATUS: "running: torchscript:1x8 (1/1)"}.items():
            client.set_model_version_tag(name, "1", key, value)
    _source("finished", "onnx", tmp_path)
    client.set_model_version_tag("finished", "1", Tag.REQUEST_STATUS, "done: models:/finished/2")

    assert [j.name for j in find_interrupted(client)] == ["dead", "remote-stale", "unnamed"]
    jobs = ExportWorker(client, export_fn=_fake_export).start()
    try:
        queued = requeue_interrupted(jobs)
        assert [(j.name, j.request, j.origin) for j in queued] == [
            ("dead", "onnx", "recovery"), ("remote-stale", "torchscript:1x8", "recovery"),
            ("unnamed", "torchscript:1x8", "recovery"),
        ]
        jobs.join()
    finally:
        jobs.stop(timeout=30)
    assert _tags("dead")[Tag.REQUEST_STATUS] == "done: models:/dead/7"
    assert _tags("dead")[Tag.EXPORT_PID] != str(dead_pid)
    for name in ("remote-stale", "unnamed"):
        assert _tags(name)[Tag.REQUEST_STATUS] == f"done: models:/{name}/7"
    for name in ("live", "remote-fresh"):
        assert _tags(name)[Tag.REQUEST_STATUS].startswith("running")
    assert find_interrupted(client) == []


def test_is_interrupted() -> None:
    running = {Tag.REQUEST: "onnx", Tag.REQUEST_STATUS: "running: onnx (1/1)"}
    assert is_interrupted(running)  # nobody named
    assert not is_interrupted({**running, **owner_tags()})  # this process: alive
    remote = {**running, **owner_tags(), Tag.EXPORT_HOST: "elsewhere"}
    assert not is_interrupted({**remote, Tag.REQUEST_HEARTBEAT: "1000"}, now=1100, stale_after_s=300)
    assert is_interrupted({**remote, Tag.REQUEST_HEARTBEAT: "1000"}, now=1400, stale_after_s=300)
    assert is_interrupted({**remote, Tag.REQUEST_HEARTBEAT: "\u00b2"})
    assert not is_interrupted({**running, Tag.REQUEST_STATUS: "done: models:/m/2"})
    assert not is_interrupted({Tag.REQUEST_STATUS: "running: onnx (1/1)"})  # the request was removed


def test_a_running_job_keeps_its_heartbeat_fresh(tracking_uri: str, tmp_path: Any) -> None:
    _source("beat", "onnx", tmp_path)
    release = threading.Event()

    def slow(uri: str, **kwargs: Any) -> Any:
        assert release.wait(30)
        return _fake_export(uri)

    jobs = ExportWorker(MlflowClient(), export_fn=slow, heartbeat_s=0.3).start()
    try:
        jobs.submit(Job("beat", "1", "onnx"))
        first = _wait_for(lambda: _tags("beat").get(Tag.REQUEST_HEARTBEAT), "the first heartbeat")
        client = MlflowClient()
        client.set_model_version_tag("beat", "1", Tag.REQUEST_HEARTBEAT, "0")  # would look stale from afar...
        _wait_for(lambda: _tags("beat")[Tag.REQUEST_HEARTBEAT] != "0", "the next heartbeat", timeout=10)
        assert int(_tags("beat")[Tag.REQUEST_HEARTBEAT]) >= int(first)  # ...but the worker says it lives
        release.set()
        jobs.join()
    finally:
        release.set()
        jobs.stop(timeout=30)
    assert _tags("beat")[Tag.REQUEST_STATUS] == "done: models:/beat/7"
