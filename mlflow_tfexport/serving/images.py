"""Image requests: decode what a pyfunc receives, and preprocess it as the saved image processor would.

Serving path: numpy and Pillow only (no torch, no transformers), Python 3.10.
``ImagePreprocessor`` reads the ``preprocessor_config.json`` that
``image_processor.save_pretrained`` wrote and reproduces the Pillow/numpy
image processors of transformers: resize with the processor's resample filter
and size rule (exact ``height``/``width``; ``shortest_edge``; ConvNeXT's
``crop_pct``; LeViT's 256/224 rule; DETR's ``shortest_edge``/``longest_edge``),
centre crop, rescale, normalise, MobileViT's channel flip, channels-first, and
DETR's padding to the largest image of the batch with a ``pixel_mask``.

Images arrive as raw bytes (PNG, JPEG, ...), base64 strings of those bytes (what
``mlflow models serve`` receives in JSON), numpy arrays (``HxWx3`` or ``HxW``
uint8) or PIL images: in a list, a DataFrame column ``image``, ``{"inputs": ...}``
or alone.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport._lazy import require
from mlflow_tfexport.errors import BadInputError, TfexportError
from mlflow_tfexport.serving.limits import Limits

PREPROCESSOR_FILE = "preprocessor_config.json"
IMAGE_COLUMN = "image"
#: Pillow's resampling filters by the integer transformers stores in ``resample``.
#: Image processors whose resize differs from the generic size rules, by class-name prefix.
_RULES = (("ConvNext", "convnext"), ("Levit", "levit"), ("Yolos", "yolos"))
#: Image processors whose steps the numpy preprocessing does not reproduce, and why.
#: Each applies only while the processor's ``do_center_crop`` is on; the message says how to turn it off.
_UNSUPPORTED = (("Perceiver", "it centre-crops before resizing, by a ratio of crop_size to size"),)
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _pil() -> Any:
    return require("PIL.Image")


def _size(value: Any) -> Dict[str, int]:
    if value is None:
        return {}
    if isinstance(value, (int, float)):
        return {"height": int(value), "width": int(value)}
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return {"height": int(value[0]), "width": int(value[1])}
    return {str(k): int(v) for k, v in dict(value).items() if v is not None}


def resize_shape(height: int, width: int, size: Mapping[str, int], rule: str, crop_pct: float) -> Tuple[int, int]:
    """The ``(height, width)`` a transformers image processor resizes a ``height x width`` image to."""
    if "shortest_edge" in size and "longest_edge" in size:
        return _aspect_with_max(height, width, size["shortest_edge"], size["longest_edge"], yolos=rule == "yolos")
    if "shortest_edge" in size:
        target = size["shortest_edge"]
        if rule == "convnext":
            target = target if target >= 384 else int(target / crop_pct)
            if size["shortest_edge"] >= 384:
                return target, target
        elif rule == "levit":
            target = int((256 / 224) * target)
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(target * long / short)
        return (new_long, target) if width <= height else (target, new_long)
    if "height" in size and "width" in size:
        return size["height"], size["width"]
    raise TfexportError(f"Unsupported image processor size {dict(size)!r}: expected height/width or shortest_edge.")


def _aspect_with_max(height: int, width: int, size: int, max_size: int, *, yolos: bool = False) -> Tuple[int, int]:
    """transformers' ``get_size_with_aspect_ratio`` (DETR) and its YOLOS variant (checks the portrait
    case first, then rounds both sides down to multiples of 16)."""
    raw = None
    small, large = float(min(height, width)), float(max(height, width))
    if large / small * size > max_size:
        raw = max_size * small / large
        size = int(round(raw))
    unchanged = (height <= width and height == size) or (width <= height and width == size)
    if unchanged and not (yolos and width < height):
        oh, ow = height, width
    elif width < height:
        oh, ow = (int(raw * height / width) if raw is not None else int(size * height / width)), size
    else:
        oh, ow = size, (int(raw * width / height) if raw is not None else int(size * width / height))
    if yolos:
        oh, ow = oh - oh % 16, ow - ow % 16
    return oh, ow


def _center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre crop of an ``HxWxC`` image, zero-padded when it is smaller (as transformers does)."""
    h, w = image.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    if top >= 0 and left >= 0 and top + height <= h and left + width <= w:
        return image[top:top + height, left:left + width]
    new_h, new_w = max(height, h), max(width, w)
    canvas = np.zeros((new_h, new_w) + image.shape[2:], dtype=image.dtype)
    top_pad, left_pad = -(-(new_h - h) // 2), -(-(new_w - w) // 2)
    canvas[top_pad:top_pad + h, left_pad:left_pad + w] = image
    top, left = top + top_pad, left + left_pad
    return canvas[max(0, top):min(new_h, top + height), max(0, left):min(new_w, left + width)]


@dataclass
class PreprocessedBatch:
    """Model feeds for a batch of images, and each image's original ``(height, width)``."""

    feeds: Dict[str, np.ndarray]
    sizes: List[Tuple[int, int]]


class ImagePreprocessor:
    """A transformers image processor's preprocessing, from its saved config, in numpy and Pillow."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = dict(config)
        kind = str(config.get("image_processor_type") or "")
        for prefix, why in _UNSUPPORTED:
            if kind.startswith(prefix) and config.get("do_center_crop", True):
                raise TfexportError(
                    f"{kind} is not reproduced by the serving preprocessing: {why}. Fix: set "
                    "image_processor.do_center_crop = False before logging (then it only resizes, which serving "
                    "reproduces) and send images cropped as you need them, or log the model with mlflow.transformers."
                )
        self.rule = next((rule for prefix, rule in _RULES if kind.startswith(prefix)), "default")
        self.do_resize = bool(config.get("do_resize", True))
        self.size = _size(config.get("size"))
        resample = config.get("resample")
        self.resample = 2 if resample is None else int(resample)
        self.crop_pct = float(config.get("crop_pct") or 224 / 256)
        self.do_center_crop = bool(config.get("do_center_crop", False))
        self.crop_size = _size(config.get("crop_size"))
        self.do_rescale = bool(config.get("do_rescale", True))
        self.rescale_factor = float(config.get("rescale_factor", 1 / 255))
        self.do_normalize = bool(config.get("do_normalize", False))
        mean, std = config.get("image_mean"), config.get("image_std")
        self.image_mean = np.array(mean if isinstance(mean, (list, tuple)) else [mean or 0.0] * 3, dtype=np.float32)
        self.image_std = np.array(std if isinstance(std, (list, tuple)) else [std or 1.0] * 3, dtype=np.float32)
        self.do_flip_channel_order = bool(config.get("do_flip_channel_order", False))
        self.do_pad = bool(config.get("do_pad", False))
        if self.resample not in RESAMPLE_NAMES:
            raise TfexportError(f"Unsupported resample filter {self.resample!r}; known: {RESAMPLE_NAMES}.")

    @classmethod
    def from_dir(cls, path: str) -> ImagePreprocessor:
        """Read ``preprocessor_config.json`` from the model's image-processor folder."""
        file = os.path.join(path, PREPROCESSOR_FILE)
        with open(file) as f:
            return cls(json.load(f))

    def output_size(self, height: int, width: int) -> Tuple[int, int]:
        """``(height, width)`` of the pixels for an input image of that size (before batch padding)."""
        if self.do_resize:
            height, width = resize_shape(height, width, self.size, self.rule, self.crop_pct)
            if self.rule == "convnext" and self.size.get("shortest_edge", 384) < 384:
                height = width = self.size["shortest_edge"]
        if self.do_center_crop and self.crop_size:
            height, width = self.crop_size["height"], self.crop_size["width"]
        return height, width

    def facts(self) -> Dict[str, Any]:
        """What the flavor block records about the preprocessing (human-readable)."""
        return {
            "image_processor_type": self.config.get("image_processor_type"),
            "do_resize": self.do_resize,
            "size": self.size,
            "resample": RESAMPLE_NAMES[self.resample],
            "do_center_crop": self.do_center_crop,
            "crop_size": self.crop_size if self.do_center_crop else None,
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": [float(v) for v in self.image_mean],
            "image_std": [float(v) for v in self.image_std],
            "do_flip_channel_order": self.do_flip_channel_order,
            "do_pad": self.do_pad,
        }

    def one(self, image: np.ndarray) -> np.ndarray:
        """``HxWx3`` uint8 -> ``3xhxw`` float32, every step but batch padding."""
        Image = _pil()
        h, w = image.shape[:2]
        if self.do_resize:
            new_h, new_w = resize_shape(h, w, self.size, self.rule, self.crop_pct)
            image = np.asarray(Image.fromarray(image).resize((new_w, new_h), resample=self.resample))
            if self.rule == "convnext" and self.size.get("shortest_edge", 384) < 384:
                edge = self.size["shortest_edge"]
                image = _center_crop(image, edge, edge)
        if self.do_center_crop and self.crop_size:
            image = _center_crop(image, self.crop_size["height"], self.crop_size["width"])
        pixels = image.astype(np.float64)
        if self.do_rescale:
            pixels = pixels * self.rescale_factor
        pixels = pixels.astype(np.float32)
        if self.do_normalize:
            pixels = (pixels - self.image_mean) / self.image_std
        if self.do_flip_channel_order:
            pixels = pixels[..., ::-1]
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def __call__(
        self, images: Sequence[np.ndarray], input_names: Sequence[str] = ("pixel_values",)
    ) -> PreprocessedBatch:
        sizes = [(int(im.shape[0]), int(im.shape[1])) for im in images]
        processed = [self.one(im) for im in images]
        if not processed:
            return PreprocessedBatch({n: np.zeros((0,), dtype=np.float32) for n in input_names}, sizes)
        shapes = {p.shape for p in processed}
        if len(shapes) > 1 and not self.do_pad:
            raise BadInputError(
                f"The images of this batch preprocess to different sizes {sorted(s[1:] for s in shapes)} and the "
                "image processor does not pad; send images of one size, or one image per request."
            )
        height = max(p.shape[1] for p in processed)
        width = max(p.shape[2] for p in processed)
        pixels = np.zeros((len(processed), processed[0].shape[0], height, width), dtype=np.float32)
        mask = np.zeros((len(processed), height, width), dtype=np.int64)
        for i, p in enumerate(processed):
            pixels[i, :, : p.shape[1], : p.shape[2]] = p
            mask[i, : p.shape[1], : p.shape[2]] = 1
        feeds = {"pixel_values": pixels, "pixel_mask": mask}
        return PreprocessedBatch({n: feeds[n] for n in input_names}, sizes)


# --------------------------------------------------------------------------- decoding requests


class PixelBudget:
    """The decoded pixels a request may still use (``limits``): each image is checked from its size, before its
    pixels are decoded (Pillow reads only the header on ``open``)."""

    def __init__(self, limits: Optional[Limits]) -> None:
        self.limits = limits
        self.used = 0

    def take(self, index: int, width: int, height: int) -> None:
        if self.limits is not None:
            self.limits.check_image(index, width, height, self.used)
        self.used += int(width) * int(height)


def _base64_text_decoded(data: bytes) -> bytes:
    """``data`` itself, or what it encodes when it is base64 text: under a binary input schema MLflow's scoring
    server hands ``{"inputs": ["<base64>"]}`` over as the ASCII bytes of the base64 string, not decoded. Image
    files (PNG, JPEG, GIF, WebP...) hold bytes outside the base64 alphabet, so they never match (the strict
    decoder stops at the first such byte)."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return data


def _from_bytes(data: bytes, where: str, index: int, budget: PixelBudget) -> np.ndarray:
    Image = _pil()
    try:
        img = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as exc:  # over twice Pillow's own limit: refused by Pillow's header check
        limit = budget.limits.max_image_pixels if budget.limits is not None else None
        ours = f", checked before this model's max_image_pixels={limit:,}" if limit is not None else ""
        raise BadInputError(f"{where}: {exc} (Pillow's own limit{ours}). Send a smaller image.") from None
    except Exception as exc:
        raise BadInputError(
            f"{where}: the {len(data)} bytes received are not an image Pillow can decode "
            f"({type(exc).__name__}). Send PNG or JPEG bytes, base64-encoded in JSON."
        ) from exc
    with img:
        width, height = img.size
        budget.take(index, width, height)  # before a pixel is decoded
        try:
            return np.asarray(img.convert("RGB"))
        except Exception as exc:
            raise BadInputError(
                f"{where}: the {len(data)} bytes received are not an image Pillow can decode "
                f"({type(exc).__name__}). Send PNG or JPEG bytes, base64-encoded in JSON."
            ) from exc


def _from_array(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype != np.uint8:
        raise BadInputError(
            f"{where}: expected an image array of dtype uint8 (HxWx3, values 0-255), received dtype "
            f"{array.dtype} with shape {array.shape}. Convert with array.astype('uint8') or send encoded bytes."
        )
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    elif array.ndim == 3 and array.shape[-1] == 1:
        array = np.concatenate([array] * 3, axis=-1)
    elif array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.ndim != 3 or array.shape[-1] != 3 or 0 in array.shape:
        raise BadInputError(
            f"{where}: expected an image array of shape HxWx3 (or HxW), received shape {array.shape}."
        )
    return np.ascontiguousarray(array)


def to_image(value: Any, where: str, index: int = 0, budget: Optional[PixelBudget] = None) -> np.ndarray:
    """One image (bytes, base64 string, uint8 array, PIL image) -> ``HxWx3`` uint8, its size checked against
    ``budget`` (the request's pixel limits) before it is decoded."""
    budget = budget if budget is not None else PixelBudget(None)
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _from_bytes(_base64_text_decoded(bytes(value)), where, index, budget)
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadInputError(
                f"{where}: received a string that is not base64 ({value[:40]!r}...). Send each image as the "
                'base64 of its file bytes, e.g. {"inputs": [base64.b64encode(open("cat.png", "rb").read()).decode()]}.'
            ) from None
        return _from_bytes(raw, where, index, budget)
    if isinstance(value, list) and value and isinstance(value[0], list):  # an array sent as nested JSON lists
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        if value.ndim >= 2:
            budget.take(index, int(value.shape[1]), int(value.shape[0]))
        return _from_array(value, where)
    if hasattr(value, "convert") and hasattr(value, "size"):  # a PIL image
        budget.take(index, *value.size)
        return np.asarray(value.convert("RGB"))
    raise BadInputError(
        f"{where}: expected an image (bytes, a base64 string, a uint8 HxWx3 array or a PIL image), "
        f"received {type(value).__name__}."
    )


def _is_single_array(data: Any) -> bool:
    return isinstance(data, np.ndarray) and data.dtype != object and data.ndim in (2, 3) and (
        data.ndim == 2 or data.shape[-1] in (1, 3, 4)
    )


def _is_encoded_list(value: Any) -> bool:
    """A list (or 1-D array) of encoded images: bytes or base64 strings, not the rows of a pixel array."""
    if isinstance(value, np.ndarray):
        value = value.tolist() if value.ndim == 1 else None
    return isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(v, (bytes, bytearray, str)) for v in value)


def parse_image_input(data: Any, limits: Optional[Limits] = None) -> List[np.ndarray]:
    """Whatever the pyfunc received -> a list of ``HxWx3`` uint8 images, each checked against ``limits`` (decoded
    pixels per image and per request) before it is decoded."""
    values = _image_values(data)
    budget = PixelBudget(limits)
    return [to_image(v, f"Image {i}", i, budget) for i, v in enumerate(values)]


def _image_values(data: Any) -> List[Any]:
    """The request's images, one value each (not decoded yet)."""
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas ships with mlflow
        pd = None  # type: ignore[assignment]
    if pd is not None and isinstance(data, pd.DataFrame):
        if IMAGE_COLUMN in data.columns:
            values = data[IMAGE_COLUMN].tolist()
        elif len(data.columns) == 1:
            values = data.iloc[:, 0].tolist()
        else:
            raise BadInputError(
                f"Expected a DataFrame column {IMAGE_COLUMN!r} (or a single column) of images; received "
                f"columns {', '.join(map(repr, data.columns))}."
            )
        if len(values) == 1 and _is_encoded_list(values[0]):
            # {"inputs": [b64, ...]} given in process to a model with a column schema: MLflow made it one row.
            values = list(values[0])
    elif pd is not None and isinstance(data, pd.Series):
        values = data.tolist()
    elif isinstance(data, dict):
        key = IMAGE_COLUMN if IMAGE_COLUMN in data else "inputs" if "inputs" in data else None
        if key is None or len(data) != 1:
            raise BadInputError(
                f"Expected a dict with one key {IMAGE_COLUMN!r} or 'inputs'; received keys {sorted(map(str, data))}."
            )
        return _image_values(data[key])
    elif isinstance(data, np.ndarray) and data.dtype.kind in ("U", "S"):  # {"inputs": ["<base64>", ...]}
        values = data.reshape(-1).tolist()
    elif _is_single_array(data):
        values = [data]
    elif isinstance(data, np.ndarray):
        if data.dtype != object and data.ndim == 4:
            values = list(data)
        elif data.dtype == object:
            values = data.reshape(-1).tolist()
        else:
            raise BadInputError(
                f"Expected an image array HxWx3 (or a batch NxHxWx3) of uint8, received shape {data.shape} "
                f"and dtype {data.dtype}."
            )
    elif isinstance(data, (list, tuple)):
        values = list(data)
        if values and all(isinstance(v, dict) for v in values):  # dataframe_records
            values = [v.get(IMAGE_COLUMN, next(iter(v.values()), None)) if len(v) else None for v in values]
    else:
        values = [data]
    return values

