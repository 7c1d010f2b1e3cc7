"""Threads chosen by the workload: a lone call gets every core, concurrent calls one thread each.

A model run that is the only one going (an in-process ``predict``, ``mlflow
models predict``, a ``spark_udf`` worker, one client of a server) should use
every core it is given; runs of concurrent callers (``mlflow models serve``,
which runs each request's ``predict`` in its own thread) are cheapest per
CPU second on one thread each, one run per core. onnxruntime fixes a
session's intra-op threads when the session is made, so ``Lanes`` holds two
runs of the same graph (``intra_op_num_threads: "auto"``):

- ``wide``: a session with one intra-op thread per core, onnxruntime's
  spinning workers left on (a lone sentence took 1.22x onnxruntime's default
  session without spinning, 0.93x with it: ``benchmarks/threads.py``, 2 cores);
  concurrent calls never run on it, as a call is lone only after a quiet
  second;
- ``narrow``: a session with one thread, which concurrent calls share (a
  session's ``run`` is safe from several threads at once).

"Every core" is every core the process is given: its CPU affinity, or
``OMP_NUM_THREADS`` where that is lower (PySpark sets it to the task's cores
in each ``spark_udf`` worker, so workers do not fight over the cores).

Every core helps only where the cores are free: a lone call takes them unless
other processes kept at least half of this process's CPUs busy since the
previous lone call (``spare_cores``: ``/proc/stat`` for the CPUs of the
process's affinity, less this process's own CPU time), else it runs on one
thread like a concurrent one (on a saturated machine extra threads only wait
for a core, and cost CPU time to hand work over). The process's own work
never counts against it: a batch job calling ``predict`` in a loop keeps every
core (the 1-minute load average, which counts the caller's own threads, made
such a job fall back to one thread as soon as it had kept the cores busy for
a minute). Where ``/proc/stat`` cannot be read, the load average decides.

A call is *lone* when no other call is in flight as it starts and none had
company for ``LONE_AFTER_QUIET_S`` (``run`` counts calls in flight), or when
the batcher says so (``run_lone``: no run going, nobody waiting, and the same
quiet second, ``serving/batching.py``): the moments in which the requests of
concurrent clients leave the model idle do not make a call lone. A lone call of at least
one row per core runs as one single-threaded run per core on the narrow
session, each on a contiguous slice of its rows (rows are independent:
attention-masked padding, as in the batcher's merged runs), and the slices'
outputs are joined on their batch axis: on CPU that is faster per row than
intra-op threads on small matrices. A lone call of fewer rows runs on the wide
session. Calls never share mutable state: the counter and the pool are
guarded by one lock; the pool (``cores - 1`` threads) is made at the first
split. Serving path: numpy only, Python 3.10.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from mlflow_tfexport.constants import LONE_AFTER_QUIET_S

Feeds = Dict[str, np.ndarray]
RunFn = Callable[[Feeds], Dict[str, np.ndarray]]

#: Say which path a run took (counters for tests and benchmarks; read without the lock).
WIDE, NARROW, SPLIT = "wide", "narrow", "split"


#: The least time between two readings of ``/proc/stat``: calls within it reuse the last answer.
CPU_WATCH_INTERVAL_S = 0.25


class CpuWatch:
    """How busy other processes keep this process's CPUs, between one reading and the next (thread-safe).

    ``read`` returns ``(busy CPU seconds of the CPUs, this process's CPU seconds, the CPUs counted)``, or None
    where it cannot tell (then the 1-minute load average decides, as ``spare`` says)."""

    def __init__(self, read: Optional[Callable[[], Optional[Tuple[float, float, int]]]] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read or read_proc_stat
        self._clock = clock
        self._lock = threading.Lock()
        self._last: Optional[Tuple[float, float, float]] = None  # (when, busy, own)
        self._answer = True

    def spare(self, cores: int) -> bool:
        """Whether other processes left at least half of the CPUs free since the previous reading."""
        now = self._clock()
        with self._lock:
            if self._last is not None and now - self._last[0] < CPU_WATCH_INTERVAL_S:
                return self._answer
            reading = self._read()
            if reading is None:
                self._answer = _load_average_below(cores)
                return self._answer
            busy, own, cpus = reading
            if self._last is not None and now > self._last[0]:
                others = max(0.0, (busy - self._last[1]) - (own - self._last[2])) / (now - self._last[0])
                self._answer = others < cpus / 2
            else:  # the first reading: nothing to compare with yet
                self._answer = _load_average_below(cores)
            self._last = (now, busy, own)
            return self._answer


def read_proc_stat() -> Optional[Tuple[float, float, int]]:
    """Busy CPU seconds of the CPUs this process may run on (``/proc/stat``), this process's CPU seconds, and
    how many CPUs were counted; None off Linux or when the file cannot be read."""
    try:
        allowed = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        tick = float(os.sysconf("SC_CLK_TCK"))
        busy, cpus = 0, 0
        with open("/proc/stat") as f:
            for line in f:
                name, _, rest = line.partition(" ")
                if name not in allowed:
                    continue
                # user nice system idle iowait irq softirq steal (guest time is inside user)
                fields = [int(x) for x in rest.split()[:8]]
                busy += sum(fields) - fields[3] - fields[4]
                cpus += 1
        return (busy / tick, time.process_time(), cpus) if cpus else None
    except (OSError, AttributeError, ValueError, IndexError):
        return None


def _load_average_below(cores: int) -> bool:
    try:
        return os.getloadavg()[0] < cores
    except (OSError, AttributeError):
        return True


_WATCH = CpuWatch()


def spare_cores(cores: int) -> bool:
    """Whether the CPUs are free for a lone call: other processes kept less than half of them busy since the
    previous lone call (see the module doc)."""
    return _WATCH.spare(cores)


class Company:
    """When a model's calls last had company, and so whether a call starting now is lone (the rule of the
    module doc: idle, and no call with company for ``LONE_AFTER_QUIET_S``). Not locked: its owner (``Lanes``,
    ``Batcher``) calls it under its own lock."""

    def __init__(self) -> None:
        self._at = -float("inf")

    def lone(self, idle: bool, now: float) -> bool:
        """Whether a call starting at ``now`` is lone; ``idle``: no other call in flight or waiting."""
        if not idle:
            self._at = now
        return idle and now - self._at >= LONE_AFTER_QUIET_S


class Lanes:
    """Runs each call on the wide run, the narrow run, or as slices on the narrow run (see the module doc)."""

    def __init__(self, narrow: RunFn, wide: Optional[RunFn], cores: int,
                 batch_axes: Optional[Mapping[str, int]] = None,
                 spare: Optional[Callable[[int], bool]] = None) -> None:
        self.narrow = narrow
        #: Whether the cores are free for a lone call (default ``spare_cores``).
        self.spare = spare or spare_cores
        self.wide = wide
        self.cores = max(1, int(cores))
        #: Output name -> batch axis; None: the outputs cannot be joined, a lone call is never sliced.
        self.batch_axes = None if batch_axes is None else dict(batch_axes)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._company = Company()
        self._pool: Optional[ThreadPoolExecutor] = None
        self.taken: Dict[str, int] = {WIDE: 0, NARROW: 0, SPLIT: 0}

    def run(self, feeds: Feeds) -> Dict[str, np.ndarray]:
        """``feeds``' outputs: all cores when no other call is in flight, else one thread."""
        now = time.monotonic()
        with self._lock:
            lone = self._company.lone(self._in_flight == 0, now)
            self._in_flight += 1
        try:
            return self.run_lone(feeds) if lone else self.run_shared(feeds)
        finally:
            with self._lock:
                self._in_flight -= 1

    def run_shared(self, feeds: Feeds) -> Dict[str, np.ndarray]:
        """One thread: the run of a call with company."""
        self.taken[NARROW] += 1
        return self.narrow(feeds)

    def run_lone(self, feeds: Feeds) -> Dict[str, np.ndarray]:
        """Every core: slices on the narrow run (a row per core or more), else the wide run; one thread
        when the machine has no spare cores."""
        if self.cores > 1 and not self.spare(self.cores):
            return self.run_shared(feeds)
        rows = _rows(feeds)
        if self.cores > 1 and self.batch_axes is not None and rows >= self.cores:
            self.taken[SPLIT] += 1
            return self._split(feeds, rows)
        if self.wide is None:
            return self.run_shared(feeds)
        self.taken[WIDE] += 1
        return self.wide(feeds)

    def _split(self, feeds: Feeds, rows: int) -> Dict[str, np.ndarray]:
        bounds = np.linspace(0, rows, self.cores + 1).astype(int)
        parts = [{k: v[a:b] for k, v in feeds.items()} for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.cores - 1, thread_name_prefix="tfexport-lane")
            pool = self._pool
        later = [pool.submit(self.narrow, part) for part in parts[1:]]
        outs: List[Dict[str, np.ndarray]] = [self.narrow(parts[0])] + [f.result() for f in later]
        axes = self.batch_axes or {}
        return {name: np.concatenate([o[name] for o in outs], axis=axes.get(name, 0)) for name in outs[0]}


def _rows(feeds: Mapping[str, np.ndarray]) -> int:
    """The rows of ``feeds`` when every feed has the same first dimension, else 0 (never sliced)."""
    firsts = {np.shape(v)[0] if np.ndim(v) else -1 for v in feeds.values()}
    return int(next(iter(firsts))) if len(firsts) == 1 and -1 not in firsts else 0
