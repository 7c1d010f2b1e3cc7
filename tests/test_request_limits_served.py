"""Request limits and request forms against real ``mlflow models serve`` processes (loopback only).

- 12 PNG bombs of 13000 x 13000 in one request to a tiny ViT: a 400 naming ``max_image_pixels``, and the
  server's resident memory (all its processes, sampled every 20 ms) grows by less than ``BOMB_RSS_BOUND_MB``;
- the worst generation cases of issue 24, scaled to a tiny GPT-2 (4,096 prompts x 32 beams on ONNX with
  ``batch_size`` 1024; 1,024 prompts x 32 beams on the source and TorchScript; 10,000 stop strings), with
  the limits raised so that they run into ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT=2``: each gets its 504 and
  the server (one per variant, shared by its cases) uses less than 0.6 CPU-s in the 3 s after it;
- every request form of every task (``REQUEST_FORMS``, a table of data) answers 200 from the task's ONNX variant
  with one prediction per row, and the same predictions as the plain ``{"inputs": [...]}`` form.

The cases and their measurements are ``benchmarks/request_limits.py``'s (the figures before and after).
"""

from __future__ import annotations

import base64
import json
import os
import sys
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

HERE = os.path.dirname(__file__)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "benchmarks"))

import request_limits as bench  # noqa: E402
from servers import all_at_once  # noqa: E402

import mlflow_tfexport  # noqa: E402
from mlflow_tfexport.export.api import export_to_directory  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]

#: The most the server's resident memory may grow while it refuses 12 bombs (the request is 8 MB of JSON).
BOMB_RSS_BOUND_MB = 200
#: CPU seconds the server may use in the 3 s after a 504.
CPU_AFTER_504_S = 0.6


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    return bench.build_models(str(tmp_path_factory.mktemp("limits")))


@pytest.fixture(scope="module")
def alone_servers(models: Dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dict[str, Any]]:
    """The servers of the timed cases below, started together (the cores are otherwise idle in the serial run):
    the ViT of the bombs, and one server per generation variant with the limits raised and a 2 s request timeout,
    shared by that variant's cases (each case leaves its server idle: the CPU bound below)."""
    env = {"MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": str(bench.TIMEOUT_S),
           "MLFLOW_PYFUNC_INFERENCE_CONFIG": json.dumps(bench.RAISED)}
    variants = sorted({variant for variant, _ in bench.GENERATION_CASES.values()})
    contexts = {"vit": bench.serving(models["vit"], str(tmp_path_factory.mktemp("bombs")))}
    contexts.update({v: bench.serving(models[v], str(tmp_path_factory.mktemp(f"raised-{v}")), env) for v in variants})
    with all_at_once(contexts) as servers:
        yield servers


@pytest.mark.alone  # shares the module's models with the timed cases below: built once, in the serial run
def test_twelve_png_bombs_are_refused_and_the_server_stays_small(alone_servers: Dict[str, Any]) -> None:
    result = bench.bomb_case(alone_servers["vit"])
    assert result["status"] == 400, result
    assert "max_image_pixels" in result["message"] and "13000 x 13000" in result["message"], result
    assert result["rss_growth_mb"] < BOMB_RSS_BOUND_MB, result
    assert result["small_image_status"] == 200, result  # {"inputs": ["<base64>"]}, no input example


@pytest.mark.alone  # CPU seconds after the 504: beside another worker's tests it measured 1.4 s (bound 0.6)
@pytest.mark.parametrize("case", list(bench.GENERATION_CASES))
def test_a_generation_request_stops_within_a_second_of_its_504(alone_servers: Dict[str, Any], case: str) -> None:
    variant, body = bench.GENERATION_CASES[case]
    server = alone_servers[variant]
    result = bench.timeout_case(server, body)
    assert result["status"] == 504, result
    assert result["cpu_after_s"] < CPU_AFTER_504_S, result
    assert bench.post(server, {"inputs": ["the plot"], "params": {"max_new_tokens": 2}}).status_code == 200


# --------------------------------------------------------------------------- every request form of every task

TEXTS = ["I loved this film, the plot was great.", "Paris is the capital of France."]
MASKED = ["paris is the [MASK] of france.", "the film was [MASK]."]
QUESTIONS = ["what is the capital of france?", "what was great?"]
CONTEXTS = ["paris is the capital of france.", "the plot was great."]


