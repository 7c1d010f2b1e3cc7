"""Concurrent ``predict`` calls share model runs: the rows of calls in flight together run as one batch.

MLflow's scoring server runs every request's ``predict`` in its own thread. Each
request tokenizes its own rows, with its own params, in its own thread (a bad
row is refused there, before anything is merged); only the model run is shared.
``Batcher.run`` takes one call's feeds (int64 ``[rows, sequence]`` arrays):

- no run going, no call waiting and no call with company for
  ``LONE_AFTER_QUIET_S`` (a lone call: an in-process ``predict``, one client
  of a server): the call runs at once on ``run_lone`` when the runner has one
  (every core, ``runtimes/lanes.py``), holding every run slot, so calls
  arriving meanwhile wait and share the next runs. Between the requests of
  concurrent clients the model is idle for moments too; a call in such a
  moment is not lone (it would hold every slot on one request's rows);
- fewer than ``concurrent_runs`` runs going: the call runs at once, alone (no
  added wait at low load), on one thread where the runner has lanes;
- that many runs going: the call waits in a bounded queue. When a run ends,
  its leader hands the queue over, one batch per free run slot: the first
  waiting call becomes a leader and runs every waiting call that fits with it
  (same merge key, at most ``max_batch_rows`` rows and ``max_batch_tokens`` =
  rows x padded length, and its share of the waiting rows when several slots
  are free) as one batch; each caller gets exactly its own rows back (its own
  rows, cut back to its own padded length on every sequence axis).

``concurrent_runs`` is 0 (one run per CPU core) for ONNX variants, whose
sessions run one intra-op thread each, so every core computes while the
queue fills; 1 for the torch variants, whose one run already uses every
core (``formats.py``).

What can be merged: the model's output for a row depends only on that row's
feeds (attention-masked padding, as inside one request), so the merge key is
the feed names and dtypes. Request params (``truncation``, ``batch_size``,
``max_length``, task params, the deadline) act before the run (tokenization,
chunking, the deadline checked between chunks) or after it (post-processing),
in the caller's own thread, so they cannot change what the shared run returns
for a caller's rows and never leak to another caller. A call larger than the
budget still runs, alone. If a merged run fails, each of its calls is run
again alone, so one call's failure is never another's.

Generation tasks are never batched here (their decoding loop calls the runner
per step). Threads share only the queue, under one lock; the queue holds at
most ``MAX_QUEUED_CALLS`` calls (beyond it a call runs alone, as without
batching). Serving path: numpy only, Python 3.10.
"""

from __future__ import annotations

import json
import numbers
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport.constants import BATCH_STATS_ENV, BATCH_STATS_INTERVAL_S, FlavorKey
from mlflow_tfexport.errors import TfexportError
from mlflow_tfexport.formats import BATCHING_MODEL_CONFIG, default_model_config
from mlflow_tfexport.serving.runtimes.base import Runner
from mlflow_tfexport.serving.runtimes.lanes import Company
from mlflow_tfexport.tasks import BATCH, SEQUENCE, TEXT, OutputSpec, TaskSpec

#: ``model_config`` keys (defaults per format in ``formats.py``).
BATCHING = "batching"
MAX_BATCH_ROWS = "max_batch_rows"
MAX_BATCH_TOKENS = "max_batch_tokens"
CONCURRENT_RUNS = "concurrent_runs"
#: The largest value either budget may take.
MAX_BUDGET = 1 << 24
#: The most model runs at once that ``concurrent_runs`` may ask for.
MAX_RUNS = 1024
#: Calls waiting at most; more run alone, beside the batches.
MAX_QUEUED_CALLS = 256

Feeds = Dict[str, np.ndarray]
RunFn = Callable[[Feeds], Dict[str, np.ndarray]]
MergeKey = Tuple[Tuple[str, str], ...]


