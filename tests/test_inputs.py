"""What the pyfunc accepts, what it rejects, and how (direct calls and the scoring server's parsing)."""

from __future__ import annotations

import json
from typing import Any, Dict

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, ErrorCode
from mlflow.pyfunc.scoring_server import infer_and_parse_data

import mlflow_tfexport
from mlflow_tfexport.errors import BadInputError

TEXTS = ["I loved this film, the plot was great.", "dull"]
LONG = " ".join(["film"] * 200)  # far over the tiny models' 64 tokens


@pytest.fixture(scope="module")
def paths() -> Dict[str, str]:
    return {}


TASK_ARCHS = [
    ("text-classification", "bert"),
    ("question-answering", "bert"),
    ("feature-extraction", "bert"),
    ("token-classification", "bert"),
    ("fill-mask", "bert"),
    ("text-generation", "gpt2"),
]


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory, tiny_model: Any) -> Dict[str, Any]:
    """The same models saved with ``input_schema=False``: every request reaches the pyfunc's own checks."""
    loaded = {}
    for task, arch in TASK_ARCHS:
        model, tok = tiny_model(task, arch)
        path = str(tmp_path_factory.mktemp(task) / "bare")
        mlflow_tfexport.save_model(model, path, tokenizer=tok, input_schema=False)
        loaded[task] = mlflow.pyfunc.load_model(path)
    return loaded


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_model: Any, paths: Dict[str, str]) -> Dict[str, Any]:
    """Saved (default signature) and loaded pyfuncs, one per task, shared by the module (read-only)."""
    loaded = {}
    for task, arch in TASK_ARCHS:
        model, tok = tiny_model(task, arch)
        path = str(tmp_path_factory.mktemp(task) / "model")
        mlflow_tfexport.save_model(model, path, tokenizer=tok)
        paths[task] = path
        loaded[task] = mlflow.pyfunc.load_model(path)
    return loaded


@pytest.fixture(scope="module")
def classifier(models: Dict[str, Any]) -> Any:
    return models["text-classification"]


@pytest.fixture(scope="module")
def reference(classifier: Any) -> pd.DataFrame:
    return classifier.predict(TEXTS)


def serve(pf: Any, body: Dict[str, Any]) -> Any:
    """Parse a JSON request as ``mlflow models serve`` does, then predict."""
    body = json.loads(json.dumps(body))
    params = body.pop("params", None)
    data = infer_and_parse_data(body, pf.metadata.get_input_schema())
    return pf.predict(data, params=params)


def assert_bad_input(excinfo: Any, *fragments: str) -> None:
    err = excinfo.value
    assert isinstance(err, MlflowException)
    assert err.error_code == ErrorCode.Name(INVALID_PARAMETER_VALUE)
    assert err.get_http_status_code() == 400
    for fragment in fragments:
        assert fragment in err.message, err.message


# --------------------------------------------------------------------------- accepted shapes


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(TEXTS, id="list"),
        pytest.param(np.array(TEXTS), id="ndarray"),
        pytest.param(np.array(TEXTS, dtype=object).reshape(-1, 1), id="ndarray-column"),
        pytest.param(pd.DataFrame({"text": TEXTS}), id="dataframe-text"),
        pytest.param(pd.DataFrame({"sentence": TEXTS}), id="dataframe-any-single-column"),
        pytest.param(pd.Series(TEXTS), id="series"),
        pytest.param({"text": TEXTS}, id="dict"),
        pytest.param([{"text": t} for t in TEXTS], id="records"),
    ],
)
def test_accepted_text_shapes(classifier: Any, reference: pd.DataFrame, data: Any) -> None:
    pd.testing.assert_frame_equal(classifier.predict(data), reference)