def _text_forms(texts: List[str], params: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    return [
        ("inputs list", {"inputs": texts, "params": params}),
        ("instances", {"instances": texts, "params": params}),
        ("dataframe_split", {"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}, "params": params}),
        ("dataframe_split without columns", {"dataframe_split": {"data": [[t] for t in texts]}, "params": params}),
        ("dataframe_records", {"dataframe_records": [{"text": t} for t in texts], "params": params}),
        ("inputs string (one row)", {"inputs": texts[0], "params": params}),
    ]


def _image_forms(images: List[str], params: Dict[str, Any]) -> List[Tuple[str, Dict[str, Any]]]:
    return [
        ("inputs list of base64", {"inputs": images, "params": params}),
        ("dataframe_split", {"dataframe_split": {"columns": ["image"], "data": [[i] for i in images]},
                             "params": params}),
        ("dataframe_split without columns", {"dataframe_split": {"data": [[i] for i in images]}, "params": params}),
        ("dataframe_records", {"dataframe_records": [{"image": i} for i in images], "params": params}),
        ("instances", {"instances": images, "params": params}),
        ("inputs base64 string (one row)", {"inputs": images[0], "params": params}),
    ]


IMAGES = [base64.b64encode(bench.small_png()).decode()] * 2
GENERATE = {"max_new_tokens": 4}
#: task -> its request forms (name, JSON body); the first form is the reference, each form has 2 rows unless its
#: name says "one row". The documented forms of docs/requests.md.
REQUEST_FORMS: Dict[str, List[Tuple[str, Dict[str, Any]]]] = {
    "feature-extraction": _text_forms(TEXTS, {}),
    # Models saved the default way: one unnamed string column (docs/logging.md#input-schema). The named
    # {"inputs": {"text": [...]}} form and text pairs need a named schema (input_schema=True or a pair example):
    # tests/test_inputs.py covers those.
    "text-classification": _text_forms(TEXTS, {"batch_size": 1}),
    "token-classification": _text_forms(TEXTS, {}),
    "fill-mask": _text_forms(MASKED, {"top_k": 2}),
    "question-answering": [
        ("inputs columns", {"inputs": {"question": QUESTIONS, "context": CONTEXTS}}),
        ("dataframe_split", {"dataframe_split": {"columns": ["question", "context"],
                                                 "data": [[q, c] for q, c in zip(QUESTIONS, CONTEXTS,
                                                                                 strict=True)]}}),
        ("dataframe_records", {"dataframe_records": [{"question": q, "context": c}
                                                     for q, c in zip(QUESTIONS, CONTEXTS, strict=True)]}),
    ],
    "text-generation": _text_forms(TEXTS, GENERATE),
    "text2text-generation": _text_forms(TEXTS, GENERATE),
    "image-classification": _image_forms(IMAGES, {"top_k": 1}),
    "image-feature-extraction": _image_forms(IMAGES, {}),
    "object-detection": _image_forms(IMAGES, {"threshold": 0.0}),
    # Image models saved the default way: one unnamed binary column (base64 in JSON). As for text, the named
    # {"inputs": {"image": [...]}} form needs a named schema (input_schema=True), and so does zero-shot's
    # candidate_labels column (or an input example that carries it): tests/test_zero_shot.py covers that.
    "zero-shot-image-classification": _image_forms(IMAGES, {"candidate_labels": "cat,dog"}),
}


#: Tasks that answer one prediction per input row (the others: several per row, e.g. fill-mask's top_k).
ONE_PREDICTION_PER_ROW = ("feature-extraction", "text-classification", "question-answering", "text-generation",
                          "text2text-generation", "image-classification", "image-feature-extraction",
                          "zero-shot-image-classification")


def _tiny_model(task: str) -> Tuple[Any, Dict[str, Any]]:
    """A tiny random model of ``task`` and the ``save_model`` arguments it needs."""
    from test_vision import IC, IFE, OD, VISION_BY_NAME, build
    from tiny import tiny

    if task in (IC, IFE, OD):
        model, processor = build(VISION_BY_NAME["YOLOS" if task == OD else "ViT"], task)
        return model, {"image_processor": processor}
    if task == "zero-shot-image-classification":
        from test_zero_shot import tiny_clip

        model, tok, processor = tiny_clip()
        return model, {"tokenizer": tok, "image_processor": processor}
    if task == "text2text-generation":
        from test_architectures import BY_NAME, T2T
        from test_architectures import build as build_text

        model, tok = build_text(BY_NAME["T5"], T2T)
        return model, {"tokenizer": tok}
    model, tok = tiny(task, "gpt2" if task == "text-generation" else "bert")
    return model, {"tokenizer": tok}


def _rows(predictions: Any) -> int:
    if isinstance(predictions, dict):  # {"predictions": ...} of a frame is a list of records
        return len(next(iter(predictions.values())))
    return len(predictions)


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-4 * max(1.0, abs(a))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return bool(a == b)


@pytest.fixture(scope="module")
def saved_tasks(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    root = tmp_path_factory.mktemp("forms")
    paths: Dict[str, str] = {}

    def saved(task: str) -> str:
        """The ONNX variant of a tiny model of ``task``: the forms are parsed before any runtime runs, and an ONNX
        server starts on about 4 CPU-seconds less than a source one (no torch, no transformers)."""
        if task not in paths:
            model, kwargs = _tiny_model(task)
            source = str(root / task)
            mlflow_tfexport.save_model(model, source, task=task, **kwargs)  # no input example
            export_to_directory(source, f"{source}-onnx", "onnx")
            paths[task] = f"{source}-onnx"
        return paths[task]

    return saved


def test_every_task_has_request_forms() -> None:
    from mlflow_tfexport.tasks import TASKS

    assert set(REQUEST_FORMS) == set(TASKS)


@pytest.fixture
def served_task(saved_tasks: Callable[[str], str], tmp_path: Any) -> Iterator[Callable[[str], Any]]:
    with_servers: List[Any] = []

    def start(task: str) -> Any:
        context = bench.serving(saved_tasks(task), str(tmp_path))
        with_servers.append(context)
        return context.__enter__()

    yield start
    for context in with_servers:
        context.__exit__(None, None, None)


@pytest.mark.parametrize("task", list(REQUEST_FORMS))
def test_every_request_form_works_for_every_task(task: str, served_task: Callable[[str], Any]) -> None:
    server = served_task(task)
    reference: Any = None
    for name, body in REQUEST_FORMS[task]:
        response = bench.post(server, body, timeout=120)
        assert response.status_code == 200, f"{task}, {name}: {response.status_code} {response.text[:400]}"
        predictions = response.json()["predictions"]
        rows = 1 if "one row" in name else 2
        assert predictions, (task, name)
        if task in ONE_PREDICTION_PER_ROW:
            assert _rows(predictions) == rows, (task, name, predictions)
        if reference is None:
            reference = predictions
        elif rows == 2 and "text_pair" not in name and "candidate_labels" not in name:
            assert _close(predictions, reference), (task, name, predictions, reference)
