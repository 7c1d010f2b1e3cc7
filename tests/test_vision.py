"""Vision and multimodal models: the image preprocessing, the image pyfunc, and the vision matrix.

``VISION_ARCHITECTURES`` says, per architecture, how to build a tiny random
model (model class + config kwargs per task) and its image processor. Each cell
saves the model with its image processor as a tfexport source, exports it to
ONNX (dynamic batch; dynamic height and width for object detection), validates
it against the eager model at another batch size (and image size), and compares
the exported variant's pyfunc answers on real images with the source's: the
source variant runs the eager model on the same numpy preprocessing, which is
itself checked equal to the transformers image processors below, so the two
pyfuncs differ only by the exported graph. Cells that cannot work name the
error they must raise. ``benchmarks/support_table.py`` renders these cells too.
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

IC, IFE, OD, FE = "image-classification", "image-feature-extraction", "object-detection", "feature-extraction"
LABELS = {0: "cat", 1: "dog", 2: "fish"}

_VIT = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=37)
_CONV = dict(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)
_LEVIT = dict(image_size=64, patch_size=16, hidden_sizes=[16, 32, 48], num_attention_heads=[1, 2, 3],
              depths=[1, 1, 1], key_dim=[8, 8, 8],
              down_ops=[["Subsample", 8, 1, 4, 2, 2], ["Subsample", 8, 2, 4, 2, 2]])
_MOBILEVIT = dict(image_size=32, hidden_sizes=[16, 16, 16], neck_hidden_sizes=[8, 8, 8, 8, 8, 16, 32],
                  num_attention_heads=2, patch_size=2)
_RESNET = dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
_DETR_SIZE = {"shortest_edge": 32, "longest_edge": 48}
_STATIC_DETECTION = "cannot be exported to torchscript: a detector's output depends on the size of the canvas"


@dataclass(frozen=True)
class VisionArch:
    """One row of the vision matrix."""

    name: str
    config: str
    kwargs: Mapping[str, Any]
    models: Mapping[str, str]  # task -> model class
    processor: str  # transformers image processor class
    processor_kwargs: Mapping[str, Any]
    unsupported: Mapping[str, str] = field(default_factory=dict)  # task -> start of the error it must raise
    #: task -> the error a static-shape export (TorchScript) must raise, where the ONNX export works.
    static_unsupported: Mapping[str, str] = field(default_factory=dict)

    @property
    def tasks(self) -> Tuple[str, ...]:
        return tuple(self.models)


def _arch(name: str, config: str, kwargs: Mapping[str, Any], prefix: str, processor: str,
          processor_kwargs: Mapping[str, Any]) -> VisionArch:
    return VisionArch(name, config, kwargs, {IC: f"{prefix}ForImageClassification", IFE: f"{prefix}Model"},
                      processor, processor_kwargs)


_SQUARE = {"size": {"height": 32, "width": 32}}
VISION_ARCHITECTURES: Tuple[VisionArch, ...] = (
    _arch("ViT", "ViTConfig", _VIT, "ViT", "ViTImageProcessor", _SQUARE),
    _arch("DeiT", "DeiTConfig", _VIT, "DeiT", "DeiTImageProcessor",
          {"size": {"height": 40, "width": 40}, "crop_size": {"height": 32, "width": 32}}),
    _arch("BEiT", "BeitConfig", _VIT, "Beit", "BeitImageProcessor", _SQUARE),
    _arch("ResNet", "ResNetConfig", _RESNET, "ResNet", "ConvNextImageProcessor", {"size": {"shortest_edge": 32}}),
    _arch("ConvNeXT", "ConvNextConfig", _CONV, "ConvNext", "ConvNextImageProcessor", {"size": {"shortest_edge": 32}}),
    _arch("ConvNeXTV2", "ConvNextV2Config", _CONV, "ConvNextV2", "ConvNextImageProcessor",
          {"size": {"shortest_edge": 32}}),
    _arch("LeViT", "LevitConfig", _LEVIT, "Levit", "LevitImageProcessor",
          {"size": {"shortest_edge": 64}, "crop_size": {"height": 64, "width": 64}}),
    _arch("MobileViT", "MobileViTConfig", _MOBILEVIT, "MobileViT", "MobileViTImageProcessor",
          {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}),
    _arch("Data2VecVision", "Data2VecVisionConfig", _VIT, "Data2VecVision", "BeitImageProcessor", _SQUARE),
    VisionArch("YOLOS", "YolosConfig", {**_VIT, "image_size": [32, 32], "num_detection_tokens": 5},
               {OD: "YolosForObjectDetection"}, "YolosImageProcessor", {"size": _DETR_SIZE},
               static_unsupported={OD: _STATIC_DETECTION}),
    VisionArch("DETR", "DetrConfig",
               dict(use_timm_backbone=False, use_pretrained_backbone=False, d_model=32, encoder_layers=1,
                    decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=37,
                    decoder_ffn_dim=37, num_queries=5),
               {OD: "DetrForObjectDetection"}, "DetrImageProcessor", {"size": _DETR_SIZE},
               static_unsupported={OD: _STATIC_DETECTION}),
    # Multimodal and others from the export docs' list.
    VisionArch("CLIP (vision tower)", "CLIPVisionConfig", _VIT, {IFE: "CLIPVisionModel"}, "CLIPImageProcessor",
               {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}),
    VisionArch("CLIP (joint model)", "CLIPConfig", {}, {FE: "CLIPModel"}, "CLIPImageProcessor",
               {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}},
               unsupported={FE: "scores images against texts: pass tokenizer= and image_processor="}),
    VisionArch("LayoutLMv3", "LayoutLMv3Config", {}, {FE: "LayoutLMv3Model"}, "LayoutLMv3ImageProcessor",
               {"size": {"height": 32, "width": 32}, "apply_ocr": False},
               unsupported={FE: "takes text, word boxes and the page image together"}),
    VisionArch("Perceiver", "PerceiverConfig",
               dict(num_latents=8, d_latents=32, d_model=32, num_blocks=1, num_self_attends_per_block=1,
                    num_self_attention_heads=2, num_cross_attention_heads=1, image_size=32, qk_channels=32,
                    v_channels=32),
               {IC: "PerceiverForImageClassificationLearned"}, "PerceiverImageProcessor",
               {"size": {"height": 32, "width": 32}, "crop_size": {"height": 32, "width": 32}},
               unsupported={IC: "PerceiverImageProcessor is not reproduced by the serving preprocessing"}),
    VisionArch("Perceiver (no centre crop)", "PerceiverConfig",
               dict(num_latents=8, d_latents=32, d_model=32, num_blocks=1, num_self_attends_per_block=1,
                    num_self_attention_heads=2, num_cross_attention_heads=1, image_size=32, qk_channels=32,
                    v_channels=32),
               {IC: "PerceiverForImageClassificationLearned"}, "PerceiverImageProcessor",
               {"size": {"height": 32, "width": 32}, "do_center_crop": False}),
)
VISION_BY_NAME: Dict[str, VisionArch] = {a.name: a for a in VISION_ARCHITECTURES}
VISION_CELLS: List[Tuple[str, str]] = [(a.name, task) for a in VISION_ARCHITECTURES for task in a.tasks]
ONNX, TORCHSCRIPT = "onnx", "torchscript"
#: The cells also exported to TorchScript: every architecture the serving preprocessing reproduces.
VISION_TS_CELLS: List[Tuple[str, str]] = [(a, t) for a, t in VISION_CELLS if t not in VISION_BY_NAME[a].unsupported]
#: The buckets of a vision TorchScript export: batch 2 (a 3-image request is chunked, its last chunk padded).
VISION_TRACE_BATCH = 2


def build(arch: VisionArch, task: str, seed: int = 0) -> Tuple[Any, Any]:
    """A tiny random ``(model, image_processor)``."""
    import torch
    import transformers

    torch.manual_seed(seed)
    kwargs: Dict[str, Any] = dict(arch.kwargs)
    if arch.config == "DetrConfig":
        kwargs["backbone_config"] = transformers.ResNetConfig(**_RESNET, out_features=["stage2"])
    if task in (IC, OD):
        kwargs.update(num_labels=len(LABELS), id2label=dict(LABELS), label2id={v: k for k, v in LABELS.items()})
    config = getattr(transformers, arch.config)(**kwargs)
    model = getattr(transformers, arch.models[task])(config).eval()
    processor = getattr(transformers, arch.processor)(**arch.processor_kwargs)
    return model, processor


def sample_images(n: int = 3, seed: int = 0) -> List[np.ndarray]:
    """Images of different sizes and aspect ratios (HxWx3 uint8)."""
    rng = np.random.default_rng(seed)
    shapes = [(48, 64), (75, 50), (33, 33), (64, 40)]
    return [rng.integers(0, 256, (*shapes[i % len(shapes)], 3), dtype=np.uint8) for i in range(n)]


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class VisionCellResult:
    arch: str
    task: str
    passed: bool
    detail: str
    seconds: float
    expected_error: Optional[str] = None
    exporter: str = "legacy"
    format: str = "onnx"

    @property
    def as_expected(self) -> bool:
        if self.expected_error is None:
            return self.passed
        return not self.passed and self.expected_error in self.detail


def compare_predictions(source_dir: str, exported_dir: str, task: str, images: List[np.ndarray]) -> None:
    """The exported variant's pyfunc answers like the source's."""
    from mlflow.pyfunc import load_model

    params = {"threshold": 0.0} if task == OD else None  # random detectors are unsure: keep every box
    encoded = [png_bytes(im) for im in images]  # the default schema takes encoded images
    src: Any = load_model(source_dir).predict(encoded, params=params)
    got: Any = load_model(exported_dir).predict(encoded, params=params)
    if task == IC:
        assert list(got["label"]) == list(src["label"])
        np.testing.assert_allclose(np.asarray(got["score"]), np.asarray(src["score"]), atol=1e-4, rtol=0)
    elif task == IFE:
        np.testing.assert_allclose(np.asarray(got), np.asarray(src), atol=1e-4, rtol=0)
    else:
        assert [[d["label"] for d in row] for row in got] == [[d["label"] for d in row] for row in src]
        for g_row, s_row in zip(got, src, strict=True):
            np.testing.assert_allclose([d["score"] for d in g_row], [d["score"] for d in s_row], atol=1e-4, rtol=0)
            for g, s in zip(g_row, s_row, strict=True):  # integer pixel corners: off by one at most
                assert all(abs(g["box"][k] - s["box"][k]) <= 1 for k in g["box"]), (g, s)


def run_vision_cell(arch_name: str, task: str, fmt: str = ONNX) -> VisionCellResult:
    """Save, export (no registry), validate and compare the pyfuncs of one cell; errors become a failed result.
    TorchScript cells trace one bucket of batch ``VISION_TRACE_BATCH`` at the model's image height."""
    import mlflow_tfexport
    from mlflow_tfexport.export.api import export_to_directory
    from mlflow_tfexport.serving.conf import read_flavor_conf

    arch = VISION_BY_NAME[arch_name]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tfexport-vision-") as root:
        try:
            model, processor = build(arch, task)
            source = os.path.join(root, "source")
            mlflow_tfexport.save_model(model, source, image_processor=processor, task=task)
            exported = os.path.join(root, fmt)
            if fmt == ONNX:
                _, report = export_to_directory(source, exported, fmt)
            else:
                height = read_flavor_conf(source)["image_size"][0]
                _, report = export_to_directory(source, exported, fmt, trace_shape=f"{VISION_TRACE_BATCH}x{height}")
            compare_predictions(source, exported, task, sample_images())
            passed, detail = True, f"max abs diff {report.max_abs_diff:.1e} (atol {report.atol:g})"
        except Exception as exc:  # noqa: BLE001 - a cell records whatever went wrong
            passed, detail = False, f"{type(exc).__name__}: {exc}".splitlines()[0]
    expected = arch.unsupported.get(task) or (arch.static_unsupported.get(task) if fmt != ONNX else None)
    return VisionCellResult(arch_name, task, passed, detail, time.perf_counter() - started, expected, format=fmt)