def test_a_single_string_is_one_row(classifier: Any, bare: Dict[str, Any], reference: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(classifier.predict(TEXTS[0]), reference.iloc[:1])
    pd.testing.assert_frame_equal(bare["text-classification"].predict(np.array(TEXTS[0])), reference.iloc[:1])
    with pytest.raises(MlflowException, match="Must pass 2-d input"):  # a 0-d array: MLflow's schema check
        classifier.predict(np.array(TEXTS[0]))


def test_what_mlflow_does_first_under_the_default_schema(classifier: Any) -> None:
    """Empty batches are refused as missing inputs (a 400); extra columns are dropped (the first is kept);
    ``inputs`` values are cast to strings by MLflow's parser. Our own checks see the rest (below, on ``bare``)."""
    for empty in ([], {"inputs": []}):
        with pytest.raises(MlflowException, match="missing inputs") as info:
            classifier.predict(empty) if isinstance(empty, list) else serve(classifier, empty)
        assert info.value.get_http_status_code() == 400
    got = classifier.predict(pd.DataFrame({"foo": TEXTS, "bar": ["x", "y"]}))
    pd.testing.assert_frame_equal(got, classifier.predict(TEXTS))
    assert len(serve(classifier, {"inputs": [1, None]})) == 2  # answered as the texts "1" and "None"
    with pytest.raises(MlflowException, match="Incompatible input types for column 0") as info:
        classifier.predict([1, 2])  # in process, nothing casts: MLflow refuses an int64 column (a 400)
    assert info.value.get_http_status_code() == 400


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"inputs": TEXTS}, id="inputs"),
        pytest.param({"instances": TEXTS}, id="instances"),
        pytest.param({"instances": [{"text": t} for t in TEXTS]}, id="instances-records"),
        pytest.param({"inputs": [[t] for t in TEXTS]}, id="inputs-column"),
        pytest.param({"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}}, id="dataframe_split"),
        pytest.param({"dataframe_split": {"data": [[t] for t in TEXTS]}}, id="dataframe_split-no-columns"),
        pytest.param({"dataframe_records": [{"text": t} for t in TEXTS]}, id="dataframe_records"),
    ],
)
def test_scoring_server_payloads(classifier: Any, reference: pd.DataFrame, body: Dict[str, Any]) -> None:
    pd.testing.assert_frame_equal(serve(classifier, body), reference)


SINGLE_TEXT_TASKS = ("text-classification", "feature-extraction", "token-classification", "fill-mask",
                     "text-generation")


@pytest.mark.parametrize("task", SINGLE_TEXT_TASKS)
def test_single_text_tasks_get_one_unnamed_string_column_by_default(models: Dict[str, Any], task: str) -> None:
    """The default signature (no input_schema=): MLServer, spark_udf and the UI read one string input."""
    schema = models[task].metadata.get_input_schema()
    assert schema is not None and not schema.has_input_names(), task
    assert [c.type.name for c in schema.inputs] == ["string"], task


@pytest.mark.parametrize("task", SINGLE_TEXT_TASKS)
def test_every_request_form_answers_under_the_default_schema(models: Dict[str, Any], task: str) -> None:
    """Each form a single-text model took before it had a schema gives the same answer as a bare list."""
    model = models[task]
    texts = ["the [MASK] was great.", "the film [MASK] dull."] if task == "fill-mask" else TEXTS
    params = {"max_new_tokens": 2} if task == "text-generation" else None
    expected = model.predict(texts, params=params)
    forms = [np.array(texts), pd.Series(texts), pd.DataFrame({"text": texts}), {"text": texts},
             [{"text": t} for t in texts]]
    bodies = [{"inputs": texts}, {"instances": texts}, {"dataframe_records": [{"text": t} for t in texts]},
              {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}},
              {"dataframe_split": {"data": [[t] for t in texts]}}]
    answers = [model.predict(f, params=params) for f in forms]
    answers += [serve(model, {**b, **({"params": params} if params else {})}) for b in bodies]
    for i, got in enumerate(answers):
        if isinstance(expected, pd.DataFrame):
            pd.testing.assert_frame_equal(got, expected, atol=1e-6, obj=f"form {i}")
        elif isinstance(expected, np.ndarray):
            np.testing.assert_allclose(got, expected, atol=1e-6, err_msg=f"form {i}")
        else:
            assert got == expected, i


def test_a_tuple_is_refused_by_mlflow_under_the_default_schema(classifier: Any) -> None:
    """In process only (JSON has no tuples): MLflow's enforcement takes lists, arrays and frames, not tuples."""
    with pytest.raises(MlflowException, match="Expected input to be DataFrame. Found: tuple"):
        classifier.predict(tuple(TEXTS))
    pd.testing.assert_frame_equal(classifier.predict(list(tuple(TEXTS))), classifier.predict(TEXTS))


