"""When a request must stop: the scoring server's request timeout, checked between chunks of work.

Under ``mlflow models serve`` a request that runs past
``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT`` seconds is answered 504, but the
thread running ``predict`` goes on. So when that variable is set (``mlflow
models serve`` always sets it for its workers), ``predict`` takes a
``Deadline`` when it starts, checks it between chunks (and between generated
prompts) and stops with ``RequestTimeoutError`` once that many seconds have
passed: a request already answered 504 does not keep the server busy.
In-process callers without the variable have no deadline.
Serving path: no torch, no transformers, Python 3.10.
"""

from __future__ import annotations

import math
import os
import time
from typing import Optional

from mlflow_tfexport.errors import RequestTimeoutError

#: The scoring server's per-request timeout (seconds), as ``mlflow models serve`` passes it to its workers.
TIMEOUT_ENV = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"


class Deadline:
    """When a request must stop: ``seconds`` after it started (``check`` raises once that has passed)."""

    def __init__(self, seconds: float, started: Optional[float] = None) -> None:
        self.seconds = float(seconds)
        self.started = time.monotonic() if started is None else started

    @classmethod
    def from_env(cls) -> Optional[Deadline]:
        """The deadline ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT`` sets from now, or None when it is unset."""
        raw = os.environ.get(TIMEOUT_ENV)
        if not raw:
            return None
        try:
            seconds = float(raw)
        except ValueError:
            return None
        return cls(seconds) if math.isfinite(seconds) and seconds > 0 else None

    def check(self, done: int, total: int, unit: str = "rows") -> None:
        elapsed = time.monotonic() - self.started
        if elapsed > self.seconds:
            raise RequestTimeoutError(
                f"Stopped after {elapsed:.1f} s with {done} of {total} {unit} done: the scoring server's request "
                f"timeout ({TIMEOUT_ENV}={self.seconds:g} s) has passed, so the client was already answered 504. "
                f"Send fewer {unit} per request, or start the server with a larger {TIMEOUT_ENV}."
            )


def check_deadline(deadline: Optional[Deadline], done: int, total: int, unit: str = "rows") -> None:
    if deadline is not None:
        deadline.check(done, total, unit)
