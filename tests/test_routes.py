"""MLflow's other serving routes on a model with a named input schema (``input_schema=``).

One registry per module: a tiny text-classification source logged with
``input_schema=["text"]`` and an input example, and its ONNX and TorchScript
variants. Checked here:

- every task's schema names its columns (``text``, optional ``text_pair``; ``question`` and
  ``context``; ``image`` as binary), and a wrong ``input_schema`` list is refused;
- exported variants carry the source's signature and input example;
- ``convert_input_example_to_serving_input`` and ``validate_serving_input`` work for every
  variant, and for a model logged without input schema (the default);
- what MLflow's schema enforcement does before the pyfunc sees a request (objects pass through
  to our checks, which name column, row and type; int64 columns and bare lists are refused by
  MLflow; ``None`` arrives as NaN);
- ``mlflow.models.evaluate(model_type="classifier")`` with the documented calls;
- ``mlflow.pyfunc.spark_udf`` on local PySpark without column names (taken from the signature),
  returning ``struct<label, score>`` with the same labels as the in-process pyfunc.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from typing import Any, Dict, Iterator

import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers import sqlite_registry
from mlflow.exceptions import MlflowException
from mlflow.models import Model, convert_input_example_to_serving_input, validate_serving_input
from mlflow.pyfunc.scoring_server import infer_and_parse_data
from tiny import tiny

import mlflow_tfexport
from mlflow_tfexport.errors import BadInputError, TfexportError
from mlflow_tfexport.flavor.signatures import task_signature
from mlflow_tfexport.tasks import IMAGE, TASKS

NAME = "routes"
TEXTS = ["I loved this film, the plot was great.", "dull", "It was not good, it was the worst film of the city."]
EXAMPLE = ["I loved it", "The plot was dull"]
VARIANTS = ("transformers", "onnx", "torchscript")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, _empty_mlflow_db: str) -> Iterator[Dict[str, Any]]:
    root = tmp_path_factory.mktemp("routes")
    with sqlite_registry(root, _empty_mlflow_db) as uri:
        # Artifacts under root (the template's default experiment points elsewhere). An experiment id passed to
        # start_run, not mlflow.set_experiment: that one sets MLFLOW_EXPERIMENT_ID for the rest of the session.
        experiment_id = mlflow.create_experiment("routes")
        model, tok = tiny("text-classification")
        with mlflow.start_run(experiment_id=experiment_id):
            mlflow.tfexport.log_model(model, tokenizer=tok, registered_model_name=NAME, input_schema=["text"],
                                      input_example=EXAMPLE)
            mlflow.tfexport.log_model(model, tokenizer=tok, registered_model_name="plain", input_example=EXAMPLE)
            mlflow.tfexport.log_model(model, tokenizer=tok, registered_model_name="bare", input_example=EXAMPLE,
                                      input_schema=False)
        versions = {
            "transformers": "1",
            "onnx": str(mlflow_tfexport.export(f"models:/{NAME}/1", format="onnx").model_version.version),
            "torchscript": str(
                mlflow_tfexport.export(f"models:/{NAME}/1", format="torchscript", trace_shape=["2x16"])
                .model_version.version
            ),
        }
        yield {"uri": uri, "root": str(root), "experiment_id": experiment_id,
               "uris": {v: f"models:/{NAME}/{n}" for v, n in versions.items()}}


@pytest.fixture(scope="module")
def pyfuncs(registry: Dict[str, Any]) -> Dict[str, Any]:
    return {v: mlflow.pyfunc.load_model(u) for v, u in registry["uris"].items()}


def test_every_task_names_its_inputs() -> None:
    for spec in TASKS.values():
        inputs = task_signature(spec, 8, input_schema=True).inputs
        assert inputs is not None and inputs.has_input_names(), spec.name
        assert inputs.required_input_names() == list(spec.text_columns), spec.name
        assert inputs.optional_input_names() == list(spec.optional_columns), spec.name
        expected = {c: "binary" if c == IMAGE else "string" for c in (*spec.text_columns, *spec.optional_columns)}
        assert {c.name: c.type.name for c in inputs.inputs} == expected, spec.name
        default = task_signature(spec, 8).inputs  # the default: one unnamed column for one text or image per row
        if spec.input_kind != "text":  # images: one unnamed binary column (bytes; base64 in JSON)
            assert default is not None and not default.has_input_names(), spec.name
            assert [c.type.name for c in default.inputs] == ["binary"], spec.name
        elif len(spec.text_columns) > 1:
            assert default is not None and default.required_input_names() == list(spec.text_columns), spec.name
        else:
            assert default is not None and not default.has_input_names(), spec.name
            assert [c.type.name for c in default.inputs] == ["string"], spec.name
        assert task_signature(spec, 8, input_schema=False).inputs is None, spec.name
    pair = task_signature(TASKS["text-classification"], input_schema=["text", "text_pair"]).inputs
    assert pair is not None and pair.required_input_names() == ["text", "text_pair"]


@pytest.mark.parametrize("columns", [["question"], ["text", "text"], ["txt"]])
def test_an_input_schema_that_does_not_fit_the_task_is_refused(columns: Any) -> None:
    task = "question-answering" if columns == ["question"] else "text-classification"
    with pytest.raises(TfexportError, match="does not fit task") as info:
        task_signature(TASKS[task], input_schema=columns)
    assert "Pass True" in str(info.value)


def test_question_answering_with_its_named_schema(tmp_path: Any) -> None:
    model, tok = tiny("question-answering")
    path = str(tmp_path / "qa")
    mlflow_tfexport.save_model(model, path, tokenizer=tok, input_schema=True,
                               input_example={"question": "what is the capital?", "context": "paris is the capital."})
    pf = mlflow.pyfunc.load_model(path)
    assert pf.metadata.get_input_schema().input_names() == ["question", "context"]
    rows = {"question": ["what is the capital?", "who?"], "context": ["paris is the capital.", "me."]}
    answer = pf.predict(pd.DataFrame(rows))
    assert list(answer.columns) == ["answer", "score", "start", "end"] and len(answer) == 2
    with pytest.raises(MlflowException, match=r"Model is missing inputs \['context'\]"):
        pf.predict(pd.DataFrame({"question": rows["question"]}))
    with pytest.raises(BadInputError, match=r"Column 'context', row 1: .*received int 5"):
        pf.predict({"question": ["q", "r"], "context": ["c", 5]})  # mixed: an object column, our check
    with pytest.raises(MlflowException, match=r"Incompatible input types for column context"):
        pf.predict({"question": ["q"], "context": [5]})  # all ints: pandas reads int64, MLflow refuses


def test_signature_and_input_schema_together_are_refused(tmp_path: Any) -> None:
    model, tok = tiny("text-classification")
    signature = task_signature(TASKS["text-classification"], input_schema=True)
    with pytest.raises(TfexportError, match="either signature= or input_schema="):
        mlflow_tfexport.save_model(model, str(tmp_path / "m"), tokenizer=tok, signature=signature, input_schema=True)


@pytest.mark.integration
def test_variants_carry_the_source_schema_and_input_example(registry: Dict[str, Any]) -> None:
    source = registry["uris"]["transformers"]
    source_model = Model.load(source)
    assert source_model.signature.inputs.input_names() == ["text"]
    for variant in ("onnx", "torchscript"):
        uri = registry["uris"][variant]
        model = Model.load(uri)
        assert model.signature.to_dict() == source_model.signature.to_dict(), variant
        local = mlflow.artifacts.download_artifacts(uri)
        example = model.load_input_example(local)
        assert isinstance(example, pd.DataFrame), variant
        assert example["text"].tolist() == EXAMPLE, variant
        assert json.loads(model.get_serving_input(local)) == {
            "dataframe_split": {"columns": ["text"], "data": [[t] for t in EXAMPLE]}
        }


@pytest.mark.integration
@pytest.mark.parametrize("variant", VARIANTS)
def test_validate_serving_input_works_for_every_variant(registry: Dict[str, Any], pyfuncs: Dict[str, Any],
                                                        variant: str) -> None:
    uri = registry["uris"][variant]
    example = Model.load(uri).load_input_example(mlflow.artifacts.download_artifacts(uri))
    serving_input = convert_input_example_to_serving_input(example)
    assert serving_input is not None
    answer = validate_serving_input(uri, serving_input)
    expected = pyfuncs[variant].predict(pd.DataFrame({"text": EXAMPLE}))
    pd.testing.assert_frame_equal(pd.DataFrame(answer), expected)
    # The same request as JSON built by hand from the schema's names.
    hand = json.dumps({"inputs": {"text": EXAMPLE}})
    pd.testing.assert_frame_equal(pd.DataFrame(validate_serving_input(uri, hand)), expected)


@pytest.mark.integration
def test_an_export_of_a_source_without_input_schema_writes_the_default(registry: Dict[str, Any]) -> None:
    assert Model.load("models:/bare/1").signature.inputs is None
    result = mlflow_tfexport.export("models:/bare/1", format="onnx")
    inputs = Model.load(result.model_uri).signature.inputs
    assert inputs is not None and not inputs.has_input_names() and [c.type.name for c in inputs.inputs] == ["string"]
    assert Model.load(result.model_uri).signature.outputs == Model.load("models:/bare/1").signature.outputs
    answer = mlflow.pyfunc.load_model(result.model_uri).predict({"text": EXAMPLE})
    assert len(answer) == 2


@pytest.mark.integration
def test_a_model_with_the_default_schema_takes_bare_lists(registry: Dict[str, Any]) -> None:
    uri = "models:/plain/1"
    model = Model.load(uri)
    assert model.signature.inputs.to_dict() == [{"type": "string", "required": True}]
    example = model.load_input_example(mlflow.artifacts.download_artifacts(uri))
    serving_input = convert_input_example_to_serving_input(example)
    assert json.loads(serving_input or "{}") == {"inputs": EXAMPLE}
    answer = pd.DataFrame(validate_serving_input(uri, serving_input))
    assert answer["label"].tolist() == mlflow.pyfunc.load_model(uri).predict(EXAMPLE)["label"].tolist()


@pytest.mark.integration
def test_what_mlflow_enforces_before_our_checks(pyfuncs: Dict[str, Any]) -> None:
    model = pyfuncs["onnx"]
    # Python objects in a string column pass MLflow's check unchanged and reach ours.
    with pytest.raises(BadInputError, match=r"Column 'text', row 1: expected text \(a string\), received int 3"):
        model.predict({"text": ["fine", 3]})
    with pytest.raises(BadInputError, match=r"Column 'text', row 0: .*received bytes"):
        model.predict(pd.DataFrame({"text": pd.Series([b"raw"], dtype=object)}))
    # None in a string column arrives as NaN (pandas 3 string dtype): named as a float NaN.
    with pytest.raises(BadInputError, match=r"Column 'text', row 1: .*received float nan"):
        model.predict(pd.DataFrame({"text": ["fine", None]}))
    # An int64 column and a bare list are refused by MLflow itself (also a 400).
    with pytest.raises(MlflowException, match=r"Incompatible input types for column text") as info:
        model.predict(pd.DataFrame({"text": [1, 2]}))
    assert info.value.get_http_status_code() == 400
    with pytest.raises(MlflowException, match=r"Model is missing inputs \['text'\]") as info:
        model.predict(TEXTS)
    assert info.value.get_http_status_code() == 400


@pytest.mark.parametrize("body, match", [
    ({"dataframe_split": {"columns": ["text"], "data": [["ok"], [7]]}}, r"Column 'text', row 1: .*received int 7"),
    ({"dataframe_records": [{"text": 1.5}]}, r"Column 'text', row 0: .*received float 1.5"),
])
@pytest.mark.integration
def test_json_requests_with_non_text_get_our_message(pyfuncs: Dict[str, Any], body: Dict[str, Any],
                                                     match: str) -> None:
    model = pyfuncs["transformers"]
    data = infer_and_parse_data(body, model.metadata.get_input_schema())
    with pytest.raises(BadInputError, match=match):
        model.predict(data)


@pytest.mark.integration
def test_inputs_payloads_are_cast_to_strings_by_mlflow(pyfuncs: Dict[str, Any]) -> None:
    """The coerced case (README): MLflow's parser casts ``inputs``/``instances`` values to the schema's type."""
    model = pyfuncs["transformers"]
    schema = model.metadata.get_input_schema()
    data = infer_and_parse_data({"inputs": {"text": ["ok", True, 1, None]}}, schema)
    assert data["text"].tolist() == ["ok", "True", "1", "None"]
    assert len(model.predict(data)) == 4  # answered as the texts "True", "1", "None"


@pytest.mark.integration
def test_named_requests_answer_like_the_plain_model(pyfuncs: Dict[str, Any]) -> None:
    plain = mlflow.pyfunc.load_model("models:/plain/1").predict(TEXTS)
    for variant, model in pyfuncs.items():
        frame = model.predict(pd.DataFrame({"text": TEXTS}))
        assert frame["label"].tolist() == plain["label"].tolist(), variant
        np.testing.assert_allclose(frame["score"], plain["score"], atol=1e-4)
        records = model.predict(infer_and_parse_data({"dataframe_records": [{"text": t} for t in TEXTS]},
                                                     model.metadata.get_input_schema()))
        assert records["label"].tolist() == plain["label"].tolist(), variant


@pytest.mark.integration
def test_empty_batches_with_a_named_schema(pyfuncs: Dict[str, Any]) -> None:
    model = pyfuncs["onnx"]
    schema = model.metadata.get_input_schema()
    for data in ({"text": []}, infer_and_parse_data({"inputs": {"text": []}}, schema)):
        answer = model.predict(data)
        assert len(answer) == 0 and list(answer.columns) == ["label", "score"]
    # An empty DataFrame column is float64 to pandas, and an empty record list has no columns: MLflow refuses both.
    with pytest.raises(MlflowException, match="Incompatible input types for column text"):
        model.predict(pd.DataFrame({"text": []}))
    with pytest.raises(MlflowException, match=r"Model is missing inputs \['text'\]"):
        model.predict(infer_and_parse_data({"dataframe_records": []}, schema))


@pytest.mark.integration
def test_evaluate_classifier_with_the_documented_calls(registry: Dict[str, Any], pyfuncs: Dict[str, Any]) -> None:
    model = pyfuncs["onnx"]
    labels = model.predict(pd.DataFrame({"text": TEXTS}))["label"].tolist()
    targets = [labels[0], labels[1], "NOT-A-LABEL"]  # two right, one wrong: accuracy 2/3
    data = pd.DataFrame({"text": TEXTS, "target": targets})
    with mlflow.start_run(experiment_id=registry["experiment_id"]):
        # 1. A function that returns the label column of the pyfunc's answer.
        result = mlflow.models.evaluate(lambda df: model.predict(df[["text"]])["label"], data, targets="target",
                                        model_type="classifier", evaluators=["default"])
    assert result.metrics["accuracy_score"] == pytest.approx(2 / 3)
    with mlflow.start_run(experiment_id=registry["experiment_id"]):
        # 2. A static dataset whose predictions column is the pyfunc's labels.
        scored = data.assign(prediction=labels)
        result = mlflow.models.evaluate(data=scored, targets="target", predictions="prediction",
                                        model_type="classifier", evaluators=["default"])
    assert result.metrics["accuracy_score"] == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2]").appName("tfexport-routes")
               .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2").getOrCreate())
    try:
        yield session
    finally:
        session.stop()


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["transformers", "onnx"])
def test_spark_udf_takes_the_columns_from_the_signature(registry: Dict[str, Any], pyfuncs: Dict[str, Any],
                                                        spark: Any, variant: str) -> None:
    texts = [f"{t} ({i})" for i in range(20) for t in TEXTS]
    frame = spark.createDataFrame(pd.DataFrame({"text": texts, "id": range(len(texts))})).repartition(2)
    udf = mlflow.pyfunc.spark_udf(spark, registry["uris"][variant], env_manager="local")
    scored = frame.withColumn("prediction", udf()).orderBy("id")  # no column names: "text" from the signature
    assert scored.schema["prediction"].dataType.simpleString() == "struct<label:string,score:double>"
    rows = scored.select("prediction.label", "prediction.score").toPandas()
    expected = pyfuncs[variant].predict(pd.DataFrame({"text": texts}))
    assert rows["label"].tolist() == expected["label"].tolist()
    np.testing.assert_allclose(rows["score"], expected["score"], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_generate_dockerfile_installs_exactly_the_variants_requirements(registry: Dict[str, Any], tmp_path: Any,
                                                                       variant: str) -> None:
    """The image installs the model's own requirements.txt (no image is built: no Docker daemon needed)."""
    out = tmp_path / "docker"
    env = {**os.environ, "MLFLOW_TRACKING_URI": registry["uri"]}
    done = subprocess.run([sys.executable, "-m", "mlflow", "models", "generate-dockerfile", "-m",
                           registry["uris"][variant], "-d", str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    dockerfile = (out / "Dockerfile").read_text()
    assert "COPY model_dir" in dockerfile and "_install_pyfunc_deps" in dockerfile
    assert "torch" not in dockerfile  # what torch the image gets comes from the model's requirements only
    found = [p for p in out.rglob("requirements.txt")]
    assert len(found) == 1, found
    lines = [x.strip() for x in found[0].read_text().splitlines() if x.strip()]
    names = {x.split("==")[0].lower() for x in lines}
    expected = {"transformers": {"mlflow", "torch", "transformers", "safetensors", "tokenizers", "numpy"},
                "onnx": {"mlflow", "onnxruntime", "tokenizers", "numpy"},
                "torchscript": {"mlflow", "torch", "tokenizers", "numpy"}}[variant]
    assert names == expected, lines
    assert "torch" not in names or f"torch=={torch_public_version()}" in lines
    for line in lines:  # every pin is the installed public version: pip resolves it from PyPI
        name, _, version = line.partition("==")
        assert version == importlib.metadata.version(name).split("+")[0], line
        assert "+" not in version, line


def torch_public_version() -> str:
    return importlib.metadata.version("torch").split("+")[0]


@pytest.mark.integration
def test_the_versions_tag_uses_the_same_pins_as_the_requirements(registry: Dict[str, Any]) -> None:
    from mlflow import MlflowClient

    from mlflow_tfexport.constants import Tag

    version = registry["uris"]["onnx"].rsplit("/", 1)[1]
    tag = MlflowClient().get_model_version(NAME, version).tags[Tag.VERSIONS]
    assert f"torch=={torch_public_version()}" in tag.split(","), tag
    assert "+" not in tag, tag