def test_a_named_inputs_dict_is_refused_by_mlflow_under_the_unnamed_default(classifier: Any) -> None:
    """The one request form the unnamed default gives up (``input_schema=True`` keeps it, test_routes): a 400."""
    with pytest.raises(MlflowException, match="un-named") as info:
        serve(classifier, {"inputs": {"text": TEXTS}})
    assert info.value.get_http_status_code() == 400


def test_batch_size_param_does_not_change_results(classifier: Any) -> None:
    texts = TEXTS * 3
    full = classifier.predict(texts)
    chunked = serve(classifier, {"inputs": texts, "params": {"batch_size": 2}})
    pd.testing.assert_frame_equal(chunked, full, atol=1e-6)


@pytest.fixture(scope="module")
def pair_classifier(tmp_path_factory: pytest.TempPathFactory, tiny_model: Any) -> Any:
    """A classifier logged with a text_pair input example: its default schema names text and text_pair."""
    model, tok = tiny_model("text-classification", "bert")
    path = str(tmp_path_factory.mktemp("pairs") / "model")
    mlflow_tfexport.save_model(model, path, tokenizer=tok,
                               input_example=pd.DataFrame({"text": TEXTS, "text_pair": ["a", "b"]}))
    return mlflow.pyfunc.load_model(path)


def test_a_pair_example_gives_named_text_and_text_pair_columns(pair_classifier: Any, classifier: Any) -> None:
    schema = pair_classifier.metadata.get_input_schema()
    assert schema.required_input_names() == ["text", "text_pair"]
    # A pair sent to the single-text default loses text_pair in MLflow's enforcement (first column only):
    # the reason a pair classifier is logged with a pair example (or input_schema=["text", "text_pair"]).
    pairs = pd.DataFrame({"text": TEXTS, "text_pair": ["what is it?", "the end"]})
    pd.testing.assert_frame_equal(classifier.predict(pairs), classifier.predict(TEXTS))
    with pytest.raises(MlflowException, match=r"Model is missing inputs \['text_pair'\]"):
        pair_classifier.predict(pd.DataFrame({"text": TEXTS}))


def test_text_pair_columns(pair_classifier: Any, reference: pd.DataFrame) -> None:
    classifier = pair_classifier  # the same weights as ``classifier``, logged for pairs
    pairs = ["what is it?", "the end"]
    frame = classifier.predict(pd.DataFrame({"text": TEXTS, "text_pair": pairs}))
    rows = list(zip(TEXTS, pairs, strict=True))
    records = serve(classifier, {"dataframe_records": [{"text": t, "text_pair": p} for t, p in rows]})
    split = serve(classifier, {"dataframe_split": {"columns": ["text", "text_pair"], "data": rows}})
    inputs = serve(classifier, {"inputs": {"text": TEXTS, "text_pair": pairs}})
    for other in (records, split, inputs):
        pd.testing.assert_frame_equal(other, frame)
    assert not np.allclose(frame["score"], reference["score"])  # the pairs reached the model


def test_question_answering_shapes(models: Dict[str, Any]) -> None:
    qa = models["question-answering"]
    q, c = ["What is the capital of France?", "who?"], ["Paris is the capital of France.", "i loved it"]
    expected = qa.predict(pd.DataFrame({"question": q, "context": c}))
    assert list(expected.columns) == ["answer", "score", "start", "end"]
    for data in (
        {"question": q, "context": c},
        [{"question": a, "context": b} for a, b in zip(q, c, strict=True)],
    ):
        pd.testing.assert_frame_equal(qa.predict(data), expected)
    one = qa.predict({"question": q[0], "context": c[0]})
    pd.testing.assert_frame_equal(one, expected.iloc[:1])
    pd.testing.assert_frame_equal(serve(qa, {"inputs": {"question": q, "context": c}}), expected)
    pd.testing.assert_frame_equal(serve(qa, {"inputs": {"question": q[0], "context": c[0]}}), expected.iloc[:1])
    split = {"dataframe_split": {"columns": ["question", "context"], "data": list(zip(q, c, strict=True))}}
    pd.testing.assert_frame_equal(serve(qa, split), expected)


# --------------------------------------------------------------------------- empty batches


