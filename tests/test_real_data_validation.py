"""Validation on real data: the source and the variant, both served end to end, answer the user's rows.

Against a real SQLite registry: the tags and the description that record it, the dataset input of the
export run, the input-example fallback, "synthetic only", a broken variant refused with the metric, the
value and the threshold, ``mlflow-tfexport validate --tag`` and ``promote``; and, at unit level, every
agreement metric, padded positions of static variants and the ONNX check at the maximum length.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from tiny import tiny

import mlflow_tfexport
from mlflow_tfexport.cli.main import main as cli_main
from mlflow_tfexport.constants import FlavorKey, Format, Tag
from mlflow_tfexport.errors import TfexportError, ValidationFailedError
from mlflow_tfexport.export.api import export_to_directory
from mlflow_tfexport.export.options import SourceModel
from mlflow_tfexport.registry import promote
from mlflow_tfexport.tasks import BATCH, SEQUENCE, TASKS, AgreementMetric, get_task
from mlflow_tfexport.validation import agreement, revalidate
from mlflow_tfexport.validation import run as validation_run
from mlflow_tfexport.validation.compare import compare, real_values
from mlflow_tfexport.validation.data import load_validation_data
from mlflow_tfexport.validation.report import AgreementCheck, OutputCheck, ValidationReport, raise_for_failures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REVIEWS = os.path.join(ROOT, "examples", "data", "reviews.csv")
NAME = "rd-sentiment"
TEXTS = ["I loved this film, the plot was great.", "dull", "It was not good, it was the worst film of the city.",
         "Paris is the capital of France.", "The actors were really very good.", "I hated this movie."]


def _versions(name: str = NAME) -> List[str]:
    return sorted((str(v.version) for v in MlflowClient().search_model_versions(f"name='{name}'")), key=int)


@pytest.fixture(scope="module")
def registry(module_registry: str) -> Dict[str, Any]:
    """A text-classification source (v1) and its ONNX export validated on examples/data/reviews.csv."""
    model, tok = tiny("text-classification")
    with mlflow.start_run():
        mlflow_tfexport.log_model(model, tokenizer=tok, registered_model_name=NAME)
    result = mlflow_tfexport.export(f"models:/{NAME}/1", validation_data=REVIEWS)
    return {"uri": module_registry, "result": result}


def _flip_labels(monkeypatch: pytest.MonkeyPatch, module: Any) -> None:
    """Break the variant as served: every other row answers another label (the source stays as it is)."""
    real = module.pyfunc_for

    class Flipped:
        def __init__(self, model: Any) -> None:
            self.model = model

        def predict(self, data: Any, params: Any = None) -> Any:
            out = self.model.predict(data, params)
            out["label"] = [("NEUTRAL" if label != "NEUTRAL" else "POSITIVE") if i % 2 == 0 else label
                            for i, label in enumerate(out["label"])]
            return out

    def pyfunc_for(path: str, conf: Dict[str, Any], runner: Any) -> Any:
        model = real(path, conf, runner)
        return model if conf[FlavorKey.FORMAT] == Format.TRANSFORMERS else Flipped(model)

    monkeypatch.setattr(module, "pyfunc_for", pyfunc_for)


# --------------------------------------------------------------------------- export on real data


@pytest.mark.integration
def test_export_with_a_csv_file_records_tags_description_and_dataset_input(registry: Dict[str, Any]) -> None:
    result = registry["result"]
    data = load_validation_data(REVIEWS, get_task("text-classification"))
    assert data is not None
    tags = MlflowClient().get_model_version(NAME, str(result.model_version.version)).tags
    assert tags[Tag.VALIDATION] == "passed"
    assert tags[Tag.DATA_ROWS] == str(data.rows) == "332"
    assert tags[Tag.DATA_DIGEST] == data.digest
    assert tags[Tag.DATA_ORIGIN] == "file reviews.csv"
    assert tags[Tag.AGREEMENT_METRIC] == AgreementMetric.LABEL == "label_agreement"
    assert tags[Tag.AGREEMENT] == "1.0000" and tags[Tag.AGREEMENT_THRESHOLD] == "1"
    description = result.model_version.description
    assert "**Real data** (✓): 332 rows from file reviews.csv" in description
    assert "label_agreement: **1.0000**, fp32 requires >= 1" in description and "max_score_diff" in description
    assert result.report.agreement is not None and result.report.agreement.passed
    assert "✓ real data: label_agreement 1.0000 on 332 rows" in result.report.to_text()
    # The export run shows which data validated it: a dataset input, a param and a metric.
    run = mlflow.get_run(result.run_id)
    (logged,) = run.inputs.dataset_inputs
    assert logged.dataset.digest == data.digest and logged.dataset.name == "reviews"
    assert {t.key: t.value for t in logged.tags}["mlflow.data.context"] == "validation"
    assert run.data.params["validation_data"] == "file reviews.csv"
    assert run.data.metrics["label_agreement"] == 1.0


@pytest.mark.integration
def test_onnx_is_also_checked_at_the_maximum_length(registry: Dict[str, Any]) -> None:
    result = registry["result"]
    assert (2, 64) in result.report.shapes  # tiny BERT: max_length 64
    assert result.model_version.tags[Tag.VALIDATED_SHAPE] == "2x64,3x23"
    assert "| `logits`&emsp; | 2x64&emsp; |" in result.model_version.description
    assert "logits at input 2x64" in result.report.to_text()


@pytest.mark.integration
def test_the_data_is_part_of_the_export_key(registry: Dict[str, Any]) -> None:
    as_list = mlflow_tfexport.export(f"models:/{NAME}/1", validation_data=TEXTS)
    assert as_list.created and as_list.model_version.tags[Tag.DATA_ORIGIN] == "list"
    assert as_list.model_version.tags[Tag.DATA_ROWS] == "6"
    # The same rows as a DataFrame (with a column the task does not read): same digest, same export.
    frame = pd.DataFrame({"text": TEXTS, "label": ["x"] * len(TEXTS)})
    again = mlflow_tfexport.export(f"models:/{NAME}/1", validation_data=frame)
    assert not again.created and again.model_version.version == as_list.model_version.version
    assert as_list.model_version.version != registry["result"].model_version.version


@pytest.mark.integration
def test_synthetic_only_without_data_or_input_example(registry: Dict[str, Any]) -> None:
    result = mlflow_tfexport.export(f"models:/{NAME}/1", opset=18)
    tags = result.model_version.tags
    assert tags[Tag.DATA_ROWS] == "0" and tags[Tag.DATA_ORIGIN] == "synthetic only"
    assert Tag.AGREEMENT not in tags and Tag.AGREEMENT_METRIC not in tags
    assert result.report.agreement is None
    assert "synthetic only: no validation data given and the source logged no input example" in (
        result.report.to_text())
    assert "**Real data**: none (synthetic only" in result.model_version.description
    assert not mlflow.get_run(result.run_id).inputs.dataset_inputs


@pytest.mark.integration
def test_the_source_input_example_is_used_without_data(registry: Dict[str, Any]) -> None:
    model, tok = tiny("text-classification")
    with mlflow.start_run():
        mlflow_tfexport.log_model(model, tokenizer=tok, registered_model_name="rd-example",
                                  input_example=["great film", "dull plot", "the worst"])
    result = mlflow_tfexport.export("models:/rd-example/1")
    tags = result.model_version.tags
    assert tags[Tag.DATA_ORIGIN] == "input example" and tags[Tag.DATA_ROWS] == "3"
    assert tags[Tag.AGREEMENT] == "1.0000"
    (logged,) = mlflow.get_run(result.run_id).inputs.dataset_inputs
    assert logged.dataset.name == "input example"


@pytest.mark.integration
def test_a_broken_variant_is_refused_naming_metric_value_and_threshold(
    registry: Dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _flip_labels(monkeypatch, validation_run)
    before = _versions()
    with pytest.raises(ValidationFailedError) as info:
        mlflow_tfexport.export(f"models:/{NAME}/1", validation_data=TEXTS, opset=16)
    message = info.value.message
    assert "real data: label_agreement 0.5000 < 1 required (fp32) on 6 rows from list" in message
    assert "3 row(s) differ, e.g. row 0 ('I loved this film, the plot was great.')" in message
    assert "Nothing was registered" in message and "An fp32 variant must give the source's answers" in message
    assert "Raise atol" not in message  # the tensor checks passed: atol is not what failed
    assert _versions() == before
    failed = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
              if r.data.params.get("opset") == "16"]
    assert failed and failed[0].info.status == "FAILED" and failed[0].inputs.dataset_inputs


@pytest.mark.integration
def test_a_quantised_variant_below_min_agreement_names_the_options_that_apply(
    registry: Dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    _flip_labels(monkeypatch, validation_run)
    before = _versions()
    with pytest.raises(ValidationFailedError) as info:
        mlflow_tfexport.export(f"models:/{NAME}/1", quantize="int8", validation_data=TEXTS)
    message = info.value.message
    assert "label_agreement 0.5000 < 0.98 required (int8)" in message
    assert "min_agreement=0.5 (CLI: --min-agreement 0.5)" in message and "export without quantize" in message
    assert "Raise atol" not in message
    assert _versions() == before


@pytest.mark.integration
def test_export_to_directory_validates_on_data(tmp_path: Any, tiny_model: Any) -> None:
    model, tok = tiny_model("text-classification")
    mlflow_tfexport.save_model(model, str(tmp_path / "src"), tokenizer=tok)
    conf, report = export_to_directory(str(tmp_path / "src"), str(tmp_path / "out"), validation_data=TEXTS)
    assert report.passed and report.agreement is not None and report.agreement.rows == 6
    assert report.tags[Tag.AGREEMENT] == "1.0000"
    with open(tmp_path / "out" / "validation.json") as f:
        assert '"metric": "label_agreement"' in f.read()


# --------------------------------------------------------------------------- validate --tag, promote


@pytest.mark.integration
def test_cli_export_validate_tag_and_promote_refusal(
    registry: Dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["export", f"models:/{NAME}/1", "--opset", "15", "--validation-data", REVIEWS]) == 0
    out = capsys.readouterr().out
    assert "✓ real data: label_agreement 1.0000 on 332 rows from file reviews.csv" in out
    version = _versions()[-1]
    uri = f"models:/{NAME}/{version}"
    # Re-validated on other rows: passes, and --tag records it.
    assert cli_main(["validate", uri, "--data", REVIEWS, "--tag"]) == 0
    out = capsys.readouterr().out
    assert f"{uri} against its source models:/{NAME}/1" in out and "✓ real data: label_agreement 1.0000" in out
    tags = MlflowClient().get_model_version(NAME, version).tags
    assert tags[Tag.VALIDATION] == "passed" and tags[Tag.DATA_ROWS] == "332"
    # A variant that now answers differently: exit 1, "failed" recorded, promote refuses.
    _flip_labels(monkeypatch, revalidate)
    assert cli_main(["validate", uri, "--data", REVIEWS, "--tag"]) == 1
    captured = capsys.readouterr()
    assert "✗ real data: label_agreement 0.5" in captured.out
    assert f"error: validation of {uri} failed: real data: label_agreement 0.5" in captured.err
    tags = MlflowClient().get_model_version(NAME, version).tags
    assert tags[Tag.VALIDATION] == "failed" and tags[Tag.AGREEMENT].startswith("0.5")
    with pytest.raises(TfexportError, match=r"'failed', not 'passed' \(label_agreement 0\.5\d+, >= 1 required, "
                       r"on 332 rows from file reviews.csv\)"):
        promote(NAME, version, "production")
    assert cli_main(["promote", NAME, version]) == 1
    assert "Refusing to point @production" in capsys.readouterr().err
    assert MlflowClient().get_registered_model(NAME).aliases == {}


@pytest.mark.integration
def test_validate_refuses_what_is_not_an_exported_variant(
    registry: Dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["validate", f"models:/{NAME}/1", "--data", REVIEWS]) == 1
    assert "is not an exported variant" in capsys.readouterr().err
    assert cli_main(["validate", "runs:/abc/model", "--data", REVIEWS, "--tag"]) == 1
    assert "--tag records the outcome on a registered version" in capsys.readouterr().err


def test_mlproject_export_takes_validation_data() -> None:
    with open(os.path.join(ROOT, "MLproject")) as f:
        entry = yaml.safe_load(f)["entry_points"]["export"]
    assert entry["parameters"]["validation_data"] == {"type": "string", "default": ""}
    assert "--validation-data {validation_data}" in entry["command"]


# --------------------------------------------------------------------------- metrics, thresholds, advice


def test_every_task_names_a_known_metric_and_thresholds() -> None:
    for spec in TASKS.values():
        assert spec.agreement_metric in agreement.METRICS, spec.name
        assert 0 < spec.quantized_min_agreement <= spec.fp32_agreement <= 1
        assert agreement.threshold_for(spec, None, 0.5) == spec.fp32_agreement  # min_agreement: quantised only
        assert agreement.threshold_for(spec, "int8", None) == spec.quantized_min_agreement
        assert agreement.threshold_for(spec, "int8", 0.8) == 0.8
    assert get_task("feature-extraction").fp32_agreement == pytest.approx(1 - 1e-5)


def test_label_span_and_top1_metrics() -> None:
    src = pd.DataFrame({"label": ["A", "B", "A"], "score": [0.9, 0.6, 0.7]})
    got = pd.DataFrame({"label": ["A", "A", "A"], "score": [0.85, 0.5, 0.7]})
    m = agreement.label_agreement(src, got, 1.0)
    assert m.value == pytest.approx(2 / 3) and m.details["max_score_diff"] == pytest.approx(0.05)
    assert m.differing == [(1, "source 'B' (0.6), variant 'A' (0.5)")]
    qa = pd.DataFrame({"answer": ["Paris", "8"], "score": [0.5, 0.4], "start": [0, 10], "end": [5, 11]})
    moved = qa.assign(start=[0, 12], end=[5, 13])
    assert agreement.span_agreement(qa, moved, 1.0).value == 0.5
    fm = pd.DataFrame({"token_str": ["paris", "good"], "score": [0.3, 0.2], "token": [7, 9]})
    assert agreement.top1_agreement(fm, fm.assign(token=[7, 10], token_str=["paris", "bad"]), 1.0).value == 0.5


def test_token_cosine_exact_and_detection_metrics() -> None:
    src = [[{"index": 1, "entity": "B-LOC"}, {"index": 2, "entity": "I-LOC"}], []]
    got = [[{"index": 1, "entity": "B-LOC"}, {"index": 3, "entity": "B-PER"}], []]
    m = agreement.token_agreement(src, got, 1.0)
    assert m.value == pytest.approx(1 / 3) and m.differing == [(0, "token 2: source 'I-LOC', variant 'O'")]
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    b = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    cos = agreement.cosine(a, b, 0.99)
    assert cos.value == pytest.approx(np.sqrt(0.5)) and cos.details["mean_cosine"] == pytest.approx(
        (2 + np.sqrt(0.5)) / 3)
    assert [i for i, _ in cos.differing] == [1]
    assert agreement.exact_match(["a b", "c"], ["a b", "d"], 1.0).value == 0.5
    box = {"xmin": 0, "ymin": 0, "xmax": 10, "ymax": 10}
    shifted = {"xmin": 5, "ymin": 0, "xmax": 15, "ymax": 10}  # IoU 1/3
    det = agreement.detection_agreement(
        [[{"label": "cat", "box": box, "score": 0.9}], [], [{"label": "dog", "box": box, "score": 0.8}]],
        [[{"label": "cat", "box": box, "score": 0.9}], [], [{"label": "dog", "box": shifted, "score": 0.8}]],
        1.0,
    )
    assert det.value == 0.5 and det.details["mean_iou"] == 1.0 and [i for i, _ in det.differing] == [2]


def test_a_response_of_the_wrong_length_is_a_failed_check() -> None:
    data = load_validation_data(TEXTS[:2], get_task("text-classification"))
    assert data is not None

    class Fixed:
        def __init__(self, rows: int) -> None:
            self.rows = rows

        def predict(self, request: Any, params: Any = None) -> Any:
            return pd.DataFrame({"label": ["A"] * self.rows, "score": [0.5] * self.rows})

    check = agreement.measure(Fixed(2), Fixed(1), data, get_task("text-classification"), threshold=1.0)
    assert not check.passed and "1 answer rows for 2 input rows" in check.problem
    assert check.tags()[Tag.AGREEMENT] == "n/a"


def test_failure_advice_depends_on_the_failing_check() -> None:
    def failed(mode: str) -> AgreementCheck:
        return AgreementCheck("min_cosine", 0.951, 0.99, False, 10, "list", "abc", mode=mode,
                              advice=agreement.advice("min_cosine", 0.951, mode))

    quantized = ValidationReport(atol=1e-4, agreement=failed("int8"))
    quantized.checks.append(OutputCheck("x", (1,), (1,), 0.5, 1e-4, (1, 2), True))
    with pytest.raises(ValidationFailedError) as info:
        raise_for_failures(quantized, "it")
    assert "min_agreement=0.95 (CLI: --min-agreement 0.95)" in info.value.message
    assert "Raise atol" not in info.value.message
    fp32 = ValidationReport(atol=1e-4, extra={"format": "onnx"})
    fp32.checks.append(OutputCheck("x", (1,), (1,), 5e-3, 1e-4, (1, 2), False, "max abs diff 0.005 > atol 0.0001"))
    with pytest.raises(ValidationFailedError, match="Raise atol.*another opset/exporter"):
        raise_for_failures(fp32, "it")
    static = ValidationReport(atol=1e-4, extra={"format": "torchscript"})
    static.checks.append(OutputCheck("x", (1,), (1,), 5e-3, 1e-4, (1, 2), False, "max abs diff 0.005 > atol 0.0001"))
    with pytest.raises(ValidationFailedError) as info:
        raise_for_failures(static, "it")
    assert "real positions only" in info.value.message and "opset" not in info.value.message
    for fmt in ("onnx", "torchscript"):  # 0.6 is a wrong result: raising atol would hide it
        large = ValidationReport(atol=1e-4, extra={"format": fmt})
        large.checks.append(OutputCheck("x", (1,), (1,), 0.6, 1e-4, (1, 2), False, "max abs diff 0.6 > atol 0.0001"))
        with pytest.raises(ValidationFailedError) as info:
            raise_for_failures(large, "it")
        assert "0.6 is a real mismatch" in info.value.message and "not a tolerance issue" in info.value.message
        assert "Raise atol" not in info.value.message and "opset" not in info.value.message
    tensor_int8 = ValidationReport(atol=1e-4, extra={"quantized": "int8"})
    tensor_int8.checks.append(OutputCheck("x", (1,), (1,), 0.5, 1e-4, (1, 2), False, "agreement 0.8 < min 0.9"))
    with pytest.raises(ValidationFailedError) as info:
        raise_for_failures(tensor_int8, "it")
    assert "--min-agreement" in info.value.message and "Raise atol" not in info.value.message


# --------------------------------------------------------------------------- tensor checks


def test_padded_positions_of_a_static_variant_are_not_compared() -> None:
    axes = {"last_hidden_state": {0: BATCH, 1: SEQUENCE}, "logits": {0: BATCH}}
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    reference = {"last_hidden_state": np.zeros((2, 3, 4)), "logits": np.zeros((2, 2))}
    exported = {"last_hidden_state": np.zeros((2, 3, 4)), "logits": np.zeros((2, 2))}
    exported["last_hidden_state"][1, 2] = 0.02  # a padded position (DeBERTa-style)
    everywhere = compare(reference, exported, list(axes), 1e-4, (2, 3))
    assert [c.passed for c in everywhere] == [False, True]
    real = compare(reference, exported, list(axes), 1e-4, (2, 3), mask=mask, axes=axes)
    assert [c.passed for c in real] == [True, True] and real[0].max_abs_diff == 0.0
    exported["last_hidden_state"][1, 1] = 0.02  # a real position still counts
    assert not compare(reference, exported, list(axes), 1e-4, (2, 3), mask=mask, axes=axes)[0].passed
    # Sequence-first layouts are handled by the axes, not by position.
    assert real_values(np.arange(6).reshape(3, 2), {0: SEQUENCE, 1: BATCH}, mask).tolist() == [0, 2, 4, 1, 3]


def test_max_length_shape_only_for_dynamic_text_variants() -> None:
    spec = get_task("text-classification")
    source = SourceModel(None, spec, {FlavorKey.MAX_LENGTH: 512}, "")
    onnx = {FlavorKey.FORMAT: Format.ONNX, FlavorKey.MAX_LENGTH: 512}
    assert validation_run.with_max_length([(3, 23)], source, onnx) == [(3, 23), (2, 512)]
    assert validation_run.with_max_length([(3, 23), (16, 512)], source, onnx) == [(3, 23), (16, 512)]
    static = {FlavorKey.FORMAT: Format.TORCHSCRIPT, FlavorKey.MAX_LENGTH: 128}
    assert validation_run.with_max_length([(1, 128)], source, static) == [(1, 128)]
    image = SourceModel(None, get_task("image-classification"), {FlavorKey.MAX_LENGTH: 512}, "")
    assert validation_run.with_max_length([(3, 32)], image, onnx) == [(3, 32)]
    huge = {FlavorKey.FORMAT: Format.ONNX, FlavorKey.MAX_LENGTH: 131072}
    assert validation_run.with_max_length([(3, 23)], source, huge)[-1] == (2, validation_run.MAX_CHECKED_LENGTH)
