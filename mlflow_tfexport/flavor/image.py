"""Saving image models: the image processor, and the flavor facts of a vision model.

Used by ``flavor.save_model`` when the model takes ``pixel_values``; imports
torch and transformers (the serving path never imports this module).
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Dict, List

from mlflow_tfexport._lazy import require
from mlflow_tfexport.constants import IMAGE_PROCESSOR_DIR, FlavorKey
from mlflow_tfexport.errors import TfexportError
from mlflow_tfexport.serving.images import PREPROCESSOR_FILE, ImagePreprocessor
from mlflow_tfexport.tasks import IMAGE, IMAGE_INPUTS, TaskSpec, image_inputs


def is_image_model(model: Any) -> bool:
    """Whether ``model``'s forward takes pixels (``pixel_values``) rather than token ids."""
    params = inspect.signature(model.forward).parameters
    return "pixel_values" in params and "input_ids" not in params


def is_image_text_model(model: Any) -> bool:
    """A dual encoder scoring images against texts (CLIP and its kin): both inputs and both towers."""
    params = inspect.signature(model.forward).parameters
    return ("pixel_values" in params and "input_ids" in params and "bbox" not in params
            and hasattr(model, "get_text_features") and hasattr(model, "get_image_features"))


def image_text_facts(model: Any, text_facts: Dict[str, Any], pre: ImagePreprocessor, spec: TaskSpec,
                     max_length: int) -> Dict[str, Any]:
    """The flavor block entries of a dual encoder: the tokenizer's facts, the text tower's maximum length, the
    image processor's facts, and both kinds of inputs."""
    torch = require("torch")
    text_inputs = [n for n in text_facts[FlavorKey.INPUT_NAMES] if n != "token_type_ids"]
    vision = getattr(model.config, "vision_config", model.config)
    image_size = _image_size(model, pre)
    pixels = torch.zeros(1, int(getattr(vision, "num_channels", 3)), *image_size)
    with torch.no_grad():
        out = model(input_ids=torch.ones(2, 4, dtype=torch.long), pixel_values=pixels, return_dict=True)
    if getattr(out, spec.outputs[0].name, None) is None:
        raise TfexportError(
            f"{type(model).__name__} returns no {spec.outputs[0].name!r}; task {spec.name!r} needs the scores of "
            "every image against every text (CLIPModel and its kin)."
        )
    return {
        **text_facts,
        FlavorKey.INPUT_NAMES: text_inputs + ["pixel_values"],
        FlavorKey.OUTPUT_NAMES: list(spec.output_names),
        FlavorKey.MAX_LENGTH: max_length,
        FlavorKey.IMAGE_SIZE: image_size,
        FlavorKey.NUM_CHANNELS: int(getattr(vision, "num_channels", 3)),
        FlavorKey.IMAGE_PREPROCESSING: pre.facts(),
        FlavorKey.IMAGE_PROCESSOR_DIR: IMAGE_PROCESSOR_DIR,
    }


def check_image_processor(image_processor: Any, model: Any) -> None:
    transformers = require("transformers")
    base = getattr(transformers, "BaseImageProcessor", None) or transformers.ImageProcessingMixin
    if image_processor is None:
        raise TfexportError(
            f"{type(model).__name__} takes images: pass its image processor, e.g. "
            "log_model(model, image_processor=AutoImageProcessor.from_pretrained(...)), or a Pipeline."
        )
    if not isinstance(image_processor, (base, transformers.ImageProcessingMixin)):
        raise TfexportError(
            f"image_processor= must be a transformers image processor (e.g. AutoImageProcessor.from_pretrained"
            f"(...)), received {type(image_processor).__name__}."
        )


def save_image_processor(image_processor: Any, path: str) -> ImagePreprocessor:
    """Write ``preprocessor_config.json`` and check the serving preprocessing understands it."""
    target = os.path.join(path, IMAGE_PROCESSOR_DIR)
    image_processor.save_pretrained(target)
    if not os.path.exists(os.path.join(target, PREPROCESSOR_FILE)):
        raise TfexportError(
            f"{type(image_processor).__name__}.save_pretrained wrote no {PREPROCESSOR_FILE}; the serving runtime "
            "preprocesses images from it."
        )
    try:
        return ImagePreprocessor.from_dir(target)
    except TfexportError as exc:
        raise TfexportError(f"{type(image_processor).__name__} cannot be served without transformers: {exc}") from exc


