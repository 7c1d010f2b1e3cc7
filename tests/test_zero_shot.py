"""CLIP zero-shot image classification: a CLIPModel logged with its tokenizer and image processor, served with
images plus candidate labels like the transformers pipeline, and its ONNX variant (text and vision towers in one
graph) served without torch or transformers."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from typing import Any, Dict

import numpy as np
import pytest
from test_vision import png_bytes, sample_images
from tiny import bert_tokenizer

LABELS = ["cat", "dog", "fish"]
#: Every test here exports a model: not in the fast tier (make test-fast).
pytestmark = [pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"), pytest.mark.integration]


def tiny_clip() -> Any:
    import torch
    import transformers

    torch.manual_seed(0)
    tok = bert_tokenizer()
    text = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                max_position_embeddings=64, pad_token_id=tok.pad_token_id, eos_token_id=tok.sep_token_id,
                bos_token_id=tok.cls_token_id)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=37)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return transformers.CLIPModel(config).eval(), tok, processor


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    import mlflow_tfexport
    from mlflow_tfexport.export.api import export_to_directory

    root = tmp_path_factory.mktemp("clip")
    model, tok, processor = tiny_clip()
    mlflow_tfexport.save_model(model, str(root / "source"), tokenizer=tok, image_processor=processor)
    conf, report = export_to_directory(str(root / "source"), str(root / "onnx"), "onnx")
    # Logged with an input example that carries candidate_labels: the named columns image and candidate_labels.
    example = {"image": [base64.b64encode(png_bytes(sample_images(1)[0])).decode()], "candidate_labels": ["cat,dog"]}
    mlflow_tfexport.save_model(model, str(root / "labelled"), tokenizer=tok, image_processor=processor,
                               input_example=example)
    _, labelled_report = export_to_directory(str(root / "labelled"), str(root / "labelled-onnx"), "onnx")
    return {"source": str(root / "source"), "onnx": str(root / "onnx"), "model": model, "tok": tok,
            "processor": processor, "conf": conf, "report": report, "labelled": str(root / "labelled"),
            "labelled_onnx": str(root / "labelled-onnx"), "labelled_report": labelled_report}


def _assert_same(got: Any, expected: Any, atol: float) -> None:
    assert len(got) == len(expected)
    for g_row, e_row in zip(got, expected, strict=True):
        assert [d["label"] for d in g_row] == [d["label"] for d in e_row]
        np.testing.assert_allclose([d["score"] for d in g_row], [d["score"] for d in e_row], atol=atol, rtol=0)


def test_source_answers_like_the_transformers_pipeline(clip: Dict[str, Any]) -> None:
    import mlflow
    import transformers
    from PIL import Image

    from mlflow_tfexport.constants import FlavorKey
    from mlflow_tfexport.serving.conf import read_flavor_conf

    conf = read_flavor_conf(clip["source"])
    assert conf[FlavorKey.TASK] == "zero-shot-image-classification"  # inferred from CLIPModel
    assert conf[FlavorKey.INPUT_NAMES] == ["input_ids", "attention_mask", "pixel_values"]
    assert os.path.isdir(os.path.join(clip["source"], "tokenizer"))
    assert os.path.isdir(os.path.join(clip["source"], "image_processor"))
    images = sample_images(3)
    pipe = transformers.pipeline("zero-shot-image-classification", model=clip["model"], tokenizer=clip["tok"],
                                 image_processor=clip["processor"])
    expected = pipe([Image.fromarray(im) for im in images], candidate_labels=LABELS)
    got = mlflow.pyfunc.load_model(clip["source"]).predict([png_bytes(im) for im in images],
                                                           params={"candidate_labels": ",".join(LABELS)})
    _assert_same(got, expected, 1e-5)
    assert all(row[0]["score"] >= row[-1]["score"] for row in got)  # sorted, best first


def test_onnx_variant_answers_like_the_source(clip: Dict[str, Any]) -> None:
    import mlflow
    import pandas as pd

    assert clip["report"].passed and clip["conf"]["format"] == "onnx"
    images = [png_bytes(im) for im in sample_images(4)]
    params = {"candidate_labels": "cat, dog,fish,bird"}
    expected = mlflow.pyfunc.load_model(clip["source"]).predict(images, params=params)
    onnx = mlflow.pyfunc.load_model(clip["onnx"])
    _assert_same(onnx.predict(images, params=params), expected, 1e-4)
    # Labels per row in a column (a model logged with an example that carries them, and its ONNX export): the
    # same answers as the param for each row's own labels.
    per_row = [["cat", "dog"], "fish,bird,cat", ["cat", "dog"], ["dog"]]
    b64 = [base64.b64encode(im).decode() for im in images]
    frame = pd.DataFrame({"image": b64, "candidate_labels": per_row})
    for labelled in (clip["labelled"], clip["labelled_onnx"]):
        got = mlflow.pyfunc.load_model(labelled).predict(frame)
        for i, labels in enumerate(per_row):
            label_text = labels if isinstance(labels, str) else ",".join(labels)
            one = mlflow.pyfunc.load_model(clip["source"]).predict([images[i]], params={"candidate_labels": label_text})
            _assert_same([got[i]], one, 1e-4)


def test_an_export_of_a_source_with_candidate_labels_validates_on_its_example(clip: Dict[str, Any]) -> None:
    """The input example (image + candidate_labels) is the export's validation data: the zero-shot pyfunc answers
    it on both sides and the top labels agree (it failed with KeyError 'pixel_values' through the text pyfunc)."""
    agreement = clip["labelled_report"].agreement
    assert agreement is not None and agreement.passed and agreement.rows == 1 and agreement.value == 1.0


def test_bad_requests_say_what_to_send(clip: Dict[str, Any]) -> None:
    import mlflow

    from mlflow_tfexport.errors import BadInputError

    model = mlflow.pyfunc.load_model(clip["onnx"])
    with pytest.raises(BadInputError, match="No candidate labels") as info:
        model.predict([png_bytes(sample_images(1)[0])])
    assert info.value.get_http_status_code() == 400
    # The default schema (one unnamed image input) drops a candidate_labels column: the 400 names the way to keep it.
    encoded = [png_bytes(im) for im in sample_images(2)]
    with pytest.raises(BadInputError, match="input_example=") as info:
        model.predict({"image": encoded, "candidate_labels": ["cat,dog", "fish"]})
    from mlflow_tfexport.serving.zero_shot import split_request

    with pytest.raises(BadInputError, match="one row of labels per image"):  # MLflow refuses it first under a schema
        split_request({"image": encoded, "candidate_labels": [["a"]]}, "")


def test_an_example_with_candidate_labels_gives_named_columns(clip: Dict[str, Any]) -> None:
    from mlflow.models import Model

    for path in (clip["source"], clip["onnx"]):
        inputs = Model.load(path).signature.inputs
        assert not inputs.has_input_names() and [c.type.name for c in inputs.inputs] == ["binary"], path
    inputs = Model.load(clip["labelled"]).signature.inputs
    assert [(c.name, c.type.name) for c in inputs.inputs] == [("image", "binary"), ("candidate_labels", "string")]


def test_static_formats_are_refused_precisely(clip: Dict[str, Any], tmp_path: Any) -> None:
    from mlflow_tfexport.errors import ExportError
    from mlflow_tfexport.export.api import export_to_directory

    with pytest.raises(ExportError, match="zero-shot-image-classification.*Use format='onnx'"):
        export_to_directory(clip["source"], str(tmp_path / "ts"), "torchscript", trace_shape="2x16")


_NO_TORCH = """
import sys, json
sys.modules["torch"] = None
sys.modules["transformers"] = None
import mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict({"inputs": json.loads(sys.argv[2])}, params={"candidate_labels": "cat,dog,fish"})
assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
assert "transformers" not in [m for m in sys.modules if sys.modules[m] is not None]
print(json.dumps(out))
"""


def test_onnx_serving_without_torch(clip: Dict[str, Any]) -> None:
    import mlflow

    images = sample_images(2)
    b64 = [base64.b64encode(png_bytes(im)).decode() for im in images]
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, clip["onnx"], json.dumps(b64)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = mlflow.pyfunc.load_model(clip["source"]).predict([png_bytes(im) for im in images],
                                                                params={"candidate_labels": "cat,dog,fish"})
    _assert_same(got, expected, 1e-4)


def test_registry_round_trip(tracking_uri: str) -> None:
    """log_model -> export("models:/...") -> tags -> the ONNX version answers like the source."""
    import mlflow
    from mlflow import MlflowClient

    import mlflow_tfexport
    from mlflow_tfexport.constants import Tag

    model, tok, processor = tiny_clip()
    with mlflow.start_run():
        info = mlflow.tfexport.log_model(model, tokenizer=tok, image_processor=processor, registered_model_name="clip")
    result = mlflow_tfexport.export(f"models:/clip/{info.registered_model_version}", format="onnx")
    assert result.created and result.report is not None and result.report.passed
    tags = MlflowClient().get_model_version("clip", result.model_version.version).tags
    assert tags[Tag.FORMAT] == "onnx" and tags[Tag.TASK] == "zero-shot-image-classification"
    images = [png_bytes(im) for im in sample_images(2)]
    params = {"candidate_labels": "cat,dog"}
    expected = mlflow.pyfunc.load_model(f"models:/clip/{info.registered_model_version}").predict(images, params=params)
    _assert_same(mlflow.pyfunc.load_model(result.model_uri).predict(images, params=params), expected, 1e-4)
