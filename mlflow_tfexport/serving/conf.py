"""The ``tfexport`` block of a saved model's MLmodel, read and checked in one place.

Everything the serving side takes from an MLmodel goes through here:
``read_flavor_conf`` checks every field it knows before anything is loaded (a
message names the field, the value, what was expected and the way out), and
``artifact_path`` turns the artifact fields (``model_file``, ``tokenizer_dir``,
``image_processor_dir``, ``encoder_file``) into paths that resolve inside the
model directory, symlinks included: an MLmodel changed to point at ``../..``
or ``/etc`` is refused. Every runtime and pyfunc takes its paths from
``artifact_path``. The checked block is returned as it was written (no value is
converted), so a variant built from it keeps its source's block.
Serving path: no torch, no transformers, Python 3.10.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from mlflow_tfexport.constants import FLAVOR_NAME, MLMODEL_FILE, FlavorKey, Generation
from mlflow_tfexport.errors import FlavorConfError, NotATfexportModelError, UnknownFormatError
from mlflow_tfexport.formats import FORMATS
from mlflow_tfexport.serving.export_config import ExportConfig, ExportConfigError, config_of
from mlflow_tfexport.tasks import (
    CUSTOM,
    IMAGE,
    IMAGE_INPUTS,
    IMAGE_TEXT,
    MAX_BATCH_SIZE,
    MAX_TOKENS,
    TEXT_INPUTS,
    get_task,
)

#: Fields naming a file or folder of the model directory.
ARTIFACT_KEYS = (FlavorKey.MODEL_FILE, FlavorKey.TOKENIZER_DIR, FlavorKey.IMAGE_PROCESSOR_DIR, FlavorKey.ENCODER_FILE)
#: Token ids are int32 in every tokenizer and model served here.
MAX_TOKEN_ID = 2**31 - 1
#: Fields holding a token id (or null).
TOKEN_ID_KEYS = (FlavorKey.PAD_TOKEN_ID, FlavorKey.EOS_TOKEN_ID, FlavorKey.MASK_TOKEN_ID,
                 FlavorKey.DECODER_START_TOKEN_ID, FlavorKey.FORCED_BOS_TOKEN_ID, FlavorKey.FORCED_EOS_TOKEN_ID)
#: The largest image side and channel count an MLmodel may record.
MAX_IMAGE_SIDE = 1 << 14
MAX_CHANNELS = 64
_TRACE_DEVICES = ("cpu", "cuda")
#: The most decoder lengths a static encoder-decoder may list (each is a module per bucket).
MAX_DECODER_LENGTHS = 16
#: A source variant's transformers config, in its model folder; read when at most this large.
MODEL_CONFIG_FILE = "config.json"
MAX_MODEL_CONFIG_BYTES = 4 * 1024 * 1024
#: Where transformers configs record the vocabulary size and the positions (the first one present counts).
_VOCAB_FIELDS = ("vocab_size",)
_POSITION_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length")


def _fail(key: str, value: Any, expected: str) -> FlavorConfError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return FlavorConfError(
        f"The MLmodel's {FLAVOR_NAME} field {key!r} is {shown}; expected {expected}. The MLmodel was changed "
        "after the model was saved (or is damaged): restore it from the logged model, or log the model again."
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_in(key: str, value: Any, low: int, high: int) -> None:
    if not _is_int(value) or not low <= value <= high:
        raise _fail(key, value, f"an integer from {low} to {high}")


def _names(key: str, value: Any, allowed: Optional[tuple] = None) -> None:
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) and v for v in value) \
            or len(set(value)) != len(value):
        raise _fail(key, value, "a non-empty list of distinct names")
    if allowed is not None and not set(value) <= set(allowed):
        raise _fail(key, value, f"names among {', '.join(allowed)}")


def relative_artifact(key: str, value: Any) -> str:
    """``value`` as a path relative to the model directory that stays inside it, else ``FlavorConfError``."""
    if not isinstance(value, str) or not value or "\x00" in value:
        raise _fail(key, value, "a path relative to the model directory")
    if os.path.isabs(value) or os.path.splitdrive(value)[0] or value.startswith(("/", "\\")):
        raise _fail(key, value, "a path relative to the model directory, not an absolute path")
    normal = os.path.normpath(value)
    if normal == os.pardir or normal.startswith(os.pardir + os.sep) or "\\.." in value or "..\\" in value:
        raise _fail(key, value, "a path inside the model directory (no '..')")
    return normal


def artifact_path(model_dir: str, conf: Mapping[str, Any], key: str, *inner: str) -> str:
    """The file or folder that ``conf[key]`` names (joined with ``inner`` parts, e.g. a file of a folder),
    checked to resolve inside ``model_dir``, symlinks followed; else ``FlavorConfError`` naming the field."""
    if conf.get(key) is None:
        raise _fail(key, None, "a path relative to the model directory (this model needs it)")
    rel = os.path.join(relative_artifact(key, conf[key]), *inner)
    root = os.path.realpath(model_dir)
    resolved = os.path.realpath(os.path.join(root, rel))
    if resolved != root and os.path.commonpath([root, resolved]) != root:
        raise _fail(key, conf[key], f"a path inside the model directory; {rel} resolves to {resolved}, "
                                    f"outside {root}")
    return os.path.join(root, rel)


def _id2label(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise _fail(FlavorKey.ID2LABEL, value, "a mapping of class index to label, e.g. {0: NEGATIVE, 1: POSITIVE}")
    for index, label in value.items():
        digits = isinstance(index, str) and index.isascii() and index.isdigit() and len(index) <= 9
        if not (digits or (_is_int(index) and 0 <= index <= MAX_TOKEN_ID)) or not isinstance(label, str):
            raise _fail(FlavorKey.ID2LABEL, value,
                        f"a mapping of class index (an integer >= 0) to label (a string); entry {index!r}: {label!r}")


def labels(conf: Mapping[str, Any]) -> Dict[int, str]:
    """``id2label`` with integer keys (checked by ``read_flavor_conf``)."""
    return {int(k): str(v) for k, v in (conf.get(FlavorKey.ID2LABEL) or {}).items()}


def _trace_shapes(value: Any) -> None:
    if value is None:
        return
    expected = (f"a list of [batch, sequence] pairs, batch from 1 to {MAX_BATCH_SIZE}, sequence from 1 to "
                f"{MAX_TOKENS}")
    if not isinstance(value, (list, tuple)):
        raise _fail(FlavorKey.TRACE_SHAPES, value, expected)
    for shape in value:
        if not isinstance(shape, (list, tuple)) or len(shape) != 2 or not all(_is_int(v) for v in shape) \
                or not 1 <= shape[0] <= MAX_BATCH_SIZE or not 1 <= shape[1] <= MAX_TOKENS:
            raise _fail(FlavorKey.TRACE_SHAPES, value, expected)


def _one_of(choices: tuple) -> Callable[[str, Any], None]:
    def check(key: str, value: Any) -> None:
        if value is not None and value not in choices:
            raise _fail(key, value, "one of " + ", ".join(repr(c) for c in choices))
    return check


def _optional_str(key: str, value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise _fail(key, value, "a string")


def _image_size(key: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, (list, tuple)) or len(value) != 2 or \
            not all(_is_int(v) and 1 <= v <= MAX_IMAGE_SIDE for v in value):
        raise _fail(key, value, f"[height, width], each an integer from 1 to {MAX_IMAGE_SIDE}")


def _channels(key: str, value: Any) -> None:
    if value is not None:
        _int_in(key, value, 1, MAX_CHANNELS)


def _padding(key: str, value: Any) -> None:
    if value is not None:
        _int_in(key, value, 1, MAX_TOKENS)


def _decoder_lengths(key: str, value: Any) -> None:
    """A static encoder-decoder's decoder lengths: a short list of lengths (one module per bucket each)."""
    if value is None:
        return
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= MAX_DECODER_LENGTHS or \
            not all(_is_int(v) and 1 <= v <= MAX_TOKENS for v in value):
        raise _fail(key, value,
                    f"a list of 1 to {MAX_DECODER_LENGTHS} decoder lengths, each an integer from 1 to {MAX_TOKENS}")


