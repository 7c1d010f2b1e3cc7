"""After a crash: export runs of dead processes marked FAILED, their ``tfexport-*`` temp directories removed.

An export that is killed (``kill -9``, the OOM killer, a lost node) cannot clean up after itself: its MLflow
run stays RUNNING and its working directory (the downloaded source and the staged variant, often 100+ MB)
stays in the temp folder. So that a later process can clean up, an export records which process runs it:

- on its run, the tags ``tfexport.export_host`` (``socket.gethostname()``), ``tfexport.export_pid``
  (``os.getpid()``) and ``tfexport.export_process`` (the process's start time and pid namespace, where the
  system tells them: Linux ``/proc``), see ``owner_tags``;
- in the name of its temp directory, ``tfexport-<pid>-<start>-<pidns>-<random>`` (``temp_prefix``; ``0``
  for what is not known).

How "dead" is decided (``ProcessOwner.state``): only for a process of *this* host and pid namespace, which is
dead when

- no process has its pid any more (``os.kill(pid, 0)`` says so) or the process is a zombie, or
- a process has its pid but started at another time than the one recorded (the pid was reused), or
- the pid is this process's own but the recorded start is not this process's (a restarted container, where
  the worker is pid 1 again).

A process on another host (or in another pid namespace) is never judged dead from here: its runs wait for
that host's next export or worker start. Runs and directories without these marks (made before they were
recorded) are left alone. ``recover_stale_exports`` runs at worker start and (once per process and tracking
store) at the start of ``export()``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Mapping, Optional, Set, Tuple

from mlflow import MlflowClient
from mlflow.entities import RunStatus, ViewType
from mlflow.exceptions import MlflowException

from mlflow_tfexport.constants import Tag

_logger = logging.getLogger(__name__)

State = Literal["alive", "dead", "unknown"]
ALIVE: State = "alive"
DEAD: State = "dead"
UNKNOWN: State = "unknown"

TEMP_PREFIX = "tfexport-"
#: ``tfexport-<pid>-<start>-<pidns>-<random>``: what ``temp_prefix`` makes (``tempfile`` adds the random part).
_TEMP_NAME = re.compile(r"^tfexport-(\d+)-(\d+)-(\d+)-[a-z0-9_]+$")
_PROCESS_TAG = re.compile(r"^start=(\d+)?;pidns=(\d+)?$")
_EXPERIMENT_CHUNK = 50


def _proc_stat(pid: int) -> Optional[List[str]]:
    """The fields of ``/proc/<pid>/stat`` after the command name (field 3 on), or None where unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def _start_of(pid: int) -> Optional[str]:
    """The start time of process ``pid`` in clock ticks since boot (Linux), or None where unknown."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 and fields[19].isdigit() else None


def _pid_namespace() -> Optional[str]:
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return None
    digits = re.sub(r"\D", "", link)
    return digits or None


def _pid_state(pid: int) -> State:
    """Whether a process with this pid runs on this host now (a zombie does not count)."""
    if pid <= 0 or os.name == "nt":  # os.kill(pid, 0) on Windows would send CTRL_C_EVENT
        return UNKNOWN
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return DEAD
    except PermissionError:  # it exists, owned by another user
        pass
    except OSError:
        return UNKNOWN
    fields = _proc_stat(pid)
    if fields and fields[0] in ("Z", "X"):
        return DEAD
    return ALIVE


_HOST = socket.gethostname()
_PIDNS = _pid_namespace()
_START: Optional[str] = None


def _own_start() -> Optional[str]:
    global _START
    if _START is None:
        _START = _start_of(os.getpid())
    return _START


@dataclass(frozen=True)
class ProcessOwner:
    """The process doing an export (or a worker job): host, pid and what tells a reused pid apart."""

    host: str
    pid: int
    start: Optional[str] = None  # clock ticks since boot at which the process started (Linux)
    pidns: Optional[str] = None  # pid namespace (Linux): pids of another namespace mean other processes

    @classmethod
    def current(cls) -> ProcessOwner:
        return cls(_HOST, os.getpid(), _own_start(), _PIDNS)

    def state(self) -> State:
        """``alive``, ``dead`` or ``unknown`` (another host or pid namespace, or a system that cannot tell)."""
        if self.host != _HOST or (self.pidns is not None and _PIDNS is not None and self.pidns != _PIDNS):
            return UNKNOWN
        if self.pid == os.getpid():
            return DEAD if self.start is not None and self.start != _own_start() else ALIVE
        state = _pid_state(self.pid)
        if state != ALIVE:
            return state
        if self.start is not None:
            now = _start_of(self.pid)
            if now is not None and now != self.start:
                return DEAD  # the pid now belongs to a process that started later
        return ALIVE

    def describe(self) -> str:
        return f"process {self.pid} on {self.host}"

    def tags(self) -> Dict[str, str]:
        return {
            Tag.EXPORT_HOST: self.host,
            Tag.EXPORT_PID: str(self.pid),
            Tag.EXPORT_PROCESS: f"start={self.start or ''};pidns={self.pidns or ''}",
        }

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Optional[ProcessOwner]:
        """The owner recorded by ``tags`` (run or version tags), or None where they do not name one."""
        host, pid = tags.get(Tag.EXPORT_HOST), tags.get(Tag.EXPORT_PID) or ""
        if not host or not re.fullmatch(r"[0-9]{1,10}", pid):
            return None
        match = _PROCESS_TAG.match(tags.get(Tag.EXPORT_PROCESS) or "")
        return cls(host, int(pid), match.group(1) if match else None, match.group(2) if match else None)


def owner_tags() -> Dict[str, str]:
    """Run tags naming this process as the exporter (put them on the export run when it starts)."""
    return ProcessOwner.current().tags()


def temp_prefix() -> str:
    """The ``prefix`` of an export's ``tempfile.TemporaryDirectory``: names this process as its owner."""
    me = ProcessOwner.current()
    return f"{TEMP_PREFIX}{me.pid}-{me.start or 0}-{me.pidns or 0}-"


