"""``mlflow-tfexport bench``: latency of a registered variant, optionally recorded as version tags."""

from __future__ import annotations

from typing import Any

import mlflow
import pytest
from mlflow import MlflowClient

import mlflow_tfexport
from mlflow_tfexport import bench
from mlflow_tfexport.cli.main import main as cli_main
from mlflow_tfexport.constants import Tag

#: Every test here exports a model or starts a process: not in the fast tier (make test-fast).
pytestmark = pytest.mark.integration


@pytest.fixture
def onnx_version(tracking_uri: str, tiny_model: Any) -> str:
    model, tok = tiny_model("text-classification", "bert")
    with mlflow.start_run():
        mlflow.tfexport.log_model(model, tokenizer=tok, name="model", registered_model_name="sentiment")
    return str(mlflow_tfexport.export("models:/sentiment/1", format="onnx").model_version.version)


def test_bench_measures_a_variant(onnx_version: str) -> None:
    result = bench.bench(f"models:/sentiment/{onnx_version}", batch_size=2, seq_len=16, iterations=5, warmup=1)
    assert result.batch_size == 2 and result.iterations == 5
    assert 14 <= result.seq_len <= 20  # as the variant's tokenizer counts
    assert 0 < result.p50_ms <= result.p99_ms
    assert "cores" in result.machine and "CPUExecutionProvider" in result.machine


def test_cli_bench_with_tag_records_on_the_version(onnx_version: str, capsys: pytest.CaptureFixture[str]) -> None:
    MlflowClient().set_registered_model_alias("sentiment", "production", onnx_version)
    code = cli_main(["bench", "models:/sentiment@production", "--batch-size", "4", "--seq-len", "12",
                     "--iterations", "3", "--warmup", "1", "--tag"])
    assert code == 0
    out = capsys.readouterr().out
    assert "p50" in out and "p99" in out and f"models:/sentiment/{onnx_version}" in out
    tags = MlflowClient().get_model_version("sentiment", onnx_version).tags
    assert float(tags[Tag.BENCH_P50_MS]) > 0 and float(tags[Tag.BENCH_P99_MS]) >= float(tags[Tag.BENCH_P50_MS])
    assert tags[Tag.BENCH_BATCH] == "4" and tags[Tag.BENCH_ITERATIONS] == "3"
    assert "cores" in tags[Tag.BENCH_MACHINE]
    # The source version is untouched.
    assert Tag.BENCH_P50_MS not in MlflowClient().get_model_version("sentiment", "1").tags


def test_cli_bench_without_tag_records_nothing(onnx_version: str) -> None:
    assert cli_main(["bench", f"models:/sentiment/{onnx_version}", "--iterations", "2", "--seq-len", "8"]) == 0
    tags = MlflowClient().get_model_version("sentiment", onnx_version).tags
    assert not any(k.startswith("tfexport.bench.") for k in tags)


def test_tag_needs_a_registered_version(onnx_version: str, capsys: pytest.CaptureFixture[str]) -> None:
    run_uri = MlflowClient().get_model_version("sentiment", onnx_version).source
    assert cli_main(["bench", run_uri, "--iterations", "2", "--tag"]) == 1
    assert "--tag records figures on a registered version" in capsys.readouterr().err


def test_bad_sizes_are_rejected(onnx_version: str) -> None:
    with pytest.raises(mlflow_tfexport.errors.TfexportError, match="batch_size >= 1"):
        bench.bench(f"models:/sentiment/{onnx_version}", batch_size=0)