def test_empty_batches_return_empty_results_of_the_right_type(bare: Dict[str, Any]) -> None:
    models = bare
    for data in ([], np.array([], dtype=str), pd.DataFrame({"text": pd.Series([], dtype=object)})):
        out = models["text-classification"].predict(data)
        assert isinstance(out, pd.DataFrame) and len(out) == 0 and list(out.columns) == ["label", "score"]
    out = serve(models["text-classification"], {"inputs": []})
    assert isinstance(out, pd.DataFrame) and len(out) == 0
    out = serve(models["text-classification"], {"dataframe_split": {"columns": ["text"], "data": []}})
    assert isinstance(out, pd.DataFrame) and len(out) == 0
    qa = models["question-answering"].predict({"question": [], "context": []})
    assert list(qa.columns) == ["answer", "score", "start", "end"] and len(qa) == 0
    fe = models["feature-extraction"].predict([])
    assert isinstance(fe, np.ndarray) and fe.shape[0] == 0
    assert models["token-classification"].predict([]) == []
    assert models["text-generation"].predict([]) == []
    assert len(models["fill-mask"].predict([])) == 0


# --------------------------------------------------------------------------- rejected input


@pytest.mark.parametrize(
    ("data", "received"),
    [
        pytest.param([1, 2], "int", id="ints"),
        pytest.param([None], "NoneType", id="none"),
        pytest.param(["ok", None], "row 1", id="none-in-second-row"),
        pytest.param([["a", "b"], ["c"]], "list", id="nested"),
        pytest.param([1.5], "float", id="float"),
        pytest.param([b"bytes"], "bytes", id="bytes"),
        pytest.param(np.array([1, 2]), "int", id="int-ndarray"),
        pytest.param(pd.DataFrame({"text": [1, 2]}), "int", id="int-column"),
        pytest.param(pd.DataFrame({"text": ["a", np.nan]}), "float", id="nan"),
        pytest.param(np.zeros((2, 2, 2)), "shape", id="3d-array"),
        pytest.param(3, "int", id="scalar"),
        pytest.param(object(), "object", id="object"),
    ],
)
def test_non_text_is_rejected(bare: Dict[str, Any], data: Any, received: str) -> None:
    with pytest.raises(MlflowException) as excinfo:
        bare["text-classification"].predict(data)
    assert_bad_input(excinfo, received)


@pytest.mark.parametrize(
    ("body", "received"),
    [
        pytest.param({"inputs": [1, 2]}, "int", id="ints"),
        pytest.param({"inputs": [None]}, "NoneType", id="null"),
        pytest.param({"inputs": [["a", "b"], ["c", "d"]]}, "shape", id="nested"),
        pytest.param({"dataframe_split": {"columns": ["text"], "data": [[1]]}}, "int", id="dataframe-int"),
    ],
)
def test_non_text_is_rejected_through_the_scoring_server_parsing(
    bare: Dict[str, Any], body: Dict[str, Any], received: str
) -> None:
    with pytest.raises(MlflowException) as excinfo:
        serve(bare["text-classification"], body)
    assert_bad_input(excinfo, received)


def test_bad_input_error_is_an_mlflow_exception() -> None:
    err = BadInputError("x")
    assert isinstance(err, MlflowException)
    assert err.get_http_status_code() == 400


def test_missing_columns_are_named(bare: Dict[str, Any]) -> None:
    models = bare
    with pytest.raises(MlflowException) as excinfo:
        bare["text-classification"].predict(pd.DataFrame({"foo": ["a"], "bar": ["b"]}))
    assert_bad_input(excinfo, "'text'", "'foo'", "'bar'")
    with pytest.raises(MlflowException) as excinfo:
        models["question-answering"].predict(pd.DataFrame({"question": ["q"]}))
    assert_bad_input(excinfo, "'question' and 'context'", "received column(s) 'question'")
    with pytest.raises(MlflowException) as excinfo:
        models["question-answering"].predict(["just a list"])
    assert_bad_input(excinfo, "'context'")
    with pytest.raises(MlflowException) as excinfo:
        serve(models["question-answering"], {"inputs": {"question": ["q"], "text": ["c"]}})
    assert_bad_input(excinfo, "'context'")