# --------------------------------------------------------------------------- tests

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]
#: The cells build their own models (only the few ``vit_dirs`` tests share one): ``make test`` spreads them over
#: its workers (tests/conftest.py).
SPREAD_OVER_WORKERS = True


@pytest.mark.parametrize("cell", VISION_CELLS, ids=lambda c: f"{c[0]}-{c[1]}".replace(" ", "_"))
def test_vision_export_validates(cell: Tuple[str, str]) -> None:
    result = run_vision_cell(*cell)
    if result.expected_error is not None:
        assert not result.passed, f"{cell} was expected to fail with {result.expected_error!r}"
        assert result.expected_error in result.detail, result.detail
        assert result.detail.startswith("TfexportError"), result.detail
    else:
        assert result.passed, result.detail


@pytest.mark.parametrize("cell", VISION_TS_CELLS, ids=lambda c: f"{c[0]}-{c[1]}".replace(" ", "_"))
def test_vision_torchscript_export_validates(cell: Tuple[str, str]) -> None:
    """TorchScript buckets over the batch size (the image size is the processor's): validated against the eager
    model, and the variant's pyfunc answers real images like the source's; detectors are refused precisely."""
    result = run_vision_cell(*cell, fmt=TORCHSCRIPT)
    if result.expected_error is not None:
        assert not result.passed and result.expected_error in result.detail, result.detail
        assert result.detail.startswith("ExportError") and "format='onnx'" in result.detail, result.detail
    else:
        assert result.passed, result.detail


