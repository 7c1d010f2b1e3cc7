"""``mlflow-tfexport`` / ``python -m mlflow_tfexport``: argparse over the public functions.

Each command maps its arguments onto one public function (``export``,
``registry.variant_rows``, ``registry.promote``, ``registry.rollback``, ``registry.history_rows``,
``policy.get_policy``/``set_policy``, ``validation.revalidate.validate_version``,
``bench.bench``, the worker)
and prints the result. Exit codes: 0 on success, 1 with a one-line reason on
failure (the full traceback only with ``--verbose``), 2 for bad command-line
usage.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import traceback
import warnings
from typing import Any, Callable, Dict, Optional, Sequence

from mlflow_tfexport import __version__, worker
from mlflow_tfexport.bench import bench
from mlflow_tfexport.cli.store import connect, with_store_hint
from mlflow_tfexport.constants import Format, Tag
from mlflow_tfexport.errors import TfexportError
from mlflow_tfexport.export.api import STAGES, export
from mlflow_tfexport.export.onnx.backend import OPSET_RANGE
from mlflow_tfexport.export.options import DEFAULT_OP_TYPES, QUANTIZE_HELP, QUANTIZE_MODES
from mlflow_tfexport.registry import (
    history_rows,
    parse_models_uri,
    promote,
    resolve_version,
    rollback,
    set_version_tags,
    variant_rows,
)
from mlflow_tfexport.registry.attest import GUARD_SECRET_ENV, Signer, attest_version
from mlflow_tfexport.registry.policy import get_policy, set_policy
from mlflow_tfexport.serving.runtimes.neuron import TARGETS
from mlflow_tfexport.validation import files
from mlflow_tfexport.validation.files import ReadLimits
from mlflow_tfexport.validation.revalidate import validate_version
from mlflow_tfexport.worker import queue, server
from mlflow_tfexport.worker.fetch import DataPolicy
from mlflow_tfexport.worker.memory import STATE_DIR_ENV, GuardMemory


class StageLines:
    """The export's stage lines on stderr: ``[i/N] stage: detail``, each with how long the stage before it took;
    further details of the same stage (e.g. validation's rows) as indented lines."""

    def __init__(self) -> None:
        self.stage: Optional[str] = None
        self.started = time.perf_counter()

    def __call__(self, stage: str, detail: str) -> None:
        if stage == self.stage:
            print(f"      {detail}", file=sys.stderr, flush=True)
            return
        step = STAGES.index(stage) + 1 if stage in STAGES else 0
        print(f"[{step}/{len(STAGES)}] {stage}: {detail}{self._took()}", file=sys.stderr, flush=True)
        self.stage, self.started = stage, time.perf_counter()

    def _took(self) -> str:
        return f"   ({self.stage} took {time.perf_counter() - self.started:.1f} s)" if self.stage else ""

    def done(self) -> None:
        if self.stage is not None:
            print(f"      done{self._took()}", file=sys.stderr, flush=True)
            self.stage = None


def _quantize_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The ``--quantize-*`` options given (only those: their defaults are export()'s)."""
    given: Dict[str, Any] = {}
    if args.quantize_per_channel is not None:
        given["quantize_per_channel"] = args.quantize_per_channel
    if args.quantize_op_types:
        given["quantize_op_types"] = args.quantize_op_types
    if args.quantize_reduce_range:
        given["quantize_reduce_range"] = True
    return given


def cmd_export(args: argparse.Namespace) -> int:
    stages = StageLines()
    result = export(
        args.model_uri,
        format=args.format,
        opset=args.opset,
        trace_shape=args.trace_shape or None,
        atol=args.atol,
        registered_model_name=args.registered_model_name,
        exporter=args.exporter,
        optimize=args.optimize,
        quantize=args.quantize,
        min_agreement=args.min_agreement,
        neuron_target=args.neuron_target,
        compiler_args=args.compiler_arg or (),
        device=args.device,
        validation_data=args.validation_data or None,
        force=args.force,
        progress=stages,
        config=args.export_config or None,
        **_quantize_options(args),
    )
    stages.done()
    if not result.created:
        print(f"Already exported with these options: {result.model_uri} (use --force to export again)")
        return 0
    if result.report is not None:
        print(result.report.to_text())
    print(f"Registered {result.model_uri}")
    return 0


def render_table(rows: Sequence[Dict[str, str]]) -> str:
    if not rows:
        return "(no versions)"
    headers = list(rows[0])
    widths = {h: max(len(h), *(len(r[h]) for r in rows)) for h in headers}
    lines = ["  ".join(h.ljust(widths[h]) for h in headers), "  ".join("-" * widths[h] for h in headers)]
    lines += ["  ".join(r[h].ljust(widths[h]) for h in headers) for r in rows]
    lines = [line.rstrip() for line in lines]
    return "\n".join(lines)


def cmd_list(args: argparse.Namespace) -> int:
    print(render_table(variant_rows(args.name)))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    promote(args.name, args.version, args.alias)
    print(f"models:/{args.name}@{args.alias} -> version {args.version}")
    return 0


def cmd_policy(args: argparse.Namespace) -> int:
    policy = set_policy(args.name, args.set) if args.set else get_policy(args.name)
    if args.set:
        print(f"Set {', '.join(s.partition('=')[0].strip() for s in args.set)} on {args.name}")
    print(f"Promotion policy of {args.name}:")
    print(policy.to_text())
    if policy.errors:
        print(f"error: the policy of {args.name} cannot be read: guarded aliases refuse every promotion until "
              "it is fixed (mlflow-tfexport policy NAME --set KEY=VALUE)", file=sys.stderr)
        return 1
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    rows = history_rows(args.name, args.alias)
    print(render_table(rows) if rows else f"(no alias changes recorded for {args.name})")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    before, after = rollback(args.name, args.alias)
    print(f"models:/{args.name}@{args.alias}: version {before} -> version {after}")
    return 0


def _attest(name: str, version: str, written: Dict[str, str]) -> bool:
    """Sign a version's validation tags after ``written`` (with this process's secret; False without one)."""
    from mlflow import MlflowClient

    signer = Signer.from_env()
    if signer is None:
        return False
    client = MlflowClient()
    tags = {**(client.get_model_version(name, version).tags or {}), **written}
    return attest_version(client, signer, name, version, tags)


def cmd_validate(args: argparse.Namespace) -> int:
    if args.tag and parse_models_uri(args.model_uri) is None:  # before any download
        raise TfexportError(
            f"--tag records the outcome on a registered version: use models:/<name>/<version> or "
            f"models:/<name>@<alias>, not {args.model_uri!r}."
        )
    result = validate_version(args.model_uri, args.data, min_agreement=args.min_agreement)
    print(result.to_text())
    if args.tag:
        set_version_tags(result.name, result.version, result.tags())
        print(f"Recorded {', '.join(sorted(result.tags()))} on {result.model_uri}")
        if _attest(result.name, result.version, result.tags()):
            print(f"Signed the validation ({Tag.ATTESTATION}) with the worker's secret")
    if not result.passed:
        print(f"error: validation of {result.model_uri} failed: {result.check.failure()}", file=sys.stderr)
        return 1
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    target = None
    if args.tag:  # a bad URI for --tag fails before the measurement
        if parse_models_uri(args.model_uri) is None:
            raise TfexportError(
                f"--tag records figures on a registered version: use models:/<name>/<version> or "
                f"models:/<name>@<alias>, not {args.model_uri!r}."
            )
        target = resolve_version(args.model_uri)
    config = {"intra_op_num_threads": args.threads} if args.threads else None
    result = bench(args.model_uri, batch_size=args.batch_size, seq_len=args.seq_len,
                   iterations=args.iterations, warmup=args.warmup, model_config=config)
    print(f"{result.model_uri}: batch {result.batch_size} x {result.seq_len} tokens, {result.iterations} iterations")
    print(f"  p50 {result.p50_ms:.2f} ms   p99 {result.p99_ms:.2f} ms   mean {result.mean_ms:.2f} ms")
    print(f"  machine: {result.machine}")
    if target is not None:
        name, version = target
        set_version_tags(name, version, result.tags())
        print(f"Recorded {', '.join(sorted(result.tags()))} on models:/{name}/{version}")
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def cmd_worker(args: argparse.Namespace) -> int:
    import contextlib
    import logging
    import signal
    import threading

    import mlflow

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if threading.current_thread() is threading.main_thread():  # SIGTERM (docker stop, kubectl) stops cleanly
        signal.signal(signal.SIGTERM, _interrupt)
    limits = ReadLimits(max_rows=args.data_max_rows, max_bytes=args.data_max_bytes,
                        max_line_bytes=args.data_max_line_bytes, max_depth=args.data_max_depth,
                        max_decompressed_bytes=args.data_max_decompressed_bytes,
                        download_timeout_s=args.data_download_timeout)
    policy = DataPolicy(data_dirs=tuple(args.data_dir), schemes=tuple(args.data_scheme), limits=limits)
    secret = args.secret or os.environ.get(worker.SECRET_ENV)
    guard_secret = os.environ.get(GUARD_SECRET_ENV) or secret
    state_dir = args.state_dir or os.environ.get(STATE_DIR_ENV) or None
    if args.poll:
        if not guard_secret:
            print(f"error: a secret is required to sign and check the alias guard's records: {GUARD_SECRET_ENV} "
                  f"(or --secret / {worker.SECRET_ENV}); see docs/trust-model.md", file=sys.stderr)
            return 2
        jobs = worker.ExportWorker(threads=args.threads, data_policy=policy, max_attempts=args.max_attempts,
                                   signer=Signer(guard_secret)).start()
        worker.recover(jobs, requeue=False)  # a poll pass finds interrupted requests by itself
        memory = GuardMemory.in_dir(state_dir, mlflow.get_registry_uri()) if state_dir else None
        try:
            queued = worker.poll(jobs, interval_s=args.interval, once=args.once, memory=memory)
        except KeyboardInterrupt:
            queued = 0
        finally:
            jobs.stop()
        if args.once:
            print(f"Handled {queued} pending request(s)")
        return 0
    if not secret:
        print(f"error: a webhook secret is required: --secret or {worker.SECRET_ENV} (or use --poll)",
              file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        worker.serve(secret=secret, host=args.host, port=args.port, tolerance_s=args.tolerance,
                     threads=args.threads, certfile=args.certfile, keyfile=args.keyfile, data_policy=policy,
                     max_attempts=args.max_attempts, header_timeout_s=args.header_timeout,
                     body_timeout_s=args.body_timeout, replay_cache=args.replay_cache or None, state_dir=state_dir,
                     guard_secret=guard_secret)
    return 0


def _optional_int(value: str) -> Optional[int]:
    """An int, or None for an empty string (MLproject parameters default to "")."""
    return int(value) if value.strip() else None


def _worker_data_options(p: argparse.ArgumentParser) -> None:
    """The worker's bounds on tfexport.request.data and on its HTTP clients (docs/worker-data.md)."""
    p.add_argument("--data-dir", action="append", default=[], metavar="DIR",
                   help="a local directory whose files tfexport.request.data may name (repeatable; default: none, "
                   "only runs:/, models:/ and mlflow-artifacts:/ artifact URIs)")
    p.add_argument("--data-scheme", action="append", default=[], metavar="SCHEME",
                   help="an artifact store scheme tfexport.request.data may use besides the registry's own, e.g. s3 "
                   "(repeatable; never http, https or file)")
    p.add_argument("--data-max-rows", type=int, default=2000, help="rows of validation data read (default 2000)")
    p.add_argument("--data-max-bytes", type=int, default=files.DEFAULT_MAX_BYTES,
                   help=f"bytes downloaded or read of a data file (default {files.DEFAULT_MAX_BYTES})")
    p.add_argument("--data-max-line-bytes", type=int, default=files.DEFAULT_MAX_LINE_BYTES,
                   help=f"bytes of one line of a data file (default {files.DEFAULT_MAX_LINE_BYTES})")
    p.add_argument("--data-max-depth", type=int, default=files.DEFAULT_MAX_DEPTH,
                   help=f"nesting of one JSON line (default {files.DEFAULT_MAX_DEPTH})")
    p.add_argument("--data-max-decompressed-bytes", type=int, default=files.DEFAULT_MAX_DECOMPRESSED_BYTES,
                   help=f"uncompressed bytes of the Parquet row groups read (default "
                   f"{files.DEFAULT_MAX_DECOMPRESSED_BYTES})")
    p.add_argument("--data-download-timeout", type=float, default=files.DEFAULT_DOWNLOAD_TIMEOUT_S,
                   help=f"seconds a data download may take (default {files.DEFAULT_DOWNLOAD_TIMEOUT_S:g})")
    p.add_argument("--max-attempts", type=int, default=queue.MAX_ATTEMPTS,
                   help=f"starts of one request before it is marked failed, when its worker keeps dying "
                   f"(default {queue.MAX_ATTEMPTS})")
    p.add_argument("--header-timeout", type=float, default=server.DEFAULT_HEADER_TIMEOUT_S,
                   help=f"seconds a connection has to send its request headers (default "
                   f"{server.DEFAULT_HEADER_TIMEOUT_S:g})")
    p.add_argument("--body-timeout", type=float, default=server.DEFAULT_BODY_TIMEOUT_S,
                   help=f"seconds a connection has to send its body after the headers (default "
                   f"{server.DEFAULT_BODY_TIMEOUT_S:g})")
    p.add_argument("--replay-cache", default=server.DEFAULT_REPLAY_CACHE, metavar="PATH",
                   help=f"file keeping accepted delivery ids across restarts (default {server.DEFAULT_REPLAY_CACHE}; "
                   "'' keeps them in memory only)")


_NAME_HELP = "the registered model's name, e.g. sentiment"


def _store_options() -> argparse.ArgumentParser:
    """``--tracking-uri`` and ``--registry-uri``: every command takes them (a parent parser)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("MLflow store")
    group.add_argument("--tracking-uri", default=None, metavar="URI",
                       help="the MLflow tracking store, e.g. sqlite:///mlflow.db or http://127.0.0.1:5000 "
                       "(default: $MLFLOW_TRACKING_URI, else MLflow's default, sqlite:///mlflow.db in this folder); "
                       "a store that does not exist is an error, never created")
    group.add_argument("--registry-uri", default=None, metavar="URI",
                       help="the model registry, if not the tracking store (default: $MLFLOW_REGISTRY_URI, "
                       "else the tracking URI)")
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The ``mlflow-tfexport`` parser: every command, option and help text (the CLI reference is built from it)."""
    parser = argparse.ArgumentParser(
        prog="mlflow-tfexport",
        description="Export logged Transformers models to ONNX, TorchScript or Neuron as registry versions.",
    )
    parser.add_argument("--verbose", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    store = _store_options()

    p = sub.add_parser("export", parents=[store],
                       help="export a logged version and register the result as a new version")
    p.add_argument("model_uri", help="e.g. models:/sentiment/1 or models:/sentiment@champion")
    p.add_argument("--format", default=Format.ONNX, help="onnx (default), torchscript or neuron")
    p.add_argument("--opset", type=_optional_int, default=None, help="ONNX opset (default: the task's)")
    p.add_argument("--atol", type=str, default=None, help="validation tolerance (default: the task's)")
    p.add_argument("--trace-shape", action="append", help="BATCHxSEQ for static formats; repeat for buckets")
    p.add_argument("--registered-model-name", default=None, help="default: the source's registered model")
    p.add_argument("--exporter", choices=list(OPSET_RANGE), default=None, help="ONNX exporter")
    p.add_argument("--optimize", action=argparse.BooleanOptionalAction, default=None,
                   help="ONNX: fuse attention/LayerNorm/GELU with onnxruntime's transformer optimizer (default: off, "
                        "on with --quantize int8 where the task's measured recipe fuses first)")
    p.add_argument("--quantize", choices=list(QUANTIZE_MODES), default=None,
                   help="ONNX int8: " + "; ".join(f"{m}: {h}" for m, h in QUANTIZE_HELP.items())
                   + ". MODEL_URI may also be an fp32 ONNX version: its graph is quantised")
    p.add_argument("--quantize-per-channel", action=argparse.BooleanOptionalAction, default=None,
                   help="with --quantize int8-static: weight scales per output channel (default) or one per tensor")
    p.add_argument("--quantize-op-types", default=None, metavar="OPS",
                   help="with --quantize: operator types to quantise, comma-separated (default int8: "
                   + ",".join(DEFAULT_OP_TYPES["int8"]) + "; int8-static: " + ",".join(DEFAULT_OP_TYPES["int8-static"])
                   + ")")
    p.add_argument("--quantize-reduce-range", action="store_true",
                   help="with --quantize: 7-bit weights, for CPUs without VNNI (default off)")
    p.add_argument("--min-agreement", type=float, default=None,
                   help="with --quantize: the agreement with the source required by validation (default: the task's)")
    p.add_argument("--neuron-target", choices=list(TARGETS), default=None,
                   help="neuron: the Neuron SDK to compile for, " + " or ".join(TARGETS)
                   + " (default: the one installed)")
    p.add_argument("--compiler-arg", action="append", help="extra Neuron compiler argument (repeatable)")
    p.add_argument("--device", default=None,
                   help="TorchScript: trace on this device (cpu, cuda, cuda:N); a trace runs on the device type "
                   "it was traced on (default cpu)")
    p.add_argument("--validation-data", default=None, metavar="PATH",
                   help="rows to compare the answers of the variant and the source on: a .csv, .parquet, .jsonl "
                   "or .txt file with the task's columns (default: the source's input example)")
    p.add_argument("--force", action="store_true", help="export again even if this export exists")
    p.add_argument("--export-config", default=None, metavar="JSON",
                   help="an export config (ExportConfig.to_dict() as a JSON file) overriding the one saved with the "
                   "source by log_model(export_config=...); see docs/custom-export-config.md")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "validate", parents=[store],
        help="re-validate a registered variant against its source version on new data",
        description="Serve the variant and its source version (its tfexport.source tag) on the rows of --data "
        "and check the task's agreement metric; with --tag, record the outcome on the version "
        "(tfexport.validation passed or failed, and the tfexport.data_* and tfexport.agreement* tags). "
        "promote refuses a version whose last recorded validation failed. Exit code 1 when it fails.",
    )
    p.add_argument("model_uri", help="e.g. models:/sentiment/2 or models:/sentiment@production")
    p.add_argument("--data", required=True, metavar="PATH",
                   help="a .csv, .parquet, .jsonl or .txt file with the task's request columns")
    p.add_argument("--min-agreement", type=float, default=None,
                   help="quantised variants: the agreement required (default: the one the export recorded)")
    p.add_argument("--tag", action="store_true", help="record the outcome as tags on the version")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("list", parents=[store], help="the versions (variants) of a registered model, as a table")
    p.add_argument("name", help=_NAME_HELP)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("promote", parents=[store], help="point an alias at a version whose validation passed")
    p.add_argument("name", help=_NAME_HELP)
    p.add_argument("version", help="the version number to point the alias at, e.g. 3")
    p.add_argument("--alias", default="production", help="the alias to move (default production)")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser(
        "policy", parents=[store],
        help="show or set the promotion policy of a registered model (its tfexport.policy.* tags)",
        description="Without --set, show the policy in force (defaults included). KEY is 'guarded' (the guarded "
        "aliases, comma-separated; default production) or ALIAS.SETTING with SETTING one of: formats (any, or e.g. "
        "onnx,torchscript), validation (passed or any), real_data (true/false), min_agreement (0..1 or none), "
        "same_task (true/false: task and label set of the version replaced). An empty VALUE restores the default.",
    )
    p.add_argument("name", help=_NAME_HELP)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="e.g. production.formats=onnx (repeatable)")
    p.set_defaults(func=cmd_policy)

    p = sub.add_parser("history", parents=[store],
                       help="the recorded alias changes of a registered model (accepted and refused)")
    p.add_argument("name", help=_NAME_HELP)
    p.add_argument("--alias", default=None, help="only this alias")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("rollback", parents=[store],
                       help="move an alias back one step in its history, through the policy")
    p.add_argument("name", help=_NAME_HELP)
    p.add_argument("--alias", default="production", help="the alias to move back (default production)")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser(
        "worker", parents=[store],
        help="run exports asked for with the tfexport.request tag (registry webhooks, or --poll)",
        description="Receive MLflow registry webhooks (model_version_tag.set) on POST /webhook, or poll the "
        "registry, and export the versions whose tfexport.request tag asks for it (e.g. 'onnx', "
        "'torchscript:1x128', 'onnx,torchscript:1x32+1x128'). The outcome is written back as the "
        "tfexport.request.status tag of the version. Aliases set or removed (model_version_alias.created and "
        ".deleted webhooks, or each poll) are checked against the model's promotion policy: a refused promotion "
        "is undone and tagged on the version (tfexport.refused.<alias>).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765)")
    p.add_argument("--secret", default=None,
                   help="the webhook's HMAC secret (default: $MLFLOW_TFEXPORT_WEBHOOK_SECRET; prefer the variable)")
    p.add_argument("--tolerance", type=float, default=300,
                   help="refuse deliveries signed more than this many seconds ago (default 300)")
    p.add_argument("--certfile", default=None, help="TLS certificate (PEM): serve https")
    p.add_argument("--keyfile", default=None, help="TLS private key (PEM), if not in --certfile")
    p.add_argument("--threads", type=int, default=1, help="exports run at once (default 1)")
    p.add_argument("--poll", action="store_true", help="poll the registry for requests instead of webhooks")
    p.add_argument("--interval", type=float, default=30, help="seconds between polls (default 30)")
    p.add_argument("--once", action="store_true", help="with --poll: one pass, wait for its exports, exit")
    p.add_argument("--state-dir", default=None,
                   help="where the alias guard keeps its memory of guarded models, their policy and accepted "
                   "versions (default: $MLFLOW_TFEXPORT_STATE_DIR; unset: in the process only)")
    _worker_data_options(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("bench", parents=[store], help="measure a registered variant's latency on this machine")
    p.add_argument("model_uri", help="e.g. models:/sentiment/2 or models:/sentiment@production")
    p.add_argument("--batch-size", type=int, default=1, help="texts per request (default 1)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per text, at most the variant's max_length "
                   "(default 128)")
    p.add_argument("--iterations", type=int, default=100, help="timed requests (default 100)")
    p.add_argument("--warmup", type=int, default=5, help="untimed requests first (default 5)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (default: runtime's)")
    p.add_argument("--tag", action="store_true", help="record p50/p99 and the machine as tags on the version")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the stages are the CLI's progress
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:  # tracer and exporter warnings are noise at the command line
        warnings.filterwarnings("ignore")
    if getattr(args, "trace_shape", None) is not None:
        args.trace_shape = [s for s in args.trace_shape if s.strip()] or None
    if getattr(args, "atol", None) is not None and not str(args.atol).strip():
        args.atol = None
    if getattr(args, "atol", None) is not None:
        with contextlib.suppress(ValueError):  # export() rejects a non-number with the full message
            args.atol = float(args.atol)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        store = connect(args.tracking_uri, args.registry_uri)
        try:
            return func(args)
        except Exception as exc:
            raise with_store_hint(exc, store) from exc
    except Exception as exc:  # one line unless --verbose
        if args.verbose:
            traceback.print_exc()
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        print(f"error: {next((line for line in message.splitlines() if line.strip()), type(exc).__name__)}",
              file=sys.stderr)
        return 1


def _entry() -> Any:  # pragma: no cover
    sys.exit(main())