_FIELD_CHECKS: Dict[str, Callable[[str, Any], None]] = {
    FlavorKey.PAD_TO_MULTIPLE_OF: _padding,
    FlavorKey.DECODER_LENGTHS: _decoder_lengths,
    FlavorKey.TRACE_DEVICE: _one_of(_TRACE_DEVICES),
    FlavorKey.GENERATION: _optional_str,  # an unknown layout: the runtime says to upgrade
    FlavorKey.PROBLEM_TYPE: _optional_str,
    FlavorKey.NEURON_TARGET: _optional_str,
    FlavorKey.IMAGE_SIZE: _image_size,
    FlavorKey.NUM_CHANNELS: _channels,
}


def check_flavor_conf(conf: Any) -> Dict[str, Any]:
    """``conf`` if every field the serving side reads is well-formed, else ``FlavorConfError`` naming it."""
    if not isinstance(conf, Mapping):
        raise _fail(FLAVOR_NAME, conf, "a mapping of fields (format, task, model_file...)")
    fmt = conf.get(FlavorKey.FORMAT)
    if not isinstance(fmt, str) or not fmt:
        raise _fail(FlavorKey.FORMAT, fmt, "one of " + ", ".join(FORMATS))
    if fmt not in FORMATS:  # a format of a later release, most likely
        raise UnknownFormatError(
            f"Saved model has format {fmt!r}; this version of mlflow-tfexport can run "
            f"{', '.join(FORMATS)}. Upgrade mlflow-tfexport to serve it."
        )
    task = conf.get(FlavorKey.TASK)
    if not isinstance(task, str):
        raise _fail(FlavorKey.TASK, task, "a task name")
    spec = get_task(task)  # UnknownTaskError names the known tasks
    custom = _export_config(conf, task)
    for key in ARTIFACT_KEYS:
        if conf.get(key) is not None:
            relative_artifact(key, conf[key])
    required = [FlavorKey.MODEL_FILE, FlavorKey.INPUT_NAMES]
    required += [FlavorKey.IMAGE_PROCESSOR_DIR] if spec.input_kind == IMAGE else \
        [FlavorKey.TOKENIZER_DIR, FlavorKey.MAX_LENGTH, FlavorKey.PAD_TOKEN_ID]
    if spec.input_kind == IMAGE_TEXT:
        required.append(FlavorKey.IMAGE_PROCESSOR_DIR)
    if conf.get(FlavorKey.GENERATION) == Generation.ENCODER_DECODER:
        required += [FlavorKey.ENCODER_FILE, FlavorKey.DECODER_START_TOKEN_ID]
    if conf.get(FlavorKey.GENERATION) == Generation.STATIC_ENCODER_DECODER:
        required += [FlavorKey.TRACE_SHAPES, FlavorKey.DECODER_LENGTHS, FlavorKey.DECODER_START_TOKEN_ID]
    for key in required:
        if conf.get(key) is None:
            raise _fail(key, None, f"a value (a {spec.name} model of format {fmt!r} needs it)")
    inputs = {IMAGE: IMAGE_INPUTS, IMAGE_TEXT: TEXT_INPUTS + IMAGE_INPUTS}.get(spec.input_kind, TEXT_INPUTS)
    if custom is not None:  # a user's export config names the inputs
        inputs = tuple(custom.input_names)
    _names(FlavorKey.INPUT_NAMES, conf[FlavorKey.INPUT_NAMES], inputs)
    if conf.get(FlavorKey.OUTPUT_NAMES) is not None:
        _names(FlavorKey.OUTPUT_NAMES, conf[FlavorKey.OUTPUT_NAMES])
    if conf.get(FlavorKey.MAX_LENGTH) is not None:
        _int_in(FlavorKey.MAX_LENGTH, conf[FlavorKey.MAX_LENGTH], 1, MAX_TOKENS)
    for key in TOKEN_ID_KEYS:
        if conf.get(key) is not None:
            _int_in(key, conf[key], 0, MAX_TOKEN_ID)
    _id2label(conf.get(FlavorKey.ID2LABEL))
    _trace_shapes(conf.get(FlavorKey.TRACE_SHAPES))
    for key, check in _FIELD_CHECKS.items():
        check(key, conf.get(key))
    return dict(conf)