def test_vision_torchscript_trace_shape_must_be_the_image_height(tmp_path: Any) -> None:
    import mlflow_tfexport
    from mlflow_tfexport.errors import ExportError
    from mlflow_tfexport.export.api import export_to_directory

    model, processor = build(VISION_BY_NAME["ViT"], IC)
    mlflow_tfexport.save_model(model, str(tmp_path / "src"), image_processor=processor)
    with pytest.raises(ExportError, match=r"fixed by its image processor at 32x32.*trace_shape='2x32'"):
        export_to_directory(str(tmp_path / "src"), str(tmp_path / "ts"), TORCHSCRIPT, trace_shape="2x128")
    assert not os.path.exists(tmp_path / "ts")


PROCESSORS = {
    "ViT": ("ViTImageProcessor", {"size": {"height": 32, "width": 32}}),
    "ViT (default 224)": ("ViTImageProcessor", {}),
    "DeiT (resize + crop)": ("DeiTImageProcessor", {"size": {"height": 40, "width": 40},
                                                    "crop_size": {"height": 32, "width": 32}}),
    "ConvNeXT (crop_pct)": ("ConvNextImageProcessor", {"size": {"shortest_edge": 32}}),
    "ConvNeXT (384, warp)": ("ConvNextImageProcessor", {}),
    "ResNet": ("ConvNextImageProcessor", {"size": {"shortest_edge": 224}, "crop_pct": 0.875}),
    "LeViT": ("LevitImageProcessor", {"size": {"shortest_edge": 64}, "crop_size": {"height": 64, "width": 64}}),
    "MobileViT (BGR)": ("MobileViTImageProcessor", {"size": {"shortest_edge": 32},
                                                    "crop_size": {"height": 32, "width": 32}}),
    "BEiT": ("BeitImageProcessor", {"size": {"height": 32, "width": 32}}),
    "CLIP": ("CLIPImageProcessor", {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}),
    "DETR (pad + mask)": ("DetrImageProcessor", {"size": {"shortest_edge": 40, "longest_edge": 64}}),
    "DETR (default 800/1333)": ("DetrImageProcessor", {}),
    "YOLOS": ("YolosImageProcessor", {"size": {"shortest_edge": 40, "longest_edge": 64}}),
    "Perceiver (no centre crop)": ("PerceiverImageProcessor", {"size": {"height": 32, "width": 32},
                                                               "do_center_crop": False}),
}