def check_model_inputs(model: Any) -> None:
    """Refuse, precisely, a model whose forward takes neither token ids nor pixels alone."""
    params = inspect.signature(model.forward).parameters
    name = type(model).__name__
    if "pixel_values" in params and "input_ids" in params and "bbox" in params:
        raise TfexportError(
            f"{name} takes text, word boxes and the page image together (input_ids, bbox and pixel_values, from OCR "
            "of a document); tfexport serves text-only or image-only models and has no request format for words "
            "with boxes. Log it with mlflow.transformers (task 'document-question-answering' or its own)."
        )
    if "pixel_values" in params and "input_ids" in params:
        raise TfexportError(
            f"{name} takes text and images together (input_ids and pixel_values); tfexport serves text-only or "
            "image-only models. Log its towers separately where transformers has them (e.g. CLIPTextModel and "
            "CLIPVisionModel), or use mlflow.transformers for the joint model."
        )
    if "pixel_values" not in params and "input_ids" not in params:
        taken = ", ".join(p for p in params if p not in ("kwargs", "return_dict"))[:120]
        raise TfexportError(
            f"{name}'s forward takes neither input_ids (text) nor pixel_values (images) but ({taken}); tfexport "
            "cannot build its inputs from a request. Use mlflow.transformers for this model."
        )


def _image_size(model: Any, pre: ImagePreprocessor) -> List[int]:
    """The pixels' height and width: what the processor produces when that is fixed, else the config's."""
    fixed = {pre.output_size(300, 200), pre.output_size(200, 300)}
    if len(fixed) == 1:
        return list(fixed.pop())
    config = model.config
    size = getattr(config, "image_size", None)
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return [int(size[0]), int(size[1])]
    if isinstance(size, int):
        return [size, size]
    for candidate in (pre.crop_size if pre.do_center_crop else {}, pre.size):
        if "height" in candidate and "width" in candidate:
            return [candidate["height"], candidate["width"]]
    if "shortest_edge" in pre.size:
        return [pre.size["shortest_edge"]] * 2
    return [224, 224]


def _produced_outputs(model: Any, spec: TaskSpec, input_names: List[str], image_size: List[int]) -> List[str]:
    """The spec's outputs this model returns (a backbone built without a pooling layer has no pooler_output)."""
    torch = require("torch")
    feeds = image_inputs(tuple(input_names), 1, image_size[0], image_size[1],
                         num_channels=int(getattr(model.config, "num_channels", 3)))
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}, return_dict=True)
    names = [o.name for o in spec.outputs if out.get(o.name) is not None]
    if not names or names[0] != spec.outputs[0].name:
        raise TfexportError(
            f"{type(model).__name__} returns {sorted(k for k, v in out.items() if v is not None)}; task "
            f"{spec.name!r} needs {spec.outputs[0].name!r}."
        )
    return names


def image_model_facts(model: Any, image_processor: Any, spec: TaskSpec, pre: ImagePreprocessor) -> Dict[str, Any]:
    """The flavor block entries of a vision model (no tokenizer facts)."""
    transformers = require("transformers")
    torch = require("torch")
    if spec.input_kind != IMAGE:
        raise TfexportError(f"{type(model).__name__} takes images; task {spec.name!r} takes text.")
    config = model.config
    accepted = set(inspect.signature(model.forward).parameters)
    input_names = [n for n in IMAGE_INPUTS if n in accepted and (n == "pixel_values" or pre.do_pad)]
    image_size = _image_size(model, pre)
    id2label = {str(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    return {
        FlavorKey.TASK: spec.name,
        FlavorKey.INPUT_NAMES: input_names,
        FlavorKey.OUTPUT_NAMES: _produced_outputs(model, spec, input_names, image_size),
        FlavorKey.ID2LABEL: id2label if spec.keeps_labels else {},
        FlavorKey.IMAGE_SIZE: image_size,
        FlavorKey.NUM_CHANNELS: int(getattr(config, "num_channels", 3)),
        FlavorKey.IMAGE_PREPROCESSING: pre.facts(),
        FlavorKey.MODEL_TYPE: config.model_type,
        FlavorKey.ARCHITECTURE: type(model).__name__,
        FlavorKey.PROBLEM_TYPE: getattr(config, "problem_type", None),
        FlavorKey.TRANSFORMERS_VERSION: str(transformers.__version__),
        FlavorKey.TORCH_VERSION: str(torch.__version__),
        FlavorKey.IMAGE_PROCESSOR_DIR: IMAGE_PROCESSOR_DIR,
    }
