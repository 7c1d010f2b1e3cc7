"""ONNX export as validated, tagged registry versions — against a real SQLite registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Dict, List

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

import mlflow_tfexport
from mlflow_tfexport.cli.main import main as cli_main
from mlflow_tfexport.constants import Tag
from mlflow_tfexport.errors import ExportError, NotATfexportModelError, TfexportError, ValidationFailedError
from mlflow_tfexport.export import api as exporting

TEXTS = ["I loved this film, the plot was great.", "dull", "It was not good, it was the worst film of the city."]
#: No module-scoped fixture (every test logs its own source): ``make test`` spreads the tests over its workers.
SPREAD_OVER_WORKERS = True


def _log(tiny_model: Any, task: str = "text-classification", arch: str = "bert", name: str = "sentiment") -> str:
    model, tok = tiny_model(task, arch)
    with mlflow.start_run():
        mlflow.tfexport.log_model(model, tokenizer=tok, name="model", registered_model_name=name)
    return name


def _registry_state(name: str) -> List[tuple]:
    client = MlflowClient()
    versions = client.search_model_versions(f"name='{name}'")
    return sorted((str(v.version), tuple(sorted((v.tags or {}).items()))) for v in versions)


@pytest.fixture
def source(tracking_uri: str, tiny_model: Any) -> str:
    return _log(tiny_model)


@pytest.mark.integration
def test_export_registers_a_tagged_validated_version(source: str) -> None:
    result = mlflow_tfexport.export(f"models:/{source}/1", format="onnx", opset=17)
    assert result.created and str(result.model_version.version) == "2"
    assert result.model_uri == f"models:/{source}/2"
    mv = MlflowClient().get_model_version(source, "2")
    tags = mv.tags
    assert tags[Tag.FORMAT] == "onnx"
    assert tags[Tag.TASK] == "text-classification"
    assert tags[Tag.OPSET] == "17"
    assert tags[Tag.TRACE_SHAPE] == "dynamic"
    assert tags[Tag.VALIDATED_SHAPE] == "2x64,3x23"  # 2x64: the model's maximum length
    assert tags[Tag.ATOL] == "0.0001"
    assert float(tags[Tag.MAX_ABS_DIFF]) <= 1e-4
    assert tags[Tag.VALIDATION] == "passed"
    assert tags[Tag.SOURCE] == f"models:/{source}/1"
    assert len(tags[Tag.EXPORT_KEY]) == 32
    assert "torch==" in tags[Tag.VERSIONS] and "onnxruntime==" in tags[Tag.VERSIONS]
    assert "| `logits`&emsp; | 3x23&emsp; |" in mv.description and "✓" in mv.description
    assert "| `logits`&emsp; | 2x64&emsp; |" in mv.description
    # No validation data and no input example: the report says so.
    assert tags[Tag.DATA_ROWS] == "0" and tags[Tag.DATA_ORIGIN] == "synthetic only"
    assert "**Real data**: none (synthetic only" in mv.description
    # The report is data, also stored as a JSON artifact of the export run.
    assert result.report is not None and result.report.passed
    run = mlflow.get_run(result.run_id)
    assert run.data.params["format"] == "onnx" and run.data.params["opset"] == "17"
    assert run.data.params["atol"] == "0.0001"
    assert run.data.metrics["max_abs_diff"] == pytest.approx(result.report.max_abs_diff)
    assert run.data.metrics["export_seconds"] > 0
    assert run.data.tags[Tag.SOURCE] == f"models:/{source}/1"
    report = json.loads(mlflow.artifacts.load_text(f"runs:/{result.run_id}/validation.json"))
    assert report["passed"] and report["checks"][0]["name"] == "logits"
    # The source is untouched.
    src = MlflowClient().get_model_version(source, "1")
    assert src.tags == {Tag.FORMAT: "transformers", Tag.TASK: "text-classification"}


@pytest.mark.integration
def test_onnx_variant_predicts_like_the_source(source: str) -> None:
    result = mlflow_tfexport.export(f"models:/{source}/1")
    src = mlflow.pyfunc.load_model(f"models:/{source}/1").predict(TEXTS)
    onx = mlflow.pyfunc.load_model(result.model_uri).predict(TEXTS)
    assert list(src["label"]) == list(onx["label"])
    np.testing.assert_allclose(src["score"], onx["score"], atol=1e-4)


@pytest.mark.integration
def test_export_is_idempotent_unless_forced(source: str) -> None:
    first = mlflow_tfexport.export(f"models:/{source}/1")
    again = mlflow_tfexport.export(f"models:/{source}/1")
    assert not again.created and str(again.model_version.version) == str(first.model_version.version)
    # the alias URI resolves to the same source, hence the same export
    MlflowClient().set_registered_model_alias(source, "champion", "1")
    assert str(mlflow_tfexport.export(f"models:/{source}@champion").model_version.version) == "2"
    forced = mlflow_tfexport.export(f"models:/{source}/1", force=True)
    assert forced.created and str(forced.model_version.version) == "3"
    other = mlflow_tfexport.export(f"models:/{source}/1", opset=18)
    assert other.created and str(other.model_version.version) == "4"


@pytest.mark.integration
def test_export_into_another_registered_model(source: str) -> None:
    result = mlflow_tfexport.export(f"models:/{source}/1", registered_model_name="sentiment-onnx")
    assert result.model_uri == "models:/sentiment-onnx/1"
    assert [v for v, _ in _registry_state(source)] == ["1"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"format": "tflite"}, TfexportError, "Known formats: onnx, torchscript, neuron"),
        ({"opset": 9}, ExportError, "14..20"),
        ({"opset": 21}, ExportError, "14..20"),
        ({"atol": 0}, ExportError, "positive number"),
        ({"atol": -1e-3}, ExportError, "positive number"),
        ({"atol": "abc"}, ExportError, "positive number"),
        ({"registered_model_name": "bad/name"}, ExportError, "not allowed"),
        ({"registered_model_name": ""}, ExportError, "not allowed"),
        ({"trace_shape": "1x128"}, ExportError, "dynamic batch and sequence"),
    ],
)
def test_bad_options_are_rejected_and_register_nothing(
    source: str, kwargs: Dict[str, Any], error: type, match: str
) -> None:
    before = _registry_state(source)
    with pytest.raises(error, match=match):
        mlflow_tfexport.export(f"models:/{source}/1", **kwargs)
    assert _registry_state(source) == before
    assert [m.name for m in MlflowClient().search_registered_models()] == [source]


@pytest.mark.parametrize("uri", ["", "models:/does-not-exist/1", "models:/sentiment/7"])
def test_missing_model_is_a_clear_error(source: str, uri: str) -> None:
    before = _registry_state(source)
    with pytest.raises(ExportError, match="model URI is required|Cannot find model"):
        mlflow_tfexport.export(uri)
    assert _registry_state(source) == before


@pytest.mark.integration
def test_a_model_of_another_flavor_is_rejected(source: str) -> None:
    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context: Any, model_input: Any, params: Any = None) -> Any:
            return model_input

    with mlflow.start_run():
        mlflow.pyfunc.log_model(name="echo", python_model=Echo(), registered_model_name="echo")
    with pytest.raises(NotATfexportModelError, match="not a tfexport model"):
        mlflow_tfexport.export("models:/echo/1")
    assert [v for v, _ in _registry_state("echo")] == ["1"]


@pytest.mark.integration
def test_exporting_a_variant_again_is_refused(source: str) -> None:
    mlflow_tfexport.export(f"models:/{source}/1")
    with pytest.raises(ExportError, match="already an exported variant"):
        mlflow_tfexport.export(f"models:/{source}/2")


def test_a_task_the_architecture_cannot_do_is_rejected_at_log_time(tracking_uri: str, tiny_model: Any) -> None:
    model, tok = tiny_model("text-classification")
    with mlflow.start_run(), pytest.raises(TfexportError, match="cannot do task 'question-answering'"):
        mlflow.tfexport.log_model(model, tokenizer=tok, task="question-answering", registered_model_name="x")
    assert MlflowClient().search_registered_models() == []


@pytest.mark.integration
def test_validation_failure_lists_every_failing_output(tracking_uri: str, tiny_model: Any) -> None:
    name = _log(tiny_model, "question-answering", name="qa")
    before = _registry_state(name)
    with pytest.raises(ValidationFailedError) as info:
        mlflow_tfexport.export(f"models:/{name}/1", atol=1e-12)
    message = str(info.value.message)
    assert "start_logits" in message and "end_logits" in message and "> atol 1e-12" in message
    assert "Nothing was registered" in message
    assert info.value.report is not None and len(info.value.report.failures()) == 4  # 2 outputs x 3x23 and 2x64
    assert _registry_state(name) == before
    failed = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
              if r.data.tags.get(Tag.FORMAT) == "onnx"]
    assert failed and failed[0].info.status == "FAILED"


def _fail(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("injected failure")


@pytest.mark.integration
@pytest.mark.parametrize("stage", ["load", "export", "validate", "log", "register"])
def test_a_failure_at_any_stage_registers_nothing(source: str, stage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow_tfexport.export.onnx import backend as onnx_backend
    from mlflow_tfexport.flavor import variant

    targets = {
        "load": (exporting, "load_source_model"),
        "export": (onnx_backend.BACKEND, "export"),
        "validate": (exporting, "run_validation"),
        "log": (variant, "save_model"),
        "register": (MlflowClient, "create_model_version"),
    }
    obj, attr = targets[stage]
    monkeypatch.setattr(obj, attr, _fail)
    before = _registry_state(source)
    with pytest.raises(Exception, match="injected failure"):
        mlflow_tfexport.export(f"models:/{source}/1")
    assert _registry_state(source) == before
    monkeypatch.undo()
    # and the same export succeeds once the failure is gone
    assert str(mlflow_tfexport.export(f"models:/{source}/1").model_version.version) == "2"


@pytest.mark.integration
def test_onnx_variant_serves_without_torch_or_transformers(source: str, tracking_uri: str) -> None:
    result = mlflow_tfexport.export(f"models:/{source}/1")
    local = mlflow.artifacts.download_artifacts(result.model_uri)
    with open(os.path.join(local, "requirements.txt")) as f:
        requirements = f.read()
    for needed in ("onnxruntime==", "tokenizers==", "numpy==", "mlflow=="):
        assert needed in requirements
    assert "torch" not in requirements and "transformers" not in requirements
    code = (
        "import sys, json, mlflow\n"
        f"m = mlflow.pyfunc.load_model({local!r})\n"
        f"out = m.predict({TEXTS!r})\n"
        "heavy = sorted(k for k in ('torch', 'transformers') if k in sys.modules)\n"
        "print(json.dumps({'labels': list(out['label']), 'heavy': heavy}))\n"
    )
    env = {**os.environ, "MLFLOW_TFEXPORT_NO_HOOK": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=120)
    payload = json.loads(out.stdout.strip().splitlines()[-1])
    assert payload["heavy"] == []
    assert payload["labels"] == list(mlflow.pyfunc.load_model(f"models:/{source}/1").predict(TEXTS)["label"])


@pytest.mark.integration
def test_onnx_runtime_options_via_model_config(source: str) -> None:
    result = mlflow_tfexport.export(f"models:/{source}/1")
    model = mlflow.pyfunc.load_model(
        result.model_uri,
        model_config={"intra_op_num_threads": 1, "graph_optimization_level": "basic",
                      "providers": ["CPUExecutionProvider"]},
    )
    runner = model.get_raw_model()
    assert runner.describe()["providers"] == ["CPUExecutionProvider"]
    options = runner.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert str(options.graph_optimization_level).endswith("ORT_ENABLE_BASIC")
    with pytest.raises(TfexportError, match="graph_optimization_level"):
        mlflow.pyfunc.load_model(result.model_uri, model_config={"graph_optimization_level": "max"})


@pytest.mark.integration
def test_large_models_use_external_data(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow_tfexport.export.onnx import backend as onnx_backend

    monkeypatch.setattr(onnx_backend, "EXTERNAL_DATA_THRESHOLD", 0)
    result = mlflow_tfexport.export(f"models:/{source}/1")
    local = mlflow.artifacts.download_artifacts(result.model_uri)
    assert os.path.exists(os.path.join(local, "model.onnx.data"))
    assert os.path.getsize(os.path.join(local, "model.onnx")) < 100_000
    assert len(mlflow.pyfunc.load_model(result.model_uri).predict(TEXTS)) == 3


@pytest.mark.integration
def test_dynamo_exporter_is_available(source: str) -> None:
    result = mlflow_tfexport.export(f"models:/{source}/1", exporter="dynamo", opset=18)
    assert result.model_version.tags[Tag.EXPORTER] == "dynamo"
    assert result.report is not None and result.report.passed


@pytest.mark.integration
def test_cli_export_list_and_promote(source: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["export", f"models:/{source}/1", "--format", "onnx", "--opset", "17", "--atol", "1e-4"]) == 0
    out, err = capsys.readouterr()
    assert "✓ logits" in out and f"Registered models:/{source}/2" in out
    for stage in ("load", "export", "validate", "log", "register"):
        assert f"] {stage}:" in err
    assert cli_main(["export", f"models:/{source}/1"]) == 0
    assert "Already exported" in capsys.readouterr().out
    assert cli_main(["promote", source, "2", "--alias", "production"]) == 0
    capsys.readouterr()
    assert cli_main(["list", source]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["version", "format", "task", "opset", "trace", "shape", "atol", "max", "diff",
                                "validation", "aliases"]
    assert table[3].split()[:4] == ["2", "onnx", "text-classification", "17"]
    assert table[3].split()[-1] == "production"


@pytest.mark.integration
def test_cli_failures_exit_non_zero_with_one_line(source: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["export", f"models:/{source}/1", "--opset", "99"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: opset 99")
    assert cli_main(["export", f"models:/{source}/1", "--atol", "1e-30"]) == 1
    assert "Traceback" not in capsys.readouterr().err
    assert cli_main(["--verbose", "export", f"models:/{source}/1", "--format", "nope"]) == 1
    assert "Traceback" in capsys.readouterr().err
    assert [v for v, _ in _registry_state(source)] == ["1"]


@pytest.mark.integration
def test_promote_refuses_a_failed_variant(source: str) -> None:
    from mlflow_tfexport.registry import promote

    result = mlflow_tfexport.export(f"models:/{source}/1")
    MlflowClient().set_model_version_tag(source, result.model_version.version, Tag.VALIDATION, "failed")
    with pytest.raises(TfexportError, match="Refusing to point @production"):
        promote(source, result.model_version.version, "production")
    assert MlflowClient().get_registered_model(source).aliases == {}


@pytest.mark.slow
def test_mlproject_export_entry_point(source: str, tracking_uri: str) -> None:
    """`mlflow run . -e export -P model_uri=... -P format=onnx`: the export runs nested in the project's run."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    out = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", repo, "-e", "export", "--env-manager", "local",
         "-P", f"model_uri=models:/{source}/1", "-P", "format=onnx"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    mv = MlflowClient().get_model_version(source, "2")
    assert mv.tags[Tag.FORMAT] == "onnx"
    export_run = mlflow.get_run(mv.run_id)
    assert export_run.data.tags.get("mlflow.parentRunId")  # the project's run