@pytest.mark.parametrize("name", list(PROCESSORS))
def test_preprocessing_matches_transformers(name: str) -> None:
    """The numpy/Pillow preprocessing equals the transformers image processor's output."""
    import transformers

    from mlflow_tfexport.serving.images import ImagePreprocessor

    cls, kwargs = PROCESSORS[name]
    processor = getattr(transformers, cls)(**kwargs)
    ours = ImagePreprocessor(processor.to_dict())
    images = sample_images(4) if ours.do_pad else sample_images(1)
    expected = processor(images=images, return_tensors="np")
    got = ours(images, ("pixel_values", "pixel_mask"))
    assert got.feeds["pixel_values"].shape == expected["pixel_values"].shape
    np.testing.assert_allclose(got.feeds["pixel_values"], expected["pixel_values"], atol=1e-5, rtol=0)
    if "pixel_mask" in expected:
        np.testing.assert_array_equal(got.feeds["pixel_mask"], expected["pixel_mask"])


@pytest.fixture(scope="module")
def vit_dirs(tmp_path_factory: pytest.TempPathFactory) -> Tuple[str, str]:
    import mlflow_tfexport
    from mlflow_tfexport.export.api import export_to_directory

    root = tmp_path_factory.mktemp("vit")
    model, processor = build(VISION_BY_NAME["ViT"], IC)
    mlflow_tfexport.save_model(model, str(root / "source"), image_processor=processor)
    export_to_directory(str(root / "source"), str(root / "onnx"), "onnx")
    return str(root / "source"), str(root / "onnx")


