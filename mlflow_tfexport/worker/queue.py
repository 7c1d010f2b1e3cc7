"""The export queue: jobs worked off by background threads, their outcome written on the source version.

While a job runs, the source version's ``tfexport.request.status`` says ``running: <spec> (i/n)``, and the
tags ``tfexport.export_host`` / ``tfexport.export_pid`` / ``tfexport.export_process`` name the worker process
running it; ``tfexport.request.heartbeat`` (unix seconds) is refreshed every ``heartbeat_s`` while it runs.
A later worker uses them to tell a job whose worker died (``poll.is_interrupted``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlflow_tfexport.constants import Tag
from mlflow_tfexport.export import api as export_api
from mlflow_tfexport.export.recovery import ProcessOwner
from mlflow_tfexport.registry.attest import Signer, attest_version, resolve
from mlflow_tfexport.worker.fetch import DataPolicy, request_data
from mlflow_tfexport.worker.grammar import ExportSpec, RequestError, parse_request

_logger = logging.getLogger(__name__)

STATUS_RUNNING = "running"
STATUS_DONE = "done"
STATUS_FAILED = "failed"
MAX_REASON_CHARS = 1000
HEARTBEAT_S = 60.0
#: Starts of one request at most: one whose worker stopped (crash, kill -9) this often is marked failed.
MAX_ATTEMPTS = 3
#: Prefix of a job's scratch folder: ``tfexport-request-data-<pid>-<random>`` in the temp folder.
SCRATCH_PREFIX = "tfexport-request-data-"


class QueueFull(Exception):
    """The export queue holds ``max_queue`` jobs already; the caller should retry later."""


@dataclass(frozen=True)
class Job:
    name: str
    version: str
    request: str
    origin: str = "webhook"

    @property
    def key(self) -> Tuple[str, str, str]:
        return (self.name, self.version, self.request)


@dataclass
class Outcome:
    """What a job did: the status written on the source version."""

    job: Job
    status: Optional[str]
    results: List[Tuple[str, str]] = field(default_factory=list)  # (spec label, model URI)


def reason(exc: BaseException) -> str:
    """The message of ``exc`` on one line, at most ``MAX_REASON_CHARS`` long (for a status tag or a log)."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    line = " ".join(str(message).split())
    return line if len(line) <= MAX_REASON_CHARS else line[: MAX_REASON_CHARS - 3] + "..."


def format_status(results: Sequence[Tuple[str, str]], failures: Sequence[Tuple[str, str]] = ()) -> str:
    """``done: models:/m/3``, ``done: onnx -> models:/m/3, ...`` or ``failed: [<spec>: ]<reason>``.

    ``results`` are (spec label, model URI) pairs, ``failures`` (spec label or "", reason) pairs.
    """
    done = ", ".join(f"{label} -> {uri}" for label, uri in results)
    if failures:
        text = f"{STATUS_FAILED}: " + "; ".join(f"{label}: {reason}" if label else reason for label, reason in failures)
        return text + (f" ({STATUS_DONE}: {done})" if results else "")
    if len(results) == 1:
        return f"{STATUS_DONE}: {results[0][1]}"
    return f"{STATUS_DONE}: {done}"