def test_unknown_params_are_rejected_by_the_runtime(classifier: Any, paths: Dict[str, str]) -> None:
    from mlflow_tfexport.serving.pyfunc import _load_pyfunc

    runtime = _load_pyfunc(paths["text-classification"])  # what mlflow.pyfunc wraps
    with pytest.raises(MlflowException) as excinfo:
        runtime.predict(TEXTS, params={"top_k": 3})
    assert_bad_input(excinfo, "'top_k'", "accepted params: batch_size, truncation")


def test_unknown_params_are_dropped_by_mlflow_before_the_runtime(classifier: Any, reference: pd.DataFrame) -> None:
    # MLflow's params-schema enforcement drops keys the signature does not declare (with a
    # warning) before the pyfunc sees them; declared params with a wrong type are errors.
    pd.testing.assert_frame_equal(classifier.predict(TEXTS, params={"top_k": 3}), reference)
    with pytest.raises(MlflowException):
        classifier.predict(TEXTS, params={"batch_size": "two"})


def test_bad_param_values_are_rejected(models: Dict[str, Any]) -> None:
    with pytest.raises(MlflowException) as excinfo:
        models["feature-extraction"].predict(TEXTS, params={"pooling": "max"})
    assert_bad_input(excinfo, "pooling")
    with pytest.raises(MlflowException) as excinfo:
        models["token-classification"].predict(TEXTS, params={"output": "spans"})
    assert_bad_input(excinfo, "output")
    with pytest.raises(MlflowException) as excinfo:
        models["fill-mask"].predict(["no mask here"])
    assert_bad_input(excinfo, "[MASK]")
    with pytest.raises(MlflowException) as excinfo:
        models["text-generation"].predict(["a"], params={"max_new_tokens": 64})
    assert_bad_input(excinfo, "max_new_tokens")


# --------------------------------------------------------------------------- over-long input


def test_over_long_input_is_truncated_by_default(classifier: Any) -> None:
    out = classifier.predict([LONG, "dull"])
    assert len(out) == 2
    # Truncated to the model's maximum: the same as the text cut to (well under) 64 tokens plus more words.
    near = classifier.predict([" ".join(["film"] * 80)])
    assert out["score"][0] == pytest.approx(near["score"][0], abs=1e-6)


def test_over_long_input_is_an_error_without_truncation(classifier: Any, models: Dict[str, Any]) -> None:
    with pytest.raises(MlflowException) as excinfo:
        classifier.predict(["short", LONG], params={"truncation": False})
    assert_bad_input(excinfo, "rows [1]", "64 tokens", "truncation")
    with pytest.raises(MlflowException) as excinfo:
        serve(classifier, {"inputs": [LONG], "params": {"truncation": False}})
    assert_bad_input(excinfo, "64 tokens")
    assert len(classifier.predict(["short"], params={"truncation": False})) == 1


def test_over_long_inputs_for_every_task(models: Dict[str, Any]) -> None:
    qa = models["question-answering"]
    out = qa.predict({"question": ["what?"], "context": [LONG]})
    assert out["answer"][0] and set(out["answer"][0].split()) == {"film"}
    with pytest.raises(MlflowException) as excinfo:
        qa.predict({"question": [LONG], "context": ["paris"]})  # the question leaves no room for the context
    assert_bad_input(excinfo, "64 tokens")
    assert models["feature-extraction"].predict([LONG]).shape[0] == 1
    assert len(models["token-classification"].predict([LONG])) == 1
    # A long prompt keeps its end and leaves room for the new tokens within the model's positions.
    generated = models["text-generation"].predict([LONG], params={"max_new_tokens": 5})
    assert generated[0].startswith(LONG) and len(generated[0]) > len(LONG)
    with pytest.raises(MlflowException):
        models["text-generation"].predict([LONG], params={"truncation": False})


def test_records_with_zero_d_array_values_are_unwrapped() -> None:
    """``{"inputs": [{"text": ...}, ...]}`` reaches the model with 0-d arrays as values."""
    from mlflow_tfexport.serving.inputs import parse_text_input
    from mlflow_tfexport.tasks import get_task

    spec = get_task("text-classification")
    many = [{"text": np.array("great film")}, {"text": np.array("dull")}]
    assert parse_text_input(many, spec) == (["great film", "dull"], None)
    assert parse_text_input([{"text": np.array("great film")}], spec) == (["great film"], None)