@dataclass
class _Call:
    feeds: Feeds
    key: MergeKey
    rows: int
    length: int
    done: threading.Event = field(default_factory=threading.Event)
    result: Optional[Dict[str, np.ndarray]] = None
    error: Optional[BaseException] = None
    #: Set by the leader that hands over: the calls this call must run (itself first).
    lead: Optional[List[_Call]] = None


def merge_key(feeds: Mapping[str, np.ndarray]) -> MergeKey:
    """What calls must share to run together: their feed names and dtypes (see the module doc)."""
    return tuple(sorted((name, str(np.asarray(value).dtype)) for name, value in feeds.items()))


class Batcher:
    """Runs concurrent calls of ``run`` as shared batches (see the module doc); safe to share between threads."""

    def __init__(
        self,
        run: RunFn,
        *,
        outputs: Sequence[OutputSpec],
        pad_token_id: int,
        max_batch_rows: int,
        max_batch_tokens: int,
        max_queued: int = MAX_QUEUED_CALLS,
        max_runs: int = 1,
        run_lone: Optional[RunFn] = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._run = run
        self._clock = clock
        self._company = Company()  # whether a call is lone: idle, and no call with company for a quiet second
        #: The run of a lone call (every core); None: lone calls run as any other, in one slot.
        self._run_lone = run_lone
        self._axes = {o.name: dict(o.axes) for o in outputs}
        self.pad_token_id = int(pad_token_id)
        self.max_batch_rows = int(max_batch_rows)
        self.max_batch_tokens = int(max_batch_tokens)
        self.max_queued = int(max_queued)
        self._lock = threading.Lock()
        self._queue: Deque[_Call] = deque()
        self.max_runs = int(max_runs)
        self._running = 0  # runs going now, at most max_runs
        #: Counters (read them under no lock: they are for tests and benchmarks): model runs, calls served,
        #: rows run and runs of lone calls.
        self.runs = 0
        self.merged_calls = 0
        self.rows = 0
        self.lone_runs = 0
        #: ``MLFLOW_TFEXPORT_BATCH_STATS``: where the counters are written (benchmarks), else None.
        self._stats_path = os.environ.get(BATCH_STATS_ENV) or None
        self._stats_written = 0.0

    # ------------------------------------------------------------------ the caller's side

    def run(self, feeds: Feeds) -> Dict[str, np.ndarray]:
        """The model's outputs for ``feeds`` (one call's rows), as ``run(feeds)`` alone would return them."""
        shape = np.shape(next(iter(feeds.values()))) if feeds else (0, 0)
        if len(shape) != 2 or shape[0] == 0:
            return self._run(feeds)
        call = _Call(feeds, merge_key(feeds), int(shape[0]), int(shape[1]))
        lone = False
        now = self._clock()
        with self._lock:
            alone = self._company.lone(self._running == 0 and not self._queue, now)
            if self._run_lone is not None and alone:
                self._running, lone = self.max_runs, True  # every slot: later calls wait and share runs
                batch: Optional[List[_Call]] = [call]
            elif self._running < self.max_runs:
                self._running += 1
                batch = [call]
            elif len(self._queue) < self.max_queued:
                self._queue.append(call)
                batch = None
            else:  # queue full: run alone, beside the batches
                return self._run(feeds)
        if batch is None:
            call.done.wait()
            batch = call.lead
            if batch is None:  # answered by another leader
                return self._outcome(call)
        self._lead(batch, lone)
        return self._outcome(call)

    @staticmethod
    def _outcome(call: _Call) -> Dict[str, np.ndarray]:
        if call.error is not None:
            raise call.error
        assert call.result is not None
        return call.result

    # ------------------------------------------------------------------ the leader's side

    def _lead(self, batch: List[_Call], lone: bool = False) -> None:
        """Run ``batch``, answer its calls, then hand the queue to the next leaders, one per free slot."""
        try:
            self._run_batch(batch, lone)
        finally:
            following: List[List[_Call]] = []
            with self._lock:
                self._running -= self.max_runs if lone else 1
                free = self.max_runs - self._running
                while self._queue and len(following) < free:
                    share = -(-sum(c.rows for c in self._queue) // (free - len(following)))
                    following.append(self._take(share))
                self._running += len(following)
            for call in batch[1:]:
                call.done.set()
            for taken in following:
                taken[0].lead = taken
                taken[0].done.set()
            if self._stats_path is not None:
                self._write_stats()

    def _write_stats(self) -> None:
        """The counters into ``BATCH_STATS_ENV``'s file, at most every ``BATCH_STATS_INTERVAL_S``."""
        now = time.monotonic()
        with self._lock:
            if now - self._stats_written < BATCH_STATS_INTERVAL_S or self._stats_path is None:
                return
            self._stats_written = now
            stats = {"runs": self.runs, "calls": self.merged_calls, "rows": self.rows, "lone_runs": self.lone_runs}
            path = self._stats_path
            try:
                with open(f"{path}.tmp", "w") as f:
                    json.dump(stats, f)
                os.replace(f"{path}.tmp", path)
            except OSError:  # a benchmark's aid: never a request's failure
                self._stats_path = None

    def _take(self, share: int = MAX_BUDGET) -> List[_Call]:
        """The next batch from the queue (under the lock): the first waiting call and every waiting call that
        fits with it (at most ``share`` rows as well), in arrival order."""
        if not self._queue:
            return []
        first = self._queue.popleft()
        taken, rows, length = [first], first.rows, first.length
        kept: Deque[_Call] = deque()
        limit = min(self.max_batch_rows, share)
        while self._queue:
            call = self._queue.popleft()
            longest = max(length, call.length)
            fits = (call.key == first.key and rows + call.rows <= limit
                    and (rows + call.rows) * longest <= self.max_batch_tokens)
            if fits:
                taken.append(call)
                rows, length = rows + call.rows, longest
            else:
                kept.append(call)
        self._queue = kept
        return taken

    def _run_batch(self, batch: List[_Call], lone: bool = False) -> None:
        self.runs += 1
        self.merged_calls += len(batch)
        self.rows += sum(c.rows for c in batch)
        if lone and self._run_lone is not None:
            self.lone_runs += 1
            call = batch[0]
            try:
                call.result, call.error = self._run_lone(call.feeds), None
            except BaseException as exc:  # handed to the caller's thread, which raises it
                call.result, call.error = None, exc
            return
        if len(batch) == 1:
            self._run_alone(batch[0])
            return
        try:
            outputs = self._run(self._merge(batch))
            start = 0
            for call in batch:
                call.result = self._split(outputs, start, call)
                start += call.rows
        except Exception:  # each call alone: one call's failure is never another's
            for call in batch:
                self._run_alone(call)

    def _run_alone(self, call: _Call) -> None:
        try:
            call.result, call.error = self._run(call.feeds), None
        except BaseException as exc:  # handed to the caller's thread, which raises it
            call.result, call.error = None, exc

    def _merge(self, batch: List[_Call]) -> Feeds:
        rows = sum(c.rows for c in batch)
        length = max(c.length for c in batch)
        merged: Feeds = {}
        for name, first in batch[0].feeds.items():
            pad = self.pad_token_id if name == "input_ids" else 0
            out = np.full((rows, length), pad, dtype=first.dtype)
            start = 0
            for call in batch:
                out[start:start + call.rows, :call.length] = call.feeds[name]
                start += call.rows
            merged[name] = out
        return merged

    def _split(self, outputs: Mapping[str, np.ndarray], start: int, call: _Call) -> Dict[str, np.ndarray]:
        """``call``'s rows of every output, cut back to its own length on the sequence axes."""
        part = {}
        for name, value in outputs.items():
            axes = self._axes.get(name, {0: BATCH})
            index: List[Any] = [slice(None)] * np.ndim(value)
            for axis, kind in axes.items():
                if axis < len(index):
                    index[axis] = slice(start, start + call.rows) if kind == BATCH else \
                        slice(0, call.length) if kind == SEQUENCE else slice(None)
            part[name] = np.ascontiguousarray(value[tuple(index)])
        return part


# ---------------------------------------------------------------------- settings


def _setting(config: Mapping[str, Any], defaults: Mapping[str, Any], key: str) -> Any:
    value = config.get(key)
    return defaults.get(key) if value is None else value


def _integer(key: str, value: Any, low: int, high: int, meaning: str = "") -> int:
    """An integer setting from ``low`` to ``high`` (digits in a string too), else ``TfexportError`` naming it."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= int(value) <= high:
        raise TfexportError(
            f"model_config {key}={value!r} is out of range: expected an integer from {low}{meaning} to {high}. "
            f"Fix the python_function model_config in the MLmodel, set MLFLOW_PYFUNC_INFERENCE_CONFIG, or pass "
            f"model_config={{{key!r}: ...}} to mlflow.pyfunc.load_model."
        )
    return int(value)


def cpu_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def given_cores() -> int:
    """The cores this process is given: ``cpu_cores``, or fewer where ``OMP_NUM_THREADS`` says so (PySpark
    sets it to the task's cores in each Python worker of ``spark_udf``)."""
    cores = cpu_cores()
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    return max(1, min(cores, int(omp))) if omp.isdigit() and int(omp) > 0 else cores


def concurrent_runs(value: Any) -> int:
    """``concurrent_runs`` checked: model runs at once, 0 meaning one per core given (``given_cores``)."""
    return _integer(CONCURRENT_RUNS, value, 0, MAX_RUNS, " (one run per CPU core)") or given_cores()


def _flag(value: Any) -> bool:
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    if not isinstance(value, bool):
        raise TfexportError(
            f"model_config {BATCHING}={value!r} is not a boolean: expected true or false. Fix the python_function "
            "model_config in the MLmodel, set MLFLOW_PYFUNC_INFERENCE_CONFIG='{\"batching\": false}', or pass "
            "model_config={'batching': False} to mlflow.pyfunc.load_model."
        )
    return value


def batchable(spec: TaskSpec) -> bool:
    """Whether concurrent calls of ``spec``'s models may share runs: text tasks that do not generate."""
    return spec.generate is None and spec.input_kind == TEXT and spec.custom is None


def make_batcher(runner: Runner, spec: TaskSpec, conf: Mapping[str, Any],
                 model_config: Mapping[str, Any]) -> Optional[Batcher]:
    """A ``Batcher`` around ``runner`` when batching is on for this model (a ``batchable`` task with
    ``batching`` on in ``model_config``, else the format's default, ``formats.py``), else None. The settings
    are checked for every model, batched or not. The runner's ``run`` is looked up at each call."""
    defaults = {**BATCHING_MODEL_CONFIG, "batching": False,
                **default_model_config(str(conf.get(FlavorKey.FORMAT)))}
    on = _flag(_setting(model_config, defaults, BATCHING))
    rows = _integer(MAX_BATCH_ROWS, _setting(model_config, defaults, MAX_BATCH_ROWS), 1, MAX_BUDGET)
    tokens = _integer(MAX_BATCH_TOKENS, _setting(model_config, defaults, MAX_BATCH_TOKENS), 1, MAX_BUDGET)
    runs = concurrent_runs(_setting(model_config, defaults, CONCURRENT_RUNS))
    if not on or not batchable(spec) or conf.get(FlavorKey.PAD_TOKEN_ID) is None:
        return None
    laned: Any = runner if getattr(type(runner), "run_lone", None) is not None else None  # not through a wrapper
    shared: RunFn = (lambda feeds: laned.run_shared(feeds)) if laned else (lambda feeds: runner.run(feeds))
    lone: Optional[RunFn] = (lambda feeds: laned.run_lone(feeds)) if laned else None
    return Batcher(shared, outputs=spec.outputs, max_runs=runs, run_lone=lone,
                   pad_token_id=int(conf[FlavorKey.PAD_TOKEN_ID]), max_batch_rows=rows, max_batch_tokens=tokens)