class ExportWorker:
    """A small queue of export jobs, worked off by background threads.

    ``submit`` never blocks on an export: it dedupes (a job for the same version and request already queued
    or running is not queued twice) and returns at once. Each job re-reads the version, parses its request,
    exports every spec through ``export_fn`` (``mlflow_tfexport.export``; idempotent) and writes the status.
    """

    def __init__(
        self,
        client: Any = None,
        *,
        export_fn: Optional[Callable[..., Any]] = None,
        threads: int = 1,
        max_queue: int = 100,
        heartbeat_s: float = HEARTBEAT_S,
        data_policy: Optional[DataPolicy] = None,
        max_attempts: int = MAX_ATTEMPTS,
        signer: Optional[Signer] = None,
    ) -> None:
        if not heartbeat_s > 0:
            raise ValueError(f"heartbeat_s must be a positive number of seconds, received {heartbeat_s!r}; e.g. 60.")
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts must be a positive integer, received {max_attempts!r}; e.g. 3.")
        self.client = client or MlflowClient()
        self.data_policy = data_policy or DataPolicy()
        self.max_attempts = max_attempts
        #: Signs the validation of the variants this worker exports (``attest``); default: the env's secret.
        self.signer = resolve(signer)
        self._export_fn = export_fn
        self._queue: queue.Queue[Optional[Job]] = queue.Queue(maxsize=max_queue)
        self._pending: Set[Tuple[str, str, str]] = set()
        self._running: Dict[Tuple[str, str, str], Job] = {}
        self._lock = threading.Lock()
        self._n_threads = max(1, int(threads))
        self._threads: List[threading.Thread] = []
        self.heartbeat_s = float(heartbeat_s)
        self._stopping = threading.Event()
        self.started = False

    # -- lifecycle
    def start(self) -> ExportWorker:
        if not self.started:
            self._stopping.clear()
            self._threads = [
                threading.Thread(target=self._loop, name=f"tfexport-worker-{i}", daemon=True)
                for i in range(self._n_threads)
            ]
            self._threads.append(threading.Thread(target=self._beat, name="tfexport-heartbeat", daemon=True))
            for t in self._threads:
                t.start()
            self.started = True
        return self

    def stop(self, timeout: Optional[float] = None, *, drain: bool = False) -> None:
        """Stop the threads after the jobs they run; queued jobs are dropped unless ``drain``.

        A dropped job is not lost: its version still has no answering status, so ``--poll`` finds it.
        """
        if not self.started:
            return
        if not drain:
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    with self._lock:
                        self._pending.discard(job.key)
                self._queue.task_done()
        for _ in range(self._n_threads):
            self._queue.put(None)
        self._stopping.set()
        for t in self._threads:
            t.join(timeout)
        self.started = False

    def join(self) -> None:
        """Wait until every submitted job is done."""
        self._queue.join()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def is_pending(self, job: Job) -> bool:
        """Whether this worker has ``job`` (the same version and request) queued or running."""
        with self._lock:
            return job.key in self._pending

    # -- submitting
    def submit(self, job: Job) -> Tuple[bool, str]:
        """Queue ``job`` unless the same one is queued or running. Returns (queued, why).

        Raises ``QueueFull`` when ``max_queue`` jobs wait already.
        """
        with self._lock:
            if job.key in self._pending:
                return False, "already queued or running"
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                raise QueueFull(f"the export queue is full ({self._queue.maxsize} jobs); retry later") from None
            self._pending.add(job.key)
        return True, "queued"

    # -- working
    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self.process(job)
            except Exception:  # never let one job kill the thread
                _logger.exception("export job %s failed unexpectedly", job)
            finally:
                if job is not None:
                    with self._lock:
                        self._pending.discard(job.key)
                self._queue.task_done()

    def _beat(self) -> None:
        """Refresh the heartbeat of every running job until the worker stops."""
        while not self._stopping.wait(self.heartbeat_s):
            with self._lock:
                running = list(self._running.values())
            for job in running:
                try:
                    self.client.set_model_version_tag(job.name, job.version, Tag.REQUEST_HEARTBEAT,
                                                      str(int(time.time())))
                except MlflowException as exc:  # the registry briefly away: the next beat tries again
                    _logger.warning("heartbeat of models:/%s/%s failed: %s", job.name, job.version, reason(exc))

    def _claim(self, job: Job, current: Mapping[str, str]) -> None:
        """Name this process as the one running ``job`` (see ``poll.is_interrupted``); ``current``: its tags."""
        tags = {**ProcessOwner.current().tags(), Tag.REQUEST_HEARTBEAT: str(int(time.time()))}
        for key, value in tags.items():
            if current.get(key) != value:  # a version this worker ran before: only the heartbeat changes
                self.client.set_model_version_tag(job.name, job.version, key, value)

    def _set_status(self, job: Job, status: str, *, final: bool) -> None:
        self.client.set_model_version_tag(job.name, job.version, Tag.REQUEST_STATUS, status)
        if final:
            self.client.set_model_version_tag(job.name, job.version, Tag.REQUEST_HANDLED, job.request)
            with contextlib.suppress(MlflowException):  # not there: nothing to reset
                self.client.delete_model_version_tag(job.name, job.version, Tag.REQUEST_ATTEMPTS)

    def _attempt(self, job: Job, tags: Mapping[str, str]) -> int:
        """Count one more start of ``job`` on its version; returns the starts before this one."""
        count, _, request = (tags.get(Tag.REQUEST_ATTEMPTS) or "").partition(" ")
        before = int(count) if count.isascii() and count.isdigit() and len(count) < 6 and request == job.request else 0
        self.client.set_model_version_tag(job.name, job.version, Tag.REQUEST_ATTEMPTS, f"{before + 1} {job.request}")
        return before

    def process(self, job: Job) -> Outcome:
        """Run one job on this thread; record the outcome on the source version, whatever goes wrong."""
        try:
            return self._process(job)
        except Exception as exc:  # any failure still ends the request with a status
            status = format_status([], [("", f"the worker failed on this request ({type(exc).__name__}: "
                                             f"{reason(exc)})")])
            _logger.exception("request %r for models:/%s/%s failed unexpectedly", job.request, job.name, job.version)
            try:
                self._set_status(job, status, final=True)
            except Exception as again:  # the registry away: --poll or the next start asks again
                _logger.warning("could not record the failure of %r: %s", job.request, reason(again))
                return Outcome(job, None)
            return Outcome(job, status)

    def _process(self, job: Job) -> Outcome:
        where = f"models:/{job.name}/{job.version}"
        try:
            mv = self.client.get_model_version(job.name, job.version)
        except MlflowException as exc:
            _logger.warning("request %r for %s refused: %s", job.request, where, reason(exc))
            return Outcome(job, None)
        current = (mv.tags or {}).get(Tag.REQUEST)
        if current != job.request:
            _logger.info("request %r for %s superseded by %r; skipped", job.request, where, current)
            return Outcome(job, None)
        try:
            specs = parse_request(job.request)
        except RequestError as exc:
            status = format_status([], [("", reason(exc))])
            _logger.warning("request %r for %s refused: %s", job.request, where, status)
            self._set_status(job, status, final=True)
            return Outcome(job, status)

        export_fn = self._export_fn or export_api.export
        results: List[Tuple[str, str]] = []
        failures: List[Tuple[str, str]] = []
        data_uri = (mv.tags or {}).get(Tag.REQUEST_DATA)
        tags = mv.tags or {}
        if self._attempt(job, tags) >= self.max_attempts:
            status = format_status([], [("", f"the worker stopped {self.max_attempts} times while running this "
                                             "request (a crash or a kill); not retried. Set "
                                             f"{Tag.REQUEST} again to retry")])
            _logger.warning("request %r for %s: %s", job.request, where, status)
            self._set_status(job, status, final=True)
            return Outcome(job, status)
        self._claim(job, tags)
        with self._lock:
            self._running[job.key] = job
        try:
            with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-") as scratch:
                try:
                    data = request_data(data_uri, self.client, self.data_policy, scratch)
                except Exception as exc:  # refused, out of bounds, or the registry failing to resolve it
                    status = format_status([], [("", f"{Tag.REQUEST_DATA} cannot be used: {reason(exc)}")])
                    self._set_status(job, status, final=True)
                    return Outcome(job, status)
                self._export_specs(job, where, specs, export_fn, data, results, failures)
        finally:
            with self._lock:
                self._running.pop(job.key, None)
        status = format_status(results, failures)
        self._set_status(job, status, final=True)
        return Outcome(job, status, results)

    def _export_specs(self, job: Job, where: str, specs: List[ExportSpec], export_fn: Callable[..., Any],
                      data: Any, results: List[Tuple[str, str]], failures: List[Tuple[str, str]]) -> None:
        extra = {} if data is None else {"validation_data": data}
        for i, spec in enumerate(specs, 1):
            self._set_status(job, f"{STATUS_RUNNING}: {spec.label} ({i}/{len(specs)})", final=False)
            _logger.info("exporting %s as %s (%d/%d)", where, spec.label, i, len(specs))
            try:
                result = export_fn(where, **spec.export_kwargs(), **extra)
            except Exception as exc:
                failures.append(("" if len(specs) == 1 else spec.label, reason(exc)))
                _logger.warning("export of %s as %s failed: %s", where, spec.label, failures[-1][1])
                continue
            results.append((spec.label, str(result.model_uri)))
            self._attest(result)
            _logger.info("exported %s as %s -> %s", where, spec.label, result.model_uri)

    def _attest(self, result: Any) -> None:
        """Sign the validation tags of a variant this worker just exported (what the export itself wrote)."""
        mv = getattr(result, "model_version", None)
        if self.signer is None or not getattr(result, "created", False) or mv is None:
            return
        try:
            attest_version(self.client, self.signer, mv.name, str(mv.version), mv.tags or {})
        except MlflowException as exc:  # unsigned: an attested=true policy refuses it, nothing worse
            _logger.warning("signing the validation of models:/%s/%s failed: %s", mv.name, mv.version, reason(exc))

