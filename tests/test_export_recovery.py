"""After ``kill -9`` of an exporting process: its RUNNING export run is marked FAILED, its temp dir removed.

The export-like process is real: a subprocess starts a run named ``export-onnx`` with the export key and the
owner tags an export records, makes its ``tfexport-*`` working directory, and is killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from typing import Any, Dict

import mlflow
import pytest
from mlflow import MlflowClient

from mlflow_tfexport.constants import Tag
from mlflow_tfexport.export.recovery import (
    ALIVE,
    DEAD,
    UNKNOWN,
    ProcessOwner,
    owner_tags,
    recover_stale_exports,
    recover_stale_exports_once,
    temp_dir_owner,
    temp_prefix,
)

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals (SIGKILL)")

EXPORTER = textwrap.dedent(
    """
    import os, sys, tempfile, time
    import mlflow
    from mlflow_tfexport.constants import Tag
    from mlflow_tfexport.export.recovery import owner_tags, temp_prefix

    mlflow.set_tracking_uri(sys.argv[1])
    workdir = tempfile.mkdtemp(prefix=temp_prefix(), dir=sys.argv[2])
    with open(os.path.join(workdir, "model.onnx"), "wb") as f:
        f.write(os.urandom(1 << 16))
    run = mlflow.start_run(run_name="export-onnx", tags={Tag.EXPORT_KEY: "k-1", **owner_tags()})
    print(run.info.run_id, workdir, flush=True)
    time.sleep(300)
    """
)


def _killed_exporter(tracking_uri: str, temp_root: str) -> Dict[str, Any]:
    """Start an export-like process, SIGKILL it mid-export and reap it; its run id, workdir and pid."""
    proc = subprocess.Popen([sys.executable, "-c", EXPORTER, tracking_uri, temp_root], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line, f"the exporter did not start: {proc.stderr.read() if proc.stderr else ''}"
        run_id, workdir = line.split()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    return {"run_id": run_id, "workdir": workdir, "pid": proc.pid}


@pytest.mark.integration
def test_a_killed_export_is_marked_failed_and_its_temp_dir_removed(tracking_uri: str, tmp_path: Any) -> None:
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    dead = _killed_exporter(tracking_uri, str(temp_root))
    client = MlflowClient()
    assert client.get_run(dead["run_id"]).info.status == "RUNNING"  # what kill -9 leaves
    assert os.path.isdir(dead["workdir"])

    # What must stay: this live process's export run and working directory, a run of another host, a
    # run without owner tags, a run that is not an export, directories that are not an export's.
    mine = mlflow.start_run(run_name="export-torchscript", tags={Tag.EXPORT_KEY: "k-2", **owner_tags()})
    foreign_tags = {**owner_tags(), Tag.EXPORT_HOST: "another-host", Tag.EXPORT_PID: str(dead["pid"])}
    foreign = client.create_run(mine.info.experiment_id, run_name="export-onnx",
                                tags={Tag.EXPORT_KEY: "k-3", **foreign_tags})
    unowned = client.create_run(mine.info.experiment_id, run_name="export-onnx", tags={Tag.EXPORT_KEY: "k-4"})
    training = client.create_run(mine.info.experiment_id, run_name="train",
                                 tags={Tag.EXPORT_KEY: "k-5", **owner_tags(), Tag.EXPORT_PID: str(dead["pid"])})
    my_dir = tempfile.mkdtemp(prefix=temp_prefix(), dir=str(temp_root))
    other_dirs = [str(temp_root / name) for name in ("tfexport-vision-abc", "tfexport-abcd1234")]
    for path in other_dirs:
        os.mkdir(path)
    dead_file = temp_root / f"tfexport-{dead['pid']}-0-0-abcdefgh"
    dead_file.write_text("a file, not a directory")
    try:
        done = recover_stale_exports(client, temp_dir=str(temp_root))
        assert done.failed_runs == [dead["run_id"]]
        assert done.removed_dirs == [dead["workdir"]]
        run = client.get_run(dead["run_id"])
        assert run.info.status == "FAILED" and run.info.end_time is not None
        reason = run.data.tags[Tag.EXPORT_ABANDONED]
        assert f"process {dead['pid']} on " in reason and "ended without finishing this export" in reason
        assert not os.path.exists(dead["workdir"])
        for run_id in (mine.info.run_id, foreign.info.run_id, unowned.info.run_id, training.info.run_id):
            assert client.get_run(run_id).info.status == "RUNNING"
        assert os.path.isdir(my_dir) and all(os.path.isdir(p) for p in other_dirs) and dead_file.is_file()
        # Nothing more to do the second time.
        again = recover_stale_exports(client, temp_dir=str(temp_root))
        assert again.failed_runs == [] and again.removed_dirs == []
    finally:
        mlflow.end_run()


def test_recovery_runs_once_per_process_and_store(tracking_uri: str) -> None:
    client = MlflowClient()
    assert recover_stale_exports_once(client) is not None
    assert recover_stale_exports_once(client) is None


def test_the_temp_prefix_names_this_process() -> None:
    with tempfile.TemporaryDirectory(prefix=temp_prefix()) as path:  # how export() makes its working dir
        owner = temp_dir_owner(os.path.basename(path))
    assert owner is not None and owner.pid == os.getpid() and owner.state() == ALIVE
    assert temp_dir_owner("tfexport-k1x2ab3c") is None  # a name from before owners were recorded
    assert temp_dir_owner("tfexport-vision-abc") is None


@pytest.mark.integration
def test_how_dead_is_told() -> None:
    me = ProcessOwner.current()
    assert me.state() == ALIVE
    assert ProcessOwner.from_tags(owner_tags()) == me
    assert ProcessOwner("some-other-host", me.pid, me.start, me.pidns).state() == UNKNOWN
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(30)  # exited and reaped: the pid is free
    assert ProcessOwner(me.host, proc.pid, None, me.pidns).state() == DEAD
    if me.start is not None:  # Linux: the start time tells a reused pid (a restarted container's pid 1) apart
        assert ProcessOwner(me.host, me.pid, str(int(me.start) - 1), me.pidns).state() == DEAD
    assert ProcessOwner.from_tags({Tag.EXPORT_HOST: "h", Tag.EXPORT_PID: "abc"}) is None
    assert ProcessOwner.from_tags({Tag.EXPORT_HOST: "h", Tag.EXPORT_PID: "12"}) == ProcessOwner("h", 12)
