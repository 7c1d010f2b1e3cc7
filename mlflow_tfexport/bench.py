"""Latency of a registered variant on this machine (``mlflow-tfexport bench``).

``bench`` loads the variant with ``mlflow.pyfunc.load_model`` (the path a
user serves with), sends ``iterations`` requests of ``batch_size`` texts of
about ``seq_len`` tokens after a warm-up, and reports p50/p99 latency and a
short description of the machine (CPU model, cores, onnxruntime providers).
Every size is bounded and checked before the model is loaded; ``seq_len`` may
not exceed the variant's ``max_length``. ``BenchResult.tags()`` gives the
``tfexport.bench.*`` tags the CLI's ``--tag`` records on the version.
"""

from __future__ import annotations

import os
import platform
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import mlflow
import numpy as np

from mlflow_tfexport._lazy import require
from mlflow_tfexport.constants import TOKENIZER_FILE, FlavorKey, Tag
from mlflow_tfexport.errors import NotATfexportModelError, TfexportError
from mlflow_tfexport.serving.batching import cpu_cores
from mlflow_tfexport.serving.conf import read_flavor_conf

WORDS = (
    "the film was a quiet triumph of patient storytelling with actors who trust the script and a "
    "camera that lingers on faces long after the scene seems over while the music stays out of the way"
).split()
#: Bounds of the sizes a benchmark accepts (a request larger than the batch bound measures memory, not latency).
MAX_BATCH = 1024
MAX_ITERATIONS = 100_000
MAX_WARMUP = 10_000


@dataclass
class BenchResult:
    model_uri: str
    batch_size: int
    seq_len: int  # tokens per text, as the variant's tokenizer counts them
    iterations: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    machine: str

    def tags(self) -> Dict[str, str]:
        """The ``tfexport.bench.*`` version tags that record this result."""
        return {
            Tag.BENCH_P50_MS: f"{self.p50_ms:.3f}",
            Tag.BENCH_P99_MS: f"{self.p99_ms:.3f}",
            Tag.BENCH_BATCH: str(self.batch_size),
            Tag.BENCH_SEQ_LEN: str(self.seq_len),
            Tag.BENCH_ITERATIONS: str(self.iterations),
            Tag.BENCH_MACHINE: self.machine,
        }

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return re.sub(r"\s+", " ", line.split(":", 1)[1]).strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description() -> str:
    """e.g. ``Intel(R) Xeon(R) Processor, 2 cores, Linux x86_64, onnxruntime CPUExecutionProvider``."""
    parts = [cpu_model(), f"{cpu_cores()} cores", f"{platform.system()} {platform.machine()}"]
    try:
        import onnxruntime

        parts.append("onnxruntime " + "+".join(onnxruntime.get_available_providers()))
    except ImportError:
        parts.append("no onnxruntime")
    return ", ".join(parts)


def _shortest_text(count: Callable[[str], int], start: int, seq_len: int) -> str:
    """The fewest words of ``WORDS`` (cycled from ``start``) that make at least ``seq_len`` tokens, or
    ``4 * seq_len + 1`` words if none do. Token counts grow with words, so a doubling then a binary
    search finds it in O(log seq_len) encodings."""

    def text(n: int) -> str:
        return " ".join(WORDS[(start + k) % len(WORDS)] for k in range(n))

    cap = 4 * seq_len + 1
    low, high = 1, 1
    while high < cap and count(text(high)) < seq_len:
        low, high = high + 1, min(cap, 2 * high)
    while low < high:
        middle = (low + high) // 2
        if count(text(middle)) >= seq_len:
            high = middle
        else:
            low = middle + 1
    return text(high)


def texts_of_length(tokenizer: Any, seq_len: int, count: int) -> Tuple[List[str], int]:
    """``count`` different texts of about ``seq_len`` tokens (special tokens included) for ``tokenizer``.

    ``tokenizer`` is a ``tokenizers.Tokenizer`` (or None: words are counted instead). Returns the
    texts and the measured token count of the first.
    """
    def n_tokens(text: str) -> int:
        return len(tokenizer.encode(text).ids) if tokenizer is not None else len(text.split()) + 2

    texts = [_shortest_text(n_tokens, i, seq_len) for i in range(count)]
    return texts, (n_tokens(texts[0]) if texts else 0)


