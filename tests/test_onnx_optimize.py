"""ORT transformer-graph optimisation and int8 quantisation as ONNX export options (the int8 modes and their
options in detail: tests/test_quantize.py)."""

from __future__ import annotations

from typing import Any, List

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

import mlflow_tfexport
from mlflow_tfexport.cli.main import main as cli_main
from mlflow_tfexport.constants import Tag
from mlflow_tfexport.errors import ExportError, ValidationFailedError
from mlflow_tfexport.tasks import TASKS
from mlflow_tfexport.validation import quantized

TEXTS = ["I loved this film, the plot was great.", "dull", "It was not good, it was the worst film of the city."]


@pytest.fixture
def source(tracking_uri: str, tiny_model: Any) -> str:
    model, tok = tiny_model("text-classification", "bert")
    with mlflow.start_run():
        mlflow.tfexport.log_model(model, tokenizer=tok, name="model", registered_model_name="sentiment")
    return "sentiment"


def _versions(name: str) -> List[str]:
    return sorted(str(v.version) for v in MlflowClient().search_model_versions(f"name='{name}'"))


@pytest.mark.integration
def test_optimized_export_fuses_validates_and_predicts_like_the_source(source: str) -> None:
    result = mlflow_tfexport.export(f"models:/{source}/1", format="onnx", optimize=True)
    tags = result.model_version.tags
    assert tags[Tag.VALIDATION] == "passed" and float(tags[Tag.MAX_ABS_DIFF]) <= 1e-4
    fused = tags[Tag.OPTIMIZED]
    assert fused.startswith("ort-transformers:")
    assert "Attention=" in fused and "SkipLayerNormalization=" in fused
    assert Tag.QUANTIZED not in tags
    # The saved graph holds the fused contrib operators.
    import onnx

    path = mlflow.artifacts.download_artifacts(result.model_uri)
    ops = {n.op_type for n in onnx.load(f"{path}/model.onnx").graph.node}
    assert "Attention" in ops and "SkipLayerNormalization" in ops
    src = mlflow.pyfunc.load_model(f"models:/{source}/1").predict(TEXTS)
    opt = mlflow.pyfunc.load_model(result.model_uri).predict(TEXTS)
    assert list(src["label"]) == list(opt["label"])
    np.testing.assert_allclose(src["score"], opt["score"], atol=1e-4)


@pytest.mark.integration
def test_int8_export_records_label_agreement(source: str) -> None:
    result = mlflow_tfexport.export(f"models:/{source}/1", format="onnx", quantize="int8")
    tags = result.model_version.tags
    assert tags[Tag.QUANTIZED] == "int8"
    assert tags[Tag.QUANTIZE_PER_CHANNEL] == "true"  # the default int8: weights per channel
    assert tags[Tag.VALIDATION] == "passed"
    # On random tokens the agreement is a floor against broken graphs; the gate is the check on real rows.
    assert quantized.SYNTHETIC_MIN_AGREEMENT <= float(tags[Tag.LABEL_AGREEMENT]) <= 1.0
    assert tags[Tag.MIN_AGREEMENT] == f"{quantized.SYNTHETIC_MIN_AGREEMENT:g}"
    assert float(tags[Tag.MAX_ABS_DIFF]) >= 0.0
    assert tags[Tag.VALIDATED_SHAPE] == "3x23,16x31,16x64"
    assert result.report is not None
    assert result.report.extra["label_agreement"]["logits"] >= quantized.SYNTHETIC_MIN_AGREEMENT
    assert "label agreement" in result.report.to_text()
    out = mlflow.pyfunc.load_model(result.model_uri).predict(TEXTS)
    assert list(out.columns) == ["label", "score"] and len(out) == 3


@pytest.mark.integration
def test_optimized_and_quantized_together(source: str) -> None:
    result = mlflow_tfexport.export(f"models:/{source}/1", format="onnx", optimize=True, quantize="int8")
    tags = result.model_version.tags
    assert tags[Tag.OPTIMIZED].startswith("ort-transformers:") and tags[Tag.QUANTIZED] == "int8"


@pytest.mark.integration
def test_failing_agreement_registers_nothing(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quantized, "label_agreement", lambda spec, task, ref, got, mask: (1, 2))
    before = _versions(source)
    with pytest.raises(ValidationFailedError, match=r"label agreement .*0\.500.*< min 0\.8"):
        mlflow_tfexport.export(f"models:/{source}/1", format="onnx", quantize="int8")
    assert _versions(source) == before


@pytest.mark.integration
def test_agreement_threshold_is_an_option(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # 0.75 on random tokens: below the synthetic floor (0.8), above a min_agreement of 0.7.
    monkeypatch.setattr(quantized, "label_agreement", lambda spec, task, ref, got, mask: (3, 4))
    with pytest.raises(ValidationFailedError):
        mlflow_tfexport.export(f"models:/{source}/1", format="onnx", quantize="int8")
    result = mlflow_tfexport.export(f"models:/{source}/1", format="onnx", quantize="int8", min_agreement=0.7)
    assert result.model_version.tags[Tag.LABEL_AGREEMENT] == "0.7500"
    assert result.model_version.tags[Tag.MIN_AGREEMENT] == "0.7"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"quantize": "int4"}, "quantize='int4' is not supported"),
        ({"quantize": "int8", "min_agreement": 1.5}, "min_agreement must be a number in"),
        ({"min_agreement": 0.9}, "min_agreement applies to quantised exports only"),
    ],
)
def test_bad_options_are_rejected(source: str, kwargs: Any, match: str) -> None:
    before = _versions(source)
    with pytest.raises(ExportError, match=match):
        mlflow_tfexport.export(f"models:/{source}/1", format="onnx", **kwargs)
    assert _versions(source) == before


@pytest.mark.integration
def test_cli_optimize_and_quantize(source: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["export", f"models:/{source}/1", "--optimize", "--quantize", "int8"]) == 0
    assert "label agreement" in capsys.readouterr().out
    tags = MlflowClient().get_model_version(source, "2").tags
    assert tags[Tag.QUANTIZED] == "int8" and tags[Tag.OPTIMIZED].startswith("ort-transformers:")


def test_agreement_rules() -> None:
    from mlflow_tfexport.tasks import OutputSpec

    mask = np.array([[1, 1, 0], [1, 1, 1]])
    row = OutputSpec("logits", {0: "batch"})
    assert quantized.agreement(row, TASKS["text-classification"].agreement, np.array([[1.0, 0.0], [0.0, 1.0]]),
                               np.array([[0.9, 0.1], [0.6, 0.4]]), mask) == (1, 2)
    seq = OutputSpec("start_logits", {0: "batch", 1: "sequence"})
    # The padded position never wins, even when its logit is the highest.
    assert quantized.agreement(seq, TASKS["question-answering"].agreement,
                               np.array([[0.0, 1.0, 9.0], [3.0, 0.0, 0.0]]),
                               np.array([[0.0, 2.0, -9.0], [0.0, 3.0, 0.0]]), mask) == (1, 2)
    tok = OutputSpec("logits", {0: "batch", 1: "sequence"})
    ref = np.zeros((2, 3, 2))
    ref[..., 0] = 1.0
    got = ref.copy()
    got[1, 2] = [0.0, 1.0]
    assert quantized.agreement(tok, TASKS["token-classification"].agreement, ref, got, mask) == (4, 5)
