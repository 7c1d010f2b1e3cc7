"""Every request's work is bounded before it is done (``serving/limits.py``), in process.

- images: decoded pixels per image and per request, checked from the image header (a PNG bomb of
  13000 x 13000 is refused before a pixel is decoded), set in ``model_config``; base64 strings in
  ``{"inputs": [...]}`` work for an image model logged without an input example;
- generation: prompts x beams x return sequences x new tokens, and the stop strings' count, length and
  bytes, refused with a 400 naming the limit and the value before anything runs; stop strings are
  matched over a window that does not grow with the text; the request's deadline is checked between
  decoding steps on every variant (source, ONNX with past, TorchScript);
- the flavor block's token ids and ``max_length`` are range-checked at load against the tokenizer and
  the model's config.

The real ``mlflow models serve`` runs (server RSS under a bomb, CPU after a 504, every request form of
every task) are in ``test_request_limits_served.py``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import sys
import time
from typing import Any, Dict, Iterator, List

import mlflow
import numpy as np
import pytest
import yaml
from helpers import tampered_copy
from mlflow.exceptions import MlflowException
from mlflow.pyfunc.scoring_server import infer_and_parse_data

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

from request_limits import png_bomb  # noqa: E402  (the benchmark's bomb: one writer of it)
from tiny import tiny  # noqa: E402

import mlflow_tfexport  # noqa: E402
from mlflow_tfexport.constants import MLMODEL_FILE, FlavorKey  # noqa: E402
from mlflow_tfexport.errors import BadInputError, FlavorConfError, RequestTimeoutError, TfexportError  # noqa: E402
from mlflow_tfexport.serving import limits  # noqa: E402
from mlflow_tfexport.serving.deadline import TIMEOUT_ENV  # noqa: E402
from mlflow_tfexport.serving.stops import SLACK, StopStrings  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]

def png(side: int = 32, seed: int = 0) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (side, side, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def served(pf: Any, body: Dict[str, Any]) -> Any:
    """Parse a JSON request as ``mlflow models serve`` does, then predict."""
    body = json.loads(json.dumps(body))
    params = body.pop("params", None)
    return pf.predict(infer_and_parse_data(body, pf.metadata.get_input_schema()), params=params)


def refused(call: Any, *fragments: str) -> str:
    with pytest.raises(MlflowException) as excinfo:
        call()
    err = excinfo.value
    assert isinstance(err, BadInputError) and err.get_http_status_code() == 400, f"{type(err)}: {err.message}"
    for fragment in fragments:
        assert fragment in err.message, err.message
    return str(err.message)


def mlmodel_config(path: str) -> Dict[str, Any]:
    with open(os.path.join(path, MLMODEL_FILE)) as f:
        return dict(yaml.safe_load(f)["flavors"]["python_function"]["config"])


# --------------------------------------------------------------------------- images


@pytest.fixture(scope="module")
def vit(tmp_path_factory: pytest.TempPathFactory) -> str:
    from test_vision import IC, VISION_BY_NAME, build

    model, processor = build(VISION_BY_NAME["ViT"], IC)
    path = str(tmp_path_factory.mktemp("vit") / "model")
    # No input schema: numpy arrays reach the model (MLflow refuses them under the default binary column).
    mlflow_tfexport.save_model(model, path, image_processor=processor, input_schema=False)
    return path


def test_a_png_bomb_is_refused_from_its_header_naming_the_limit(vit: str) -> None:
    pf = mlflow.pyfunc.load_model(vit)
    bomb = png_bomb()
    started = time.monotonic()
    message = refused(lambda: served(pf, {"inputs": [b64(png())] + [b64(bomb)] * 12}),
                      "Image 1 is 13000 x 13000", "169,000,000",
                      f"max_image_pixels={limits.IMAGE_LIMITS[limits.MAX_IMAGE_PIXELS]:,}")
    assert time.monotonic() - started < 5, "refused from the header, before decoding 507 MB"
    assert "python_function model_config" in message
    # over twice Pillow's own limit, refused by Pillow's header check: the message still names the model's limit
    refused(lambda: pf.predict([png_bomb(14000)]), "Image 0", "decompression bomb", "max_image_pixels=40,000,000")


def test_pixel_limits_per_image_and_per_request_are_set_in_model_config(vit: str) -> None:
    config = mlmodel_config(vit)
    assert config[limits.MAX_IMAGE_PIXELS] == limits.IMAGE_LIMITS[limits.MAX_IMAGE_PIXELS]
    assert config[limits.MAX_REQUEST_PIXELS] == limits.IMAGE_LIMITS[limits.MAX_REQUEST_PIXELS]
    small = mlflow.pyfunc.load_model(vit, model_config={limits.MAX_REQUEST_PIXELS: 3000})
    assert len(small.predict([png(32, 0), png(32, 1)])) == 2  # 2 x 1024 pixels
    refused(lambda: small.predict([png(32, 0), png(32, 1), png(32, 2)]), "max_request_pixels=3,000", "3,072",
            "image 2")
    arrays = [np.zeros((32, 32, 3), dtype=np.uint8)] * 3
    refused(lambda: small.predict(arrays), "max_request_pixels=3,000")  # arrays count as well
    tiny_images = mlflow.pyfunc.load_model(vit, model_config={limits.MAX_IMAGE_PIXELS: 1000})
    refused(lambda: tiny_images.predict([png(32)]), "Image 0 is 32 x 32", "max_image_pixels=1,000")
    for bad in (0, -1, "many", 2**50):
        with pytest.raises(TfexportError, match=f"model_config max_image_pixels={bad!r}"):
            mlflow.pyfunc.load_model(vit, model_config={limits.MAX_IMAGE_PIXELS: bad})


def test_base64_inputs_work_for_an_image_model_logged_without_an_input_example(vit: str) -> None:
    pf = mlflow.pyfunc.load_model(vit)
    images = [b64(png(32, 0)), b64(png(32, 1))]
    reference = pf.predict([base64.b64decode(s) for s in images])
    for body in ({"inputs": images}, {"inputs": {"image": images}},
                 {"dataframe_records": [{"image": s} for s in images]},
                 {"dataframe_split": {"columns": ["image"], "data": [[s] for s in images]}}):
        got = served(pf, body)
        assert list(got["label"]) == list(reference["label"]), body.keys()
        np.testing.assert_allclose(got["score"], reference["score"], atol=1e-6)
    one = served(pf, {"inputs": images[0]})
    assert list(one["label"]) == list(reference["label"][:1])


# --------------------------------------------------------------------------- generation


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    from mlflow_tfexport.export.api import export_to_directory

    root = tmp_path_factory.mktemp("gpt2")
    model, tok = tiny("text-generation", "gpt2")
    paths = {"source": str(root / "source"), "onnx": str(root / "onnx"), "torchscript": str(root / "torchscript")}
    mlflow_tfexport.save_model(model, paths["source"], tokenizer=tok)
    export_to_directory(paths["source"], paths["onnx"], "onnx")
    export_to_directory(paths["source"], paths["torchscript"], "torchscript", trace_shape="1x32")
    return paths


def _never_decodes(pf: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = pf._model_impl.runner

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model ran")

    for name in ("decode", "run", "step"):
        if hasattr(runner, name):
            monkeypatch.setattr(runner, name, boom)


def test_generation_work_is_refused_before_any_work_naming_the_limit(gpt2: Dict[str, str],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    pf = mlflow.pyfunc.load_model(gpt2["onnx"])
    assert mlmodel_config(gpt2["onnx"])[limits.MAX_GENERATION_TOKENS] == \
        limits.GENERATION_LIMITS[limits.MAX_GENERATION_TOKENS]
    _never_decodes(pf, monkeypatch)
    prompts = ["the plot"] * 4096
    refused(lambda: served(pf, {"inputs": prompts, "params": {"num_beams": 32, "batch_size": 1024}}),
            "4096 x 32 x 1 x 20", "2,621,440", "max_generation_tokens=262,144")
    refused(lambda: pf.predict(["a"] * 256, params={"do_sample": True, "num_return_sequences": 32,
                                                    "max_new_tokens": 40}),
            "256 x 1 x 32 x 40", "327,680", "max_generation_tokens")
    stops = [f"stop{i}" for i in range(10_000)]
    refused(lambda: served(pf, {"inputs": ["the plot"], "params": {"stop": stops}}), "10,000",
            "max_stop_strings=16")
    refused(lambda: pf.predict(["the plot"], params={"stop": ["x" * 300]}), "300", "max_stop_string_chars=256")
    refused(lambda: pf.predict(["the plot"], params={"stop": ["é" * 200 + str(i) for i in range(16)]}),
            "max_stop_bytes=4,096", "6,422")
    refused(lambda: list(pf.predict_stream("the plot", params={"stop": stops})), "max_stop_strings=16")
    raised = mlflow.pyfunc.load_model(gpt2["onnx"], model_config={limits.MAX_STOP_STRINGS: 20_000})
    assert len(raised.predict(["the plot"], params={"stop": stops[:20], "max_new_tokens": 3})) == 1


def _scanned(steps: int) -> int:
    """Characters searched for 16 stop strings of up to 256 characters while a text grows a character a step."""
    stops = StopStrings([("zq" * 128)[:256 - i] for i in range(16)])
    rng = random.Random(0)
    text, tokens = "", []
    for step in range(steps):
        text += rng.choice("abcdefgh ")
        tokens.append(step)
        assert not stops.stopped(0, tokens, text)
    text += "zq" * 128
    tokens.append(steps)
    assert stops.stopped(0, tokens, text)
    assert stops.scanned <= (steps + 1) * len(stops.stops) * (stops.longest + SLACK + 256)
    return stops.scanned


def test_stop_strings_are_matched_over_a_window_not_the_whole_text() -> None:
    """Per step, the search covers the stop strings' length plus the new token's text, whatever the text's
    length: twice the steps scan twice the characters (a whole-text search: four times)."""
    ratio = _scanned(20_000) / _scanned(10_000)
    assert 1.8 < ratio < 2.2, ratio


def test_windowed_matching_finds_what_a_whole_text_search_finds() -> None:
    rng = random.Random(1)
    for _ in range(300):
        stops = StopStrings(["".join(rng.choice("ab") for _ in range(rng.randint(1, 4))) for _ in range(3)])
        text, tokens, found_at = "", [], None
        for step in range(40):
            text += "".join(rng.choice("abc") for _ in range(rng.randint(1, 3)))
            tokens.append(step)
            if stops.stopped(0, tokens, text):
                found_at = len(text)
                break
        naive = [i for i in (text.find(s) for s in stops.stops) if i >= 0]
        assert (found_at is not None) == bool(naive)
        if naive:
            assert stops.cut(text) == (text[:min(naive)], True)


@pytest.mark.parametrize("variant", ["source", "onnx", "torchscript"])
def test_the_deadline_is_checked_between_decoding_steps(gpt2: Dict[str, str], variant: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """One prompt, one chunk: a request whose deadline passes while it decodes stops at the next step (the
    deadline used to be checked only between chunks of prompts)."""
    pf = mlflow.pyfunc.load_model(gpt2[variant])
    runner = pf._model_impl.runner
    steps: List[int] = []
    if variant == "source":
        model = runner.model
        forward = model.forward

        def slow_forward(*args: Any, **kwargs: Any) -> Any:
            steps.append(1)
            time.sleep(0.05)
            return forward(*args, **kwargs)

        monkeypatch.setattr(model, "forward", slow_forward)
    else:
        name = "step" if variant == "onnx" else "run"
        original = getattr(runner, name)

        def slow(*args: Any, **kwargs: Any) -> Any:
            steps.append(1)
            time.sleep(0.05)
            return original(*args, **kwargs)

        monkeypatch.setattr(runner, name, slow)
    params = {"max_new_tokens": 30, "num_beams": 2}
    monkeypatch.setenv(TIMEOUT_ENV, "1")
    started = time.monotonic()
    with pytest.raises(RequestTimeoutError, match="new tokens done") as excinfo:
        pf.predict(["the plot was"], params=params)
    assert excinfo.value.get_http_status_code() == 504
    assert time.monotonic() - started < 2.5  # one step past the deadline (the machine may be loaded)
    assert len(steps) < 30, len(steps)
    monkeypatch.delenv(TIMEOUT_ENV)
    assert len(pf.predict(["the plot was"], params={"max_new_tokens": 3})) == 1


# --------------------------------------------------------------------------- flavor-block ranges


@pytest.fixture
def tampered(gpt2: Dict[str, str], tmp_path: Any) -> Iterator[Any]:
    """``tampered(variant, **fields)``: a copy of a saved GPT-2 variant whose flavor block has ``fields``."""

    def make(variant: str, **fields: Any) -> str:
        return tampered_copy(gpt2[variant], str(tmp_path), **fields)

    yield make


@pytest.mark.parametrize("variant", ["source", "onnx"])
@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        (FlavorKey.PAD_TOKEN_ID, 10**6, "a token id from 0 to"),
        (FlavorKey.EOS_TOKEN_ID, 5000, "a token id from 0 to"),
        (FlavorKey.MASK_TOKEN_ID, 100_000, "a token id from 0 to"),
        (FlavorKey.MAX_LENGTH, 100_000, "at most 64"),
    ],
)
def test_flavor_numbers_that_index_the_vocabulary_or_positions_are_range_checked_at_load(
        tampered: Any, variant: str, field: str, value: int, expected: str) -> None:
    path = tampered(variant, **{field: value})
    with pytest.raises(FlavorConfError) as excinfo:
        mlflow.pyfunc.load_model(path)
    message = excinfo.value.message
    assert f"field {field!r} is {value!r}" in message and expected in message, message
    assert ("config.json" if variant == "source" else "tokenizer") in message, message