def _flavor_conf(local_dir: str) -> Dict[str, Any]:
    """The tfexport block of the model in ``local_dir``; empty for a model of another flavor (benchmarked
    without a tokenizer or length bound)."""
    try:
        return read_flavor_conf(local_dir)
    except NotATfexportModelError:
        return {}


def load_tokenizer(local_dir: str) -> Any:
    """The variant's ``tokenizers.Tokenizer`` from its saved ``tokenizer.json``, without truncation or
    padding; None for a model without one (an image model, a model of another flavor)."""
    folder = _flavor_conf(local_dir).get(FlavorKey.TOKENIZER_DIR)
    path = os.path.join(local_dir, folder, TOKENIZER_FILE) if folder else None
    if path is None or not os.path.isfile(path):
        return None
    tokenizer = require("tokenizers").Tokenizer.from_file(path)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def measure(predict: Any, batch: Sequence[str], iterations: int, warmup: int) -> List[float]:
    """Seconds per call of ``predict(batch)``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        predict(list(batch))
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        predict(list(batch))
        times.append(time.perf_counter() - started)
    return times


def check_sizes(batch_size: Any, seq_len: Any, iterations: Any, warmup: Any) -> None:
    """Every size an integer within its bounds, before anything is downloaded."""
    bounds = {"batch_size": (batch_size, 1, MAX_BATCH), "seq_len": (seq_len, 2, None),
              "iterations": (iterations, 1, MAX_ITERATIONS), "warmup": (warmup, 0, MAX_WARMUP)}
    bad = [f"{name} {value!r}" for name, (value, low, high) in bounds.items()
           if isinstance(value, bool) or not isinstance(value, int) or value < low
           or (high is not None and value > high)]
    if bad:
        raise TfexportError(
            f"bench needs batch_size >= 1, seq_len >= 2, iterations >= 1 and warmup >= 0; received "
            f"{batch_size}, {seq_len}, {iterations}, {warmup} ({', '.join(bad)} out of range). Bounds: "
            f"batch_size 1..{MAX_BATCH}, seq_len 2..the variant's max_length, iterations 1..{MAX_ITERATIONS}, "
            f"warmup 0..{MAX_WARMUP}."
        )


def check_seq_len(seq_len: int, flavor_conf: Dict[str, Any], model_uri: str) -> None:
    """``seq_len`` no longer than the variant accepts (its ``max_length``: the largest bucket of a static one)."""
    limit = flavor_conf.get(FlavorKey.MAX_LENGTH)
    if isinstance(limit, int) and not isinstance(limit, bool) and seq_len > limit:
        raise TfexportError(
            f"seq_len {seq_len} is longer than {model_uri} accepts: at most {limit} tokens (max_length in its "
            f"MLmodel). Benchmark with a seq_len <= {limit} (CLI: --seq-len {limit})."
        )


def bench(
    model_uri: str,
    *,
    batch_size: int = 1,
    seq_len: int = 128,
    iterations: int = 100,
    warmup: int = 5,
    model_config: Optional[Dict[str, Any]] = None,
) -> BenchResult:
    """Load ``model_uri`` with ``mlflow.pyfunc.load_model`` and time ``iterations`` predictions.

    Raises:
        TfexportError: a size out of its bounds (``check_sizes``), or ``seq_len`` above the variant's
            ``max_length``; checked before the model is loaded.
    """
    check_sizes(batch_size, seq_len, iterations, warmup)
    local = mlflow.artifacts.download_artifacts(model_uri)
    check_seq_len(seq_len, _flavor_conf(local), model_uri)
    model = mlflow.pyfunc.load_model(local, model_config=model_config or None)
    texts, tokens = texts_of_length(load_tokenizer(local), seq_len, batch_size)
    times = np.array(measure(model.predict, texts, iterations, warmup)) * 1000.0
    return BenchResult(
        model_uri=model_uri,
        batch_size=batch_size,
        seq_len=tokens,
        iterations=iterations,
        p50_ms=float(np.percentile(times, 50)),
        p99_ms=float(np.percentile(times, 99)),
        mean_ms=float(times.mean()),
        machine=machine_description(),
    )