@pytest.fixture(scope="module")
def vit_bare(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A ViT saved without an input schema (input_schema=False): what takes numpy pixel arrays in process."""
    import mlflow_tfexport

    path = str(tmp_path_factory.mktemp("vit") / "bare")
    model, processor = build(VISION_BY_NAME["ViT"], IC)
    mlflow_tfexport.save_model(model, path, image_processor=processor, input_schema=False)
    return path


def test_request_forms_agree(vit_dirs: Tuple[str, str], vit_bare: str) -> None:
    """Under the default input schema (one unnamed binary column): PNG bytes, base64 strings, PIL images, a
    DataFrame column, dataframe records, {"inputs": ...}, {"image": ...} and one image alone give the answer
    numpy arrays give to the same model saved without an input schema."""
    import pandas as pd
    from mlflow.models import Model
    from mlflow.pyfunc import load_model
    from PIL import Image


    model = load_model(vit_dirs[1])
    inputs = Model.load(vit_dirs[1]).signature.inputs
    assert inputs is not None and not inputs.has_input_names() and [c.type.name for c in inputs.inputs] == ["binary"]
    images = sample_images(2)
    encoded = [png_bytes(im) for im in images]
    b64 = [base64.b64encode(b).decode() for b in encoded]
    reference = load_model(vit_dirs[1]).predict(encoded)
    bare_model = load_model(vit_bare)
    arrays = bare_model.predict(images)  # a different random model: compare its own forms
    assert list(bare_model.predict(encoded)["label"]) == list(arrays["label"])
    forms = (encoded, b64, pd.DataFrame({"image": b64}), pd.DataFrame({"image": encoded}), {"inputs": b64},
             {"image": b64}, {"image": encoded}, [{"image": s} for s in b64], [Image.fromarray(im) for im in images])
    for form in forms:
        got = model.predict(form)
        assert list(got["label"]) == list(reference["label"])
        np.testing.assert_allclose(got["score"], reference["score"], atol=1e-6)
    for one in (encoded[0], b64[0]):
        single = model.predict(one)
        assert len(single) == 1 and single["label"][0] == reference["label"][0]
    top = model.predict(encoded, params={"top_k": 3})
    assert len(top) == 6 and list(top.columns) == ["label", "score"]


def test_an_export_of_a_source_without_input_schema_gets_the_default(vit_bare: str, tmp_path: Any) -> None:
    """Sources logged before images had a default (or with input_schema=False): the export writes the default,
    so MLServer can load the variant."""
    from mlflow.models import Model

    from mlflow_tfexport.export.api import export_to_directory

    assert Model.load(vit_bare).signature.inputs is None
    export_to_directory(vit_bare, str(tmp_path / "onnx"), "onnx")
    inputs = Model.load(str(tmp_path / "onnx")).signature.inputs
    assert inputs is not None and not inputs.has_input_names() and [c.type.name for c in inputs.inputs] == ["binary"]


def test_pixel_arrays_in_process_need_a_model_without_input_schema(vit_dirs: Tuple[str, str], tmp_path: Any) -> None:
    """MLflow refuses numpy pixel arrays under any column schema, before the model sees them; an input example
    of arrays keeps the model without an input schema (as input_schema=False does), which takes them."""
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model
    from mlflow.pyfunc import load_model

    import mlflow_tfexport

    images = sample_images(2)
    with pytest.raises(MlflowException, match="Failed to enforce schema"):
        load_model(vit_dirs[1]).predict(images)
    model, processor = build(VISION_BY_NAME["ViT"], IC)
    batch = np.stack([images[0], images[0]])
    mlflow_tfexport.save_model(model, str(tmp_path / "m"), image_processor=processor, input_example=batch)
    assert Model.load(str(tmp_path / "m")).signature.inputs is None
    loaded = load_model(str(tmp_path / "m"))
    by_bytes = loaded.predict([png_bytes(im) for im in images])
    assert list(loaded.predict(images)["label"]) == list(by_bytes["label"])
    assert list(loaded.predict(batch)["label"]) == [by_bytes["label"][0]] * 2


@pytest.mark.parametrize(
    "bad, message",
    [
        (["not an image"], "not base64"),
        ([b"\x00\x01garbage"], "not an image Pillow can decode"),
        ([np.zeros((8, 8, 3), dtype=np.float32)], "dtype uint8"),
        ([np.zeros((8, 8, 5), dtype=np.uint8)], "HxWx3"),
        ([3.5], "expected an image"),
        ({"text": ["a"], "other": [1]}, "Expected a dict with one key"),
    ],
)
def test_bad_inputs(vit_dirs: Tuple[str, str], vit_bare: str, bad: Any, message: str) -> None:
    from mlflow.pyfunc import load_model

    from mlflow_tfexport.errors import BadInputError

    # Under the default (one unnamed binary column) MLflow refuses arrays and numbers before the model, and keeps
    # only the first column of a dict: our own checks of those run on a model without an input schema.
    bare = not (isinstance(bad, list) and isinstance(bad[0], (str, bytes)))
    with pytest.raises(BadInputError, match=message) as info:
        load_model(vit_bare if bare else vit_dirs[1]).predict(bad)
    assert info.value.get_http_status_code() == 400


def test_flavor_facts_and_files(vit_dirs: Tuple[str, str]) -> None:
    from mlflow_tfexport.constants import FlavorKey
    from mlflow_tfexport.serving.conf import read_flavor_conf

    source, exported = vit_dirs
    for path in (source, exported):
        conf = read_flavor_conf(path)
        assert conf[FlavorKey.TASK] == IC and conf[FlavorKey.INPUT_NAMES] == ["pixel_values"]
        assert conf[FlavorKey.IMAGE_SIZE] == [32, 32]
        assert conf[FlavorKey.IMAGE_PREPROCESSING]["resample"] == "bilinear"
        assert os.path.exists(os.path.join(path, "image_processor", "preprocessor_config.json"))
        assert not os.path.exists(os.path.join(path, "tokenizer"))
        with open(os.path.join(path, "requirements.txt")) as f:
            assert "pillow" in f.read().lower()


def test_logging_errors() -> None:
    import mlflow_tfexport
    from mlflow_tfexport.errors import TfexportError

    model, _ = build(VISION_BY_NAME["ViT"], IC)
    with tempfile.TemporaryDirectory() as root, pytest.raises(TfexportError, match="image_processor="):
        mlflow_tfexport.save_model(model, os.path.join(root, "m"))
    with tempfile.TemporaryDirectory() as root, pytest.raises(TfexportError, match="cannot do task"):
        mlflow_tfexport.save_model(model, os.path.join(root, "m"), image_processor=build(
            VISION_BY_NAME["ViT"], IC)[1], task="object-detection")


def test_pipeline_brings_its_image_processor(tmp_path: Any) -> None:
    import transformers

    import mlflow_tfexport
    from mlflow_tfexport.serving.conf import read_flavor_conf

    model, processor = build(VISION_BY_NAME["ConvNeXT"], IFE)
    pipe = transformers.pipeline("image-feature-extraction", model=model, image_processor=processor)
    mlflow_tfexport.save_model(pipe, str(tmp_path / "m"))
    assert read_flavor_conf(str(tmp_path / "m"))["task"] == IFE


def test_registry_round_trip(tracking_uri: str) -> None:
    """log_model -> export("models:/...") -> tags -> the ONNX version's pyfunc answers like the source's."""
    import mlflow
    from mlflow import MlflowClient

    import mlflow_tfexport
    from mlflow_tfexport.constants import Format, Tag

    model, processor = build(VISION_BY_NAME["ViT"], IC)
    with mlflow.start_run():
        info = mlflow.tfexport.log_model(model, image_processor=processor, registered_model_name="vit")
    result = mlflow_tfexport.export(f"models:/vit/{info.registered_model_version}", format="onnx")
    assert result.created and result.report is not None and result.report.passed
    tags = MlflowClient().get_model_version("vit", result.model_version.version).tags
    assert tags[Tag.FORMAT] == Format.ONNX and tags[Tag.TASK] == IC and tags[Tag.VALIDATED_SHAPE] == "3x32"
    images = [png_bytes(im) for im in sample_images(3)]
    src = mlflow.pyfunc.load_model(f"models:/vit/{info.registered_model_version}").predict(images)
    got = mlflow.pyfunc.load_model(result.model_uri).predict(images)
    assert list(got["label"]) == list(src["label"])
    np.testing.assert_allclose(got["score"], src["score"], atol=1e-4)


_NO_TORCH = """
import sys, base64, json
sys.modules["torch"] = None
sys.modules["transformers"] = None
import mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[1])
images = json.loads(sys.argv[2])
out = model.predict({"inputs": images})
assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
assert "transformers" not in [m for m in sys.modules if sys.modules[m] is not None]
print(json.dumps(list(out["label"])))
"""


def test_onnx_serving_without_torch(vit_dirs: Tuple[str, str]) -> None:
    """A fresh interpreter where torch and transformers cannot be imported serves the ONNX variant."""
    import json

    from mlflow.pyfunc import load_model

    images = sample_images(2)
    b64 = [base64.b64encode(png_bytes(im)).decode() for im in images]
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, vit_dirs[1], json.dumps(b64)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    labels = json.loads(proc.stdout.strip().splitlines()[-1])
    assert labels == list(load_model(vit_dirs[0]).predict([png_bytes(im) for im in images])["label"])
