"""What a hostile (or careless) client or MLmodel editor sends, and what the pyfunc answers.

- every ``params`` value is checked against its range (``ParamSpec`` in the
  task table) before any work, with a 400 that names the value, the range and
  the fix: fill-mask ``top_k``, QA ``max_answer_len``, ``max_new_tokens``,
  ``batch_size`` (0 still means the model's default);
- an empty generation prompt generates from the BOS token (as the transformers
  pipeline does), an empty batch is an empty result of the right shape, a lone
  surrogate is a 400 that says so, a text without any token is a 400;
- ``predict`` stops between chunks once ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT``
  has passed (504), so a request the scoring server gave up on stops working;
- an MLmodel whose artifact paths leave the model directory, or whose fields
  are malformed, is refused at load with a message naming the field.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Dict, Iterator

import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers import tampered_copy
from mlflow.exceptions import MlflowException
from mlflow.pyfunc.scoring_server import infer_and_parse_data

import mlflow_tfexport
from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.errors import BadInputError, FlavorConfError, TfexportError, UnknownFormatError, UnknownTaskError
from mlflow_tfexport.serving.base import check_param
from mlflow_tfexport.serving.conf import artifact_path, check_flavor_conf, read_flavor_conf
from mlflow_tfexport.serving.deadline import TIMEOUT_ENV
from mlflow_tfexport.serving.pyfunc import _load_pyfunc
from mlflow_tfexport.tasks import MAX_BATCH_SIZE, TASKS

TEXTS = ["I loved this film, the plot was great.", "dull"]
MASKED = ["paris is the [MASK] of france."]
QA = {"question": ["what is the capital of france?"], "context": ["paris is the capital of france."]}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, tiny_model: Any) -> Dict[str, str]:
    paths = {}
    for task, arch in [("text-classification", "bert"), ("question-answering", "bert"), ("fill-mask", "bert"),
                       ("text-generation", "gpt2"), ("text-classification-gpt2", "gpt2")]:
        model, tok = tiny_model(task.replace("-gpt2", ""), arch)
        paths[task] = str(tmp_path_factory.mktemp(task) / "model")
        # No input schema: every request reaches the pyfunc's own checks (the default's are in test_inputs).
        mlflow_tfexport.save_model(model, paths[task], tokenizer=tok, input_schema=False)
    return paths


@pytest.fixture(scope="module")
def models(saved: Dict[str, str]) -> Dict[str, Any]:
    return {task: mlflow.pyfunc.load_model(path) for task, path in saved.items()}


def serve(pf: Any, body: Dict[str, Any]) -> Any:
    """Parse a JSON request as ``mlflow models serve`` does, then predict."""
    body = json.loads(json.dumps(body))
    params = body.pop("params", None)
    data = infer_and_parse_data(body, pf.metadata.get_input_schema())
    return pf.predict(data, params=params)


def bad_request(call: Any, *fragments: str) -> str:
    """``call()`` must raise a 400 whose message holds every fragment; returns the message."""
    with pytest.raises(MlflowException) as excinfo:
        call()
    err = excinfo.value
    assert isinstance(err, BadInputError), f"{type(err).__name__}: {err.message}"
    assert err.get_http_status_code() == 400
    for fragment in fragments:
        assert fragment in err.message, err.message
    return str(err.message)


# --------------------------------------------------------------------------- params ranges


@pytest.mark.parametrize(
    ("task", "data", "params", "fragments"),
    [
        pytest.param("fill-mask", MASKED, {"top_k": 0}, ("top_k=0", "from 1 to 1000", '"top_k": 5'), id="top_k-0"),
        pytest.param("fill-mask", MASKED, {"top_k": -5}, ("top_k=-5", "from 1 to 1000"), id="top_k-negative"),
        pytest.param("fill-mask", MASKED, {"top_k": 10**6}, ("top_k=1000000", "from 1 to 1000"), id="top_k-huge"),
        pytest.param("question-answering", QA, {"max_answer_len": 0}, ("max_answer_len=0", "from 1 to"),
                     id="max_answer_len-0"),
        pytest.param("question-answering", QA, {"max_answer_len": -3}, ("max_answer_len=-3", "from 1 to"),
                     id="max_answer_len-negative"),
        pytest.param("text-generation", ["the plot"], {"max_new_tokens": -1}, ("max_new_tokens=-1", "from 0 to"),
                     id="max_new_tokens-negative"),
        pytest.param("text-generation", ["the plot"], {"max_new_tokens": 64}, ("max_new_tokens=64", "from 0 to 63"),
                     id="max_new_tokens-past-the-positions"),
        pytest.param("text-generation", ["the plot"], {"max_new_tokens": 10**12},
                     ("max_new_tokens=1000000000000", "from 0 to"), id="max_new_tokens-huge"),
        pytest.param("text-classification", TEXTS, {"batch_size": -1},
                     ("batch_size=-1", f"from 0 to {MAX_BATCH_SIZE}", "0: the model's default"), id="batch_size-neg"),
        pytest.param("text-classification", TEXTS, {"batch_size": 10**12},
                     ("batch_size=1000000000000", f"from 0 to {MAX_BATCH_SIZE}"), id="batch_size-huge"),
        pytest.param("text-classification", TEXTS, {"batch_size": MAX_BATCH_SIZE + 1},
                     (f"batch_size={MAX_BATCH_SIZE + 1}",), id="batch_size-one-too-many"),
    ],
)
def test_params_out_of_range_are_refused_before_any_work(models: Dict[str, Any], task: str, data: Any,
                                                         params: Dict[str, Any], fragments: Any) -> None:
    bad_request(lambda: models[task].predict(data, params=params), *fragments)


def test_batch_size_zero_is_the_models_default_and_the_maximum_is_accepted(models: Dict[str, Any]) -> None:
    pf = models["text-classification"]
    reference = pf.predict(TEXTS * 3)
    for size in (0, 1, MAX_BATCH_SIZE):
        pd.testing.assert_frame_equal(pf.predict(TEXTS * 3, params={"batch_size": size}), reference, atol=1e-6)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [({"top_k": "3"}, "top_k='3'"), ({"top_k": True}, "top_k=True"), ({"top_k": 2.5}, "top_k=2.5"),
     ({"truncation": "no"}, "truncation='no'"), ({"batch_size": float("nan")}, "batch_size=nan")],
)
def test_params_of_the_wrong_type_are_refused_by_the_runtime(saved: Dict[str, str], params: Dict[str, Any],
                                                             fragment: str) -> None:
    """What MLflow's params schema does not convert (a direct call to the loader's object) is checked too."""
    runtime = _load_pyfunc(saved["fill-mask"])
    bad_request(lambda: runtime.predict(MASKED, params=params), fragment, "expected")
    assert len(runtime.predict(MASKED, params={"top_k": np.int64(2), "truncation": np.bool_(True)})) == 1


#: String params that take free text (zero-shot labels and template; their pyfunc bounds and checks them).
FREE_TEXT_PARAMS = ("candidate_labels", "hypothesis_template")


def test_every_numeric_param_has_a_checked_range() -> None:
    for spec in TASKS.values():
        for param in spec.all_params:
            assert check_param(param, param.default, spec.name) == param.default
            if param.dtype in ("long", "double"):
                assert param.minimum is not None and param.maximum is not None, (spec.name, param.name)
                for value in (param.minimum - 1, param.maximum + 1):
                    with pytest.raises(BadInputError, match=f"{param.name}=") as excinfo:
                        check_param(param, value, spec.name)
                    assert param.accepted() in excinfo.value.message
            if param.shape is not None:  # a list param (stop strings): a list of its type, nothing else
                assert check_param(param, ["a", "b"], spec.name) == ["a", "b"]
                for value in ("not-a-list", [3], [["nested"]]):
                    with pytest.raises(BadInputError, match=f"{param.name}="):
                        check_param(param, value, spec.name)
            elif param.dtype == "string" and param.name in FREE_TEXT_PARAMS:  # checked by the task's pyfunc
                with pytest.raises(BadInputError, match=f"{param.name}="):
                    check_param(param, 3, spec.name)
            elif param.dtype == "string":
                assert param.default in param.choices, (spec.name, param.name)
                with pytest.raises(BadInputError, match="one of"):
                    check_param(param, "surely-not-a-choice", spec.name)


def test_model_config_batch_size_is_checked_at_load(saved: Dict[str, str]) -> None:
    for value in (0, -1, MAX_BATCH_SIZE + 1, "32"):
        with pytest.raises(TfexportError, match=f"model_config batch_size={value!r}.*from 1 to {MAX_BATCH_SIZE}"):
            _load_pyfunc(saved["text-classification"], {"batch_size": value})
    assert _load_pyfunc(saved["text-classification"], {"batch_size": 4}).batch_size == 4


# --------------------------------------------------------------------------- odd but valid requests


def test_an_empty_generation_prompt_generates_from_bos_like_the_pipeline(models: Dict[str, Any],
                                                                         tiny_model: Any) -> None:
    import transformers

    model, tok = tiny_model("text-generation", "gpt2")
    pipeline = transformers.pipeline("text-generation", model=model, tokenizer=tok, device="cpu")
    expected = pipeline("", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert expected  # the tiny model does generate something from BOS
    assert models["text-generation"].predict([""], params={"max_new_tokens": 5}) == [expected]
    assert serve(models["text-generation"], {"inputs": ["", "the plot"], "params": {"max_new_tokens": 5}})[0] == \
        expected


def test_empty_batches_in_every_payload_shape_are_empty_results(models: Dict[str, Any]) -> None:
    cls = models["text-classification"]
    for body in ({"dataframe_records": []}, {"inputs": []}, {"inputs": {}},
                 {"dataframe_split": {"columns": ["text"], "data": []}}):
        out = serve(cls, body)
        assert isinstance(out, pd.DataFrame) and len(out) == 0 and list(out.columns) == ["label", "score"], body
    qa = serve(models["question-answering"], {"dataframe_records": []})
    assert list(qa.columns) == ["answer", "score", "start", "end"] and len(qa) == 0
    assert serve(models["text-generation"], {"dataframe_records": []}) == []


def test_a_lone_surrogate_is_named_as_invalid_unicode(models: Dict[str, Any]) -> None:
    for body in ({"inputs": ["\ud800"]}, {"inputs": ["fine", "bad \udfff end"]}):
        message = bad_request(lambda b=body: serve(models["text-classification"], b), "not valid Unicode",
                              "surrogate")
        assert "tokens" not in message
    bad_request(lambda: models["question-answering"].predict({"question": ["q"], "context": ["\ud800"]}),
                "Row 0", "paired text", "not valid Unicode")
    bad_request(lambda: models["text-generation"].predict(["\ud800"]), "not valid Unicode")


def test_a_text_without_any_token_is_refused(models: Dict[str, Any]) -> None:
    """A byte-level tokenizer adds no special token: an empty text would be a zero-length row."""
    gpt2 = models["text-classification-gpt2"]
    bad_request(lambda: gpt2.predict([""]), "rows [0]", "no tokens")
    bad_request(lambda: gpt2.predict(["great film", ""]), "rows [1]", "no tokens")
    assert len(models["text-classification"].predict([""])) == 1  # [CLS] [SEP]: a BERT row is never empty


# --------------------------------------------------------------------------- the scoring server's timeout


@pytest.mark.integration
def test_predict_stops_between_chunks_once_the_server_timeout_has_passed(
    saved: Dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pf = mlflow.pyfunc.load_model(saved["text-classification"])
    runner = pf._model_impl.runner
    calls = []
    run = runner.run

    def slow(feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        calls.append(len(calls))
        time.sleep(0.25)
        return run(feeds)

    monkeypatch.setattr(runner, "run", slow)
    monkeypatch.setenv(TIMEOUT_ENV, "1")
    started = time.monotonic()
    with pytest.raises(MlflowException) as excinfo:
        pf.predict(TEXTS * 20, params={"batch_size": 1})
    assert excinfo.value.get_http_status_code() == 504
    assert TIMEOUT_ENV in excinfo.value.message and "of 40 rows done" in excinfo.value.message
    assert 3 <= len(calls) <= 8, calls  # stopped soon after 1 s, not after 40 chunks
    assert time.monotonic() - started < 5
    monkeypatch.delenv(TIMEOUT_ENV)
    calls.clear()
    assert len(pf.predict(TEXTS * 5, params={"batch_size": 1})) == 10 and len(calls) == 10  # no deadline: all


# --------------------------------------------------------------------------- tampered MLmodel files


@pytest.fixture
def tampered(saved: Dict[str, str], tmp_path: Any) -> Iterator[Any]:
    """``tampered(**fields)``: a copy of the saved classifier whose MLmodel flavor block has ``fields``."""

    def make(**fields: Any) -> str:
        return tampered_copy(saved["text-classification"], str(tmp_path), **fields)

    yield make


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (FlavorKey.MODEL_FILE, "../.."),
        (FlavorKey.MODEL_FILE, "/etc"),
        (FlavorKey.MODEL_FILE, "model/../../../etc"),
        (FlavorKey.TOKENIZER_DIR, "../../tokenizer"),
        (FlavorKey.TOKENIZER_DIR, "/tmp"),
        (FlavorKey.ID2LABEL, ["NEGATIVE", "POSITIVE"]),
        (FlavorKey.ID2LABEL, {"first": "NEGATIVE"}),
        (FlavorKey.ID2LABEL, {0: 5}),
        (FlavorKey.MAX_LENGTH, "abc"),
        (FlavorKey.MAX_LENGTH, -1),
        (FlavorKey.MAX_LENGTH, 10**30),
        (FlavorKey.MAX_LENGTH, True),
        (FlavorKey.PAD_TOKEN_ID, "x"),
        (FlavorKey.PAD_TOKEN_ID, 10**30),
        (FlavorKey.PAD_TOKEN_ID, None),
        (FlavorKey.EOS_TOKEN_ID, -7),
        (FlavorKey.INPUT_NAMES, "input_ids"),
        (FlavorKey.INPUT_NAMES, ["input_ids", "bogus"]),
        (FlavorKey.INPUT_NAMES, []),
        (FlavorKey.TRACE_SHAPES, "2x16"),
        (FlavorKey.TRACE_SHAPES, [[0, 8]]),
        (FlavorKey.TRACE_SHAPES, [[10**6, 8]]),
        (FlavorKey.TRACE_SHAPES, [["a", 8]]),
        (FlavorKey.TRACE_DEVICE, "tpu"),
        (FlavorKey.FORMAT, ""),
    ],
)
def test_tampered_flavor_fields_are_refused_naming_the_field(tampered: Any, field: str, value: Any) -> None:
    path = tampered(**{field: value})
    with pytest.raises(TfexportError) as excinfo:
        mlflow.pyfunc.load_model(path)
    assert isinstance(excinfo.value, FlavorConfError), excinfo.value.message
    message = excinfo.value.message
    assert f"field {field!r}" in message and "expected" in message and "log the model again" in message, message
    with pytest.raises(FlavorConfError):
        read_flavor_conf(path)


def test_unknown_format_and_task_say_what_is_known(tampered: Any) -> None:
    with pytest.raises(UnknownFormatError, match="Upgrade mlflow-tfexport"):
        mlflow.pyfunc.load_model(tampered(**{FlavorKey.FORMAT: "tensorrt"}))
    with pytest.raises(UnknownTaskError, match="Known tasks"):
        mlflow.pyfunc.load_model(tampered(**{FlavorKey.TASK: "summarize-everything"}))


def test_a_symlink_out_of_the_model_directory_is_refused(tampered: Any, tmp_path: Any) -> None:
    path = tampered()
    outside = str(tmp_path / "outside-tokenizer")
    shutil.move(os.path.join(path, "tokenizer"), outside)
    os.symlink(outside, os.path.join(path, "tokenizer"))
    with pytest.raises(FlavorConfError, match="'tokenizer_dir'.*resolves to .*outside"):
        mlflow.pyfunc.load_model(path)


def test_artifact_paths_resolve_inside_the_model_directory(tmp_path: Any) -> None:
    root = str(tmp_path)
    for key in (FlavorKey.MODEL_FILE, FlavorKey.TOKENIZER_DIR, FlavorKey.IMAGE_PROCESSOR_DIR, FlavorKey.ENCODER_FILE):
        assert artifact_path(root, {key: "sub/file.onnx"}, key) == os.path.join(os.path.realpath(root), "sub",
                                                                               "file.onnx")
        for value in ("..", "../x", "/abs/path", "a/../../b", "", 5, "a\x00b"):
            with pytest.raises(FlavorConfError, match=repr(key)):
                artifact_path(root, {key: value}, key)
        with pytest.raises(FlavorConfError, match=repr(key)):
            artifact_path(root, {}, key)


def test_a_checked_block_is_returned_unchanged(saved: Dict[str, str]) -> None:
    conf = read_flavor_conf(saved["text-classification"])
    assert check_flavor_conf(conf) == conf
    assert conf[FlavorKey.ID2LABEL] == {"0": "NEGATIVE", "1": "NEUTRAL", "2": "POSITIVE"}


def test_a_directory_without_mlmodel_is_not_a_model(tmp_path: Any) -> None:
    from mlflow_tfexport.errors import NotATfexportModelError

    with pytest.raises(NotATfexportModelError, match="no MLmodel file"):
        read_flavor_conf(str(tmp_path))