def _export_config(conf: Mapping[str, Any], task: str) -> Optional[ExportConfig]:
    """The flavor block's export config, checked (``ExportConfig.from_dict``) and agreeing with its task; a
    task of ``custom`` needs one."""
    try:
        config = config_of(conf)
    except ExportConfigError as exc:
        raise _fail(FlavorKey.EXPORT_CONFIG, conf.get(FlavorKey.EXPORT_CONFIG),
                    f"a valid export config ({exc.message})") from exc
    if config is None:
        if task == CUSTOM.name:
            raise _fail(FlavorKey.EXPORT_CONFIG, None, f"an export config (task {task!r} is defined by one)")
        return None
    if config.task_name != task:
        raise _fail(FlavorKey.TASK, task, f"{config.task_name!r}, the task of its export config")
    return config


def _model_config(model_dir: str, conf: Mapping[str, Any]) -> Mapping[str, Any]:
    """The transformers ``config.json`` of the source variant's model folder, else ``{}`` (exported variants)."""
    try:
        folder = artifact_path(model_dir, conf, FlavorKey.MODEL_FILE)
    except FlavorConfError:
        return {}
    file = os.path.join(folder, MODEL_CONFIG_FILE)
    if not os.path.isfile(file) or os.path.getsize(file) > MAX_MODEL_CONFIG_BYTES:
        return {}
    try:
        with open(file, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _bound(config: Mapping[str, Any], keys: Sequence[str]) -> Optional[int]:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_ranges(model_dir: str, conf: Mapping[str, Any], *, tokenizer_vocab: int,
                 tokenizer_max_length: Optional[int]) -> None:
    """The flavor block's numbers that index the vocabulary (token ids) or the positions (``max_length``),
    checked against the model's tokenizer and, for the source variant, its ``config.json``; a value out of
    range is a ``FlavorConfError`` naming the field, at load, before a request pads or generates with it."""
    config = _model_config(model_dir, conf)
    vocab = _bound(config, _VOCAB_FIELDS)
    vocab, vocab_of = (vocab, f"the model's vocab_size ({MODEL_CONFIG_FILE})") if vocab else \
        (tokenizer_vocab, "the tokenizer's vocabulary (tokenizer.json, added tokens included)")
    for key in TOKEN_ID_KEYS:
        value = conf.get(key)
        if value is not None and not 0 <= value < vocab:
            raise _fail(key, value, f"a token id from 0 to {vocab - 1}, within {vocab_of}")
    positions = _bound(config, _POSITION_FIELDS)
    for limit, of in ((positions, f"the model's positions ({MODEL_CONFIG_FILE})"),
                      (tokenizer_max_length, "the tokenizer's model_max_length (tokenizer_config.json)")):
        value = conf.get(FlavorKey.MAX_LENGTH)
        if limit is not None and value is not None and value > limit:
            raise _fail(FlavorKey.MAX_LENGTH, value, f"at most {limit}, {of}")


def read_flavor_conf(path: str) -> Dict[str, Any]:
    """The checked ``tfexport`` block of the MLmodel file in ``path`` (see ``check_flavor_conf``)."""
    from mlflow.models import Model

    mlmodel = os.path.join(path, MLMODEL_FILE)
    if not os.path.isfile(mlmodel):
        raise NotATfexportModelError(
            f"{path} has no {MLMODEL_FILE} file, so it is not an MLflow model. Pass the directory (or URI) of a "
            "model logged with mlflow.tfexport.log_model."
        )
    model = Model.load(mlmodel)
    if FLAVOR_NAME not in model.flavors:
        raise NotATfexportModelError(
            f"The model at {path} has flavors {sorted(model.flavors)}, not {FLAVOR_NAME!r}. "
            "Log it with mlflow.tfexport.log_model first."
        )
    return check_flavor_conf(model.flavors[FLAVOR_NAME])
