"""``mlflow-tfexport bench <model-uri>``: latency of a registered variant on this machine.

Loads the variant with ``mlflow.pyfunc.load_model`` (the path a user serves
with), sends ``--iterations`` requests of ``--batch-size`` texts of about
``--seq-len`` tokens after a warm-up, and reports p50/p99 latency. With
``--tag`` the figures are recorded on the model version, with a short
description of the machine (CPU model, cores, onnxruntime providers), as
``tfexport.bench.*`` tags.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport.constants import FlavorKey, Tag
from mlflow_tfexport.errors import TfexportError

WORDS = (
    "the film was a quiet triumph of patient storytelling with actors who trust the script and a "
    "camera that lingers on faces long after the scene seems over while the music stays out of the way"
).split()


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
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description() -> str:
    """e.g. ``Intel(R) Xeon(R) Processor, 2 cores, Linux x86_64, onnxruntime CPUExecutionProvider``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)
    parts = [cpu_model(), f"{cores} cores", f"{platform.system()} {platform.machine()}"]
    try:
        import onnxruntime

        parts.append("onnxruntime " + "+".join(onnxruntime.get_available_providers()))
    except ImportError:
        parts.append("no onnxruntime")
    return ", ".join(parts)


def texts_of_length(tokenizer: Any, seq_len: int, count: int) -> Tuple[List[str], int]:
    """``count`` different texts of about ``seq_len`` tokens (special tokens included) for ``tokenizer``.

    ``tokenizer`` is a ``tokenizers.Tokenizer`` (or None: words are counted instead). Returns the
    texts and the measured token count of the first.
    """
    def n_tokens(text: str) -> int:
        return len(tokenizer.encode(text).ids) if tokenizer is not None else len(text.split()) + 2

    texts = []
    first = 0
    for i in range(count):
        words: List[str] = []
        j = i
        while True:
            words.append(WORDS[j % len(WORDS)])
            j += 1
            if n_tokens(" ".join(words)) >= seq_len or len(words) > 4 * seq_len:
                break
        text = " ".join(words)
        if i == 0:
            first = n_tokens(text)
        texts.append(text)
    return texts, first


def load_tokenizer(local_dir: str) -> Any:
    """The variant's ``tokenizers.Tokenizer`` from its saved ``tokenizer.json`` (None if absent)."""
    from mlflow_tfexport.serving.conf import read_flavor_conf

    try:
        import tokenizers

        conf = read_flavor_conf(local_dir)
        tokenizer = tokenizers.Tokenizer.from_file(
            os.path.join(local_dir, conf[FlavorKey.TOKENIZER_DIR], "tokenizer.json")
        )
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return tokenizer
    except Exception:
        return None


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


def bench(
    model_uri: str,
    *,
    batch_size: int = 1,
    seq_len: int = 128,
    iterations: int = 100,
    warmup: int = 5,
    model_config: Optional[Dict[str, Any]] = None,
) -> BenchResult:
    """Load ``model_uri`` with ``mlflow.pyfunc.load_model`` and time ``iterations`` predictions."""
    import mlflow

    if batch_size < 1 or seq_len < 2 or iterations < 1 or warmup < 0:
        raise TfexportError(
            f"bench needs batch_size >= 1, seq_len >= 2, iterations >= 1 and warmup >= 0; received "
            f"{batch_size}, {seq_len}, {iterations}, {warmup}."
        )
    local = mlflow.artifacts.download_artifacts(model_uri)
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


def resolve_version(model_uri: str) -> Tuple[str, str]:
    """``models:/<name>/<version>`` or ``models:/<name>@<alias>`` -> (name, version)."""
    from mlflow import MlflowClient

    match = re.fullmatch(r"models:/([^/@]+)(?:/(\d+)|@(.+))", model_uri)
    if not match:
        raise TfexportError(
            f"--tag records figures on a registered version: use models:/<name>/<version> or "
            f"models:/<name>@<alias>, not {model_uri!r}."
        )
    name, version, alias = match.groups()
    if alias:
        version = MlflowClient().get_model_version_by_alias(name, alias).version
    return name, str(version)


def record(result: BenchResult) -> Tuple[str, str]:
    """Set the ``tfexport.bench.*`` tags of ``result`` on its model version."""
    from mlflow import MlflowClient

    name, version = resolve_version(result.model_uri)
    client = MlflowClient()
    for key, value in result.tags().items():
        client.set_model_version_tag(name, version, key, value)
    return name, version


def cmd_bench(args: argparse.Namespace) -> int:
    if args.tag:
        resolve_version(args.model_uri)  # a bad URI for --tag fails before the measurement
    config = {"intra_op_num_threads": args.threads} if args.threads else None
    result = bench(args.model_uri, batch_size=args.batch_size, seq_len=args.seq_len,
                   iterations=args.iterations, warmup=args.warmup, model_config=config)
    print(f"{result.model_uri}: batch {result.batch_size} x {result.seq_len} tokens, {result.iterations} iterations")
    print(f"  p50 {result.p50_ms:.2f} ms   p99 {result.p99_ms:.2f} ms   mean {result.mean_ms:.2f} ms")
    print(f"  machine: {result.machine}")
    if args.tag:
        name, version = record(result)
        print(f"Recorded {', '.join(sorted(result.tags()))} on models:/{name}/{version}")
    return 0


def add_parser(subparsers: Any) -> None:
    """Register the ``bench`` subcommand on ``subparsers`` (from ``add_subparsers``)."""
    p = subparsers.add_parser("bench", help="measure a registered variant's latency on this machine")
    p.add_argument("model_uri", help="e.g. models:/sentiment/2 or models:/sentiment@production")
    p.add_argument("--batch-size", type=int, default=1, help="texts per request (default 1)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per text (default 128)")
    p.add_argument("--iterations", type=int, default=100, help="timed requests (default 100)")
    p.add_argument("--warmup", type=int, default=5, help="untimed requests first (default 5)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default: runtime's)")
    p.add_argument("--tag", action="store_true", help="record p50/p99 and the machine as tags on the version")
    p.set_defaults(func=cmd_bench)