def temp_dir_owner(name: str) -> Optional[ProcessOwner]:
    """The process that made the temp directory called ``name``, or None for any other name."""
    match = _TEMP_NAME.match(name)
    if match is None:
        return None
    pid, start, pidns = match.groups()
    return ProcessOwner(_HOST, int(pid), None if start == "0" else start, None if pidns == "0" else pidns)


@dataclass
class Recovery:
    """What ``recover_stale_exports`` cleaned up."""

    failed_runs: List[str] = field(default_factory=list)  # run ids marked FAILED
    removed_dirs: List[str] = field(default_factory=list)  # temp directories removed


def _experiment_ids(client: MlflowClient) -> List[str]:
    ids: List[str] = []
    token = None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        ids.extend(str(e.experiment_id) for e in page)
        token = page.token
        if not token:
            return ids


def find_stale_runs(client: MlflowClient) -> List[Tuple[str, ProcessOwner]]:
    """Ids of RUNNING export runs (``export-<format>``, tagged with an export key) whose process is dead."""
    query = (
        f"attributes.status = 'RUNNING' AND attributes.run_name LIKE 'export-%' "
        f"AND tags.`{Tag.EXPORT_KEY}` LIKE '%' AND tags.`{Tag.EXPORT_PID}` LIKE '%'"
    )
    stale: List[Tuple[str, ProcessOwner]] = []
    ids = _experiment_ids(client)
    for i in range(0, len(ids), _EXPERIMENT_CHUNK):
        token = None
        while True:
            page = client.search_runs(ids[i:i + _EXPERIMENT_CHUNK], query, max_results=1000, page_token=token)
            for run in page:
                owner = ProcessOwner.from_tags(run.data.tags)
                if owner is not None and owner.state() == DEAD:
                    stale.append((run.info.run_id, owner))
            token = page.token
            if not token:
                break
    return stale


def mark_stale_runs(client: MlflowClient) -> List[str]:
    """Mark FAILED every RUNNING export run whose process is dead, with the reason as a run tag."""
    me = ProcessOwner.current()
    marked: List[str] = []
    for run_id, owner in find_stale_runs(client):  # collected first: marking them changes the search's pages
        reason = (
            f"{owner.describe()} ended without finishing this export (killed?); marked FAILED by "
            f"{me.describe()} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}"
        )
        try:
            client.set_tag(run_id, Tag.EXPORT_ABANDONED, reason)
            client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FAILED))
        except MlflowException as exc:
            _logger.warning("could not mark the stale export run %s FAILED: %s", run_id, exc.message)
            continue
        _logger.info("export run %s: %s", run_id, reason)
        marked.append(run_id)
    return marked


def remove_stale_temp_dirs(root: Optional[str] = None) -> List[str]:
    """Remove this user's ``tfexport-<pid>-...`` directories in ``root`` (the temp folder) whose process is dead."""
    root = root or tempfile.gettempdir()
    removed: List[str] = []
    try:
        entries = list(os.scandir(root))
    except OSError as exc:
        _logger.warning("could not list %s for stale export directories: %s", root, exc)
        return removed
    uid = os.getuid() if hasattr(os, "getuid") else None
    for entry in entries:
        owner = temp_dir_owner(entry.name)
        if owner is None:
            continue
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if uid is not None and entry.stat(follow_symlinks=False).st_uid != uid:
                continue  # another user's: not ours to remove
        except OSError:
            continue
        if owner.state() != DEAD:
            continue
        try:
            shutil.rmtree(entry.path)
        except OSError as exc:
            _logger.warning("could not remove the stale export directory %s: %s", entry.path, exc)
            continue
        _logger.info("removed %s, left by %s, which is gone", entry.path, owner.describe())
        removed.append(entry.path)
    return removed


def recover_stale_exports(client: Optional[MlflowClient] = None, *, temp_dir: Optional[str] = None) -> Recovery:
    """Clean up after exports whose process died: see the module docstring for how "dead" is decided.

    Args:
        client: the tracking store to look in (default: ``MlflowClient()``).
        temp_dir: the folder of the temp directories (default: ``tempfile.gettempdir()``).

    Returns:
        The run ids marked FAILED and the directories removed.

    Raises:
        MlflowException: when the tracking store cannot be searched.
    """
    client = client or MlflowClient()
    return Recovery(mark_stale_runs(client), remove_stale_temp_dirs(temp_dir))


_RECOVERED: Set[str] = set()
_RECOVERED_LOCK = threading.Lock()


def recover_stale_exports_once(client: MlflowClient) -> Optional[Recovery]:
    """``recover_stale_exports`` the first time this process calls it for the client's tracking store.

    Never raises: a failure is logged, since cleaning up after others must not stop an export.
    """
    key = str(client.tracking_uri)
    with _RECOVERED_LOCK:
        if key in _RECOVERED:
            return None
        _RECOVERED.add(key)
    try:
        return recover_stale_exports(client)
    except (MlflowException, OSError) as exc:
        _logger.warning("could not look for stale export runs in %s: %s", key, exc)
        return None
