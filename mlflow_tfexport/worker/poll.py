"""The registry side: requests still waiting for an answer (``--poll``), and jobs whose worker died.

Each pass also reconciles the aliases of every registered model with their promotion policy (``guard``).
A request is *pending* when its version has no status yet, or a status that answers an older request value
(``is_pending``); ``poll`` queues pending requests every ``interval_s``. A ``running`` status whose worker
died is pending too, so poll mode recovers it by itself. In webhook mode nothing would ask again, so the
worker looks for *interrupted* jobs when it starts (``requeue_interrupted``), see ``is_interrupted``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from typing import Any, List, Mapping, Optional

from mlflow.exceptions import MlflowException

from mlflow_tfexport.constants import Tag
from mlflow_tfexport.export.recovery import DEAD, UNKNOWN, ProcessOwner, recover_stale_exports_once
from mlflow_tfexport.worker.guard import guard_all
from mlflow_tfexport.worker.memory import GuardMemory
from mlflow_tfexport.worker.queue import (
    HEARTBEAT_S,
    SCRATCH_PREFIX,
    STATUS_RUNNING,
    ExportWorker,
    Job,
    QueueFull,
    reason,
)

_logger = logging.getLogger(__name__)

#: A job running on another host is taken for dead when its heartbeat is older than this.
STALE_AFTER_S = 5 * HEARTBEAT_S


def is_pending(tags: Mapping[str, str]) -> bool:
    """A request with no status yet, or whose status answers an older request value."""
    request = (tags.get(Tag.REQUEST) or "").strip()
    if not request:
        return False
    return Tag.REQUEST_STATUS not in tags or tags.get(Tag.REQUEST_HANDLED) != tags.get(Tag.REQUEST)


def _search(client: Any, query: str, page_size: int) -> List[Any]:
    versions: List[Any] = []
    token = None
    while True:
        page = client.search_model_versions(query, max_results=page_size, page_token=token)
        versions.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return versions


def _jobs(versions: List[Any], origin: str) -> List[Job]:
    jobs = [Job(mv.name, str(mv.version), (mv.tags or {})[Tag.REQUEST], origin=origin) for mv in versions]
    return sorted(jobs, key=lambda j: (j.name, int(j.version)))


def find_pending(client: Any, page_size: int = 200) -> List[Job]:
    """Versions of any registered model whose ``tfexport.request`` waits for an answer."""
    versions = _search(client, f"tags.`{Tag.REQUEST}` LIKE '%'", page_size)
    return _jobs([mv for mv in versions if is_pending(mv.tags or {})], "poll")


def is_interrupted(tags: Mapping[str, str], *, now: Optional[float] = None,
                   stale_after_s: float = STALE_AFTER_S) -> bool:
    """A ``running`` status that no live worker will ever answer.

    How "dead" is told: the worker running a job names itself on the version (``tfexport.export_host``,
    ``tfexport.export_pid``, ``tfexport.export_process``) and refreshes ``tfexport.request.heartbeat`` every
    minute while the job runs. The job is interrupted when

    - its worker ran on this host and that process is gone (or its pid now belongs to a newer process):
      ``ProcessOwner.state``, the test ``export.recovery`` uses for export runs;
    - its worker ran on another host (whose processes cannot be seen from here) and its heartbeat is older
      than ``stale_after_s``;
    - no worker is named (a status written before workers named themselves).

    A job of a live process on this host is never interrupted, whatever its heartbeat says.
    """
    if not (tags.get(Tag.REQUEST) or "").strip():
        return False
    if not (tags.get(Tag.REQUEST_STATUS) or "").startswith(STATUS_RUNNING):
        return False
    owner = ProcessOwner.from_tags(tags)
    if owner is None:
        return True
    state = owner.state()
    if state != UNKNOWN:
        return state == DEAD
    beat = tags.get(Tag.REQUEST_HEARTBEAT) or ""
    if not beat.isascii() or not beat.isdigit() or len(beat) > 15:
        return True
    return (time.time() if now is None else now) - int(beat) > stale_after_s


def find_interrupted(client: Any, *, page_size: int = 200, stale_after_s: float = STALE_AFTER_S) -> List[Job]:
    """Versions whose status says ``running`` but whose worker died (``is_interrupted``)."""
    versions = _search(client, f"tags.`{Tag.REQUEST_STATUS}` LIKE '{STATUS_RUNNING}%'", page_size)
    now = time.time()
    return _jobs([mv for mv in versions if is_interrupted(mv.tags or {}, now=now, stale_after_s=stale_after_s)],
                 "recovery")


def requeue_interrupted(worker: ExportWorker, *, stale_after_s: float = STALE_AFTER_S) -> List[Job]:
    """Queue again the jobs whose worker died (skipping ones this worker has); returns the jobs queued.

    The export is idempotent, so a job whose export had finished before the crash only writes its status.
    """
    queued: List[Job] = []
    for job in find_interrupted(worker.client, stale_after_s=stale_after_s):
        if worker.is_pending(job):
            continue
        try:
            added, _ = worker.submit(job)
        except QueueFull as exc:
            _logger.warning("interrupted request %r for models:/%s/%s not queued: %s", job.request, job.name,
                            job.version, exc)
            break
        if added:
            _logger.info("request %r for models:/%s/%s was interrupted (its worker is gone); queued again",
                         job.request, job.name, job.version)
            queued.append(job)
    return queued


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def remove_dead_scratch(folder: Optional[str] = None) -> List[str]:
    """Remove the scratch folders (``tfexport-request-data-<pid>-*``) of workers that are gone; returns them.

    A folder of a live process (this one included) is kept; one without a pid in its name (written by an older
    worker) is removed once it is older than ``STALE_AFTER_S``.
    """
    folder = folder or tempfile.gettempdir()
    removed: List[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(SCRATCH_PREFIX):
            continue
        path = os.path.join(folder, name)
        pid, dash, _ = name[len(SCRATCH_PREFIX):].partition("-")
        try:
            if os.path.islink(path) or not os.path.isdir(path):
                continue
            if dash and pid.isascii() and pid.isdigit() and len(pid) < 10:
                if _alive(int(pid)):
                    continue
            elif time.time() - os.path.getmtime(path) < STALE_AFTER_S:
                continue
            shutil.rmtree(path)
            removed.append(path)
        except OSError as exc:
            _logger.warning("could not remove the scratch folder %s: %s", path, reason(exc))
    return removed


def recover(worker: ExportWorker, *, requeue: bool = True) -> None:
    """What a worker does when it starts: clean up after dead exports, and (``requeue``) re-queue dead jobs.

    Never raises: the registry being away at start must not stop the worker (poll mode asks again anyway).
    """
    scratch = remove_dead_scratch()
    if scratch:
        _logger.info("after a crash: %d scratch folder(s) of dead workers removed", len(scratch))
    done = recover_stale_exports_once(worker.client)  # logs its own failure; later exports skip it
    if done is not None and (done.failed_runs or done.removed_dirs):
        _logger.info("after a crash: %d export run(s) marked FAILED, %d temp dir(s) removed",
                     len(done.failed_runs), len(done.removed_dirs))
    if not requeue:
        return
    try:
        requeue_interrupted(worker)
    except (MlflowException, OSError) as exc:
        _logger.warning("could not look for interrupted exports at start: %s", reason(exc))


def poll(worker: ExportWorker, *, interval_s: float = 30.0, once: bool = False,
         stop: Optional[threading.Event] = None, memory: Optional[GuardMemory] = None) -> int:
    """Queue pending requests every ``interval_s``; with ``once``, one pass and wait for its jobs.

    Each pass also checks every alias moved since the last pass against its model's promotion policy
    (``guard.guard_all``): a refused promotion is undone, as in webhook mode.
    """
    stop = stop or threading.Event()
    memory = memory if memory is not None else GuardMemory()
    total = 0
    while not stop.is_set():
        try:
            guard_all(worker.client, via="poll", signer=worker.signer, memory=memory)
        except Exception as exc:  # the registry being down must not end the poller
            _logger.warning("checking the aliases failed: %s", reason(exc))
        try:
            jobs = find_pending(worker.client)
        except Exception as exc:  # the registry being down must not end the poller
            _logger.warning("polling the registry failed: %s", reason(exc))
            jobs = []
        for job in jobs:
            try:
                queued, _ = worker.submit(job)
            except QueueFull as exc:  # the rest waits for the next pass
                _logger.warning("%s; the other pending requests wait for the next pass", exc)
                break
            total += queued
        if once:
            worker.join()
            break
        stop.wait(interval_s)
    return total
