"""The ``tfexport`` flavor: save_model, log_model, load_model.

A saved model holds the weights (safetensors) or the exported file, the
tokenizer (``tokenizer.json``), this package's runtime code, and an MLmodel
whose ``tfexport`` block (keys in ``FlavorKey``) tells the runtime everything
it needs without importing transformers.
"""

from __future__ import annotations

import inspect
import os
import shutil
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

from mlflow.models import Model, ModelInputExample, ModelSignature
from mlflow.models.model import ModelInfo

from mlflow_tfexport._lazy import require
from mlflow_tfexport.constants import (
    CODE_DIR,
    FLAVOR_NAME,
    IMAGE_PROCESSOR_DIR,
    LOGGED_MODEL_NAME,
    MODEL_DIR,
    PACKAGE,
    TOKENIZER_DIR,
    TOKENIZER_FILE,
    FlavorKey,
    Format,
    Tag,
)
from mlflow_tfexport.errors import TfexportError
from mlflow_tfexport.export.custom import check_fits, load_config, registered_config
from mlflow_tfexport.flavor.block import source_block, write_model
from mlflow_tfexport.flavor.environment import default_requirements, resolve_requirements
from mlflow_tfexport.flavor.image import (
    check_image_processor,
    check_model_inputs,
    image_model_facts,
    image_text_facts,
    is_image_model,
    is_image_text_model,
    save_image_processor,
)
from mlflow_tfexport.flavor.signatures import InputSchemaArg, named_example, task_signature
from mlflow_tfexport.registry import register_version
from mlflow_tfexport.serving.conf import artifact_path, read_flavor_conf
from mlflow_tfexport.serving.export_config import ExportConfig, with_config
from mlflow_tfexport.serving.images import ImagePreprocessor
from mlflow_tfexport.serving.runtimes import load_runner
from mlflow_tfexport.serving.runtimes.eager import load_transformers_model
from mlflow_tfexport.tasks import (
    IMAGE,
    IMAGE_TEXT,
    TEXT,
    TEXT_INPUTS,
    TaskSpec,
    for_input_kind,
    get_task,
    infer_task,
)

_PICKLE_SUFFIXES = (".bin", ".pkl", ".pickle", ".pt", ".pth", ".ckpt")
# Architectures whose position ids start after the padding index (max positions - 2 usable).
_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text", "longformer", "ibert"}


def get_default_pip_requirements(fmt: str = Format.TRANSFORMERS) -> list:
    """What a variant of ``fmt`` needs to serve."""
    return default_requirements(fmt)


def _split_pipeline(model: Any, tokenizer: Any, task: Optional[str], image_processor: Any = None) -> tuple:
    transformers = require("transformers")
    if isinstance(model, transformers.Pipeline):
        if tokenizer is None:
            tokenizer = model.tokenizer
        if image_processor is None:
            image_processor = getattr(model, "image_processor", None)
        task = task or model.task
        model = model.model
    if not isinstance(model, transformers.PreTrainedModel):
        raise TfexportError(
            f"Expected a transformers PreTrainedModel or Pipeline, received {type(model).__name__}. "
            "Pass e.g. AutoModelForSequenceClassification.from_pretrained(...)."
        )
    if is_image_text_model(model):  # CLIP: images scored against texts, with both preprocessors
        check_image_processor(image_processor, model)
        if tokenizer is None:
            raise TfexportError(
                f"{type(model).__name__} scores images against texts: pass tokenizer= and image_processor= "
                "(e.g. AutoTokenizer and AutoImageProcessor.from_pretrained(...)), or a Pipeline."
            )
        return model, (tokenizer, image_processor), task
    check_model_inputs(model)
    if is_image_model(model):
        check_image_processor(image_processor, model)
        return model, image_processor, task
    if image_processor is not None:
        raise TfexportError(
            f"image_processor= was given but {type(model).__name__} takes text (input_ids), not pixel_values; "
            "pass its tokenizer= instead."
        )
    if tokenizer is None:
        raise TfexportError(
            "tokenizer= is required when a model (not a Pipeline) is given, e.g. "
            "log_model(model, tokenizer=AutoTokenizer.from_pretrained(...))."
        )
    return model, tokenizer, task


def resolve_task(model: Any, task: Optional[str]) -> TaskSpec:
    """The task spec for ``model``: inferred from its class, or checked against it when given."""
    kind = IMAGE_TEXT if is_image_text_model(model) else IMAGE if is_image_model(model) else TEXT
    return for_input_kind(_resolve_task(model, task, kind), kind)


def _resolve_task(model: Any, task: Optional[str], kind: str) -> TaskSpec:
    class_name = type(model).__name__
    try:
        inferred: Optional[TaskSpec] = for_input_kind(infer_task(class_name), kind)
    except TfexportError:
        inferred = None
    if task is None:
        if inferred is None:
            return infer_task(class_name)  # raises the error listing the known tasks
        return inferred
    spec = get_task(str(task))
    if spec.input_kind != kind and spec.auto_model == getattr(inferred, "auto_model", None):
        spec = for_input_kind(spec, kind)  # feature-extraction of a vision backbone
    if inferred is not None and inferred.name != spec.name:
        raise TfexportError(
            f"{class_name} cannot do task {spec.name!r} (its head does {inferred.name!r}). Load the model "
            f"with transformers.{spec.auto_model} for {spec.name!r}, or pass task={inferred.name!r}."
        )
    return spec


def model_input_names(model: Any, tokenizer: Any) -> list:
    """The text inputs the model's ``forward`` takes and the tokenizer produces."""
    accepted = set(inspect.signature(model.forward).parameters)
    produced = set(getattr(tokenizer, "model_input_names", TEXT_INPUTS)) | {"input_ids", "attention_mask"}
    return [name for name in TEXT_INPUTS if name in accepted and name in produced]


def max_length(model: Any, tokenizer: Any) -> int:
    """The longest input: the model's positions (``model``: a model or a config) and the tokenizer's maximum."""
    config = getattr(model, "config", model)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if limit and config.model_type in _OFFSET_POSITIONS:
        limit -= 2
    tok_max = getattr(tokenizer, "model_max_length", None)
    candidates = [int(v) for v in (limit, tok_max) if v and int(v) < 1_000_000]
    return min(candidates) if candidates else 512


def _token_id(tokenizer: Any, attr: str) -> Optional[int]:
    value = getattr(tokenizer, attr, None)
    return None if value is None else int(value)


def _export_config(model: Any, export_config: Any) -> Optional[ExportConfig]:
    """The export config given, else the one a package registered for the model's ``model_type``, else None."""
    if export_config is not None:
        return load_config(export_config)
    config = getattr(getattr(model, "model", model), "config", None)
    return registered_config(getattr(config, "model_type", None))


def _custom_model(model: Any, tokenizer: Any, task: Optional[str], config: ExportConfig) -> Tuple[Any, Any, TaskSpec]:
    """The model, tokenizer and task spec of a model saved with an export config."""
    transformers = require("transformers")
    if isinstance(model, transformers.Pipeline):
        tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        model = model.model
    if not isinstance(model, transformers.PreTrainedModel):
        raise TfexportError(
            f"Expected a transformers PreTrainedModel or Pipeline, received {type(model).__name__}. A model of "
            "your own derives from transformers.PreTrainedModel (with its PretrainedConfig)."
        )
    if tokenizer is None:
        raise TfexportError("tokenizer= is required with an export config: requests carry text that its "
                            "tokenizer inputs are fed from, e.g. log_model(model, tokenizer=tok, export_config=cfg).")
    if task is not None and get_task(str(task)).name != config.task_name:
        raise TfexportError(
            f"task={task!r} contradicts the export config, whose postprocess {config.postprocess!r} makes the task "
            f"{config.task_name!r}; leave task= out (the config says it)."
        )
    return model, tokenizer, config.task_spec()


def custom_facts(model: Any, tokenizer: Any, config: ExportConfig) -> Dict[str, Any]:
    """The flavor block entries of a model saved with an export config (checked against the model first)."""
    spec = config.task_spec()
    facts = model_facts(model, tokenizer, spec)
    vocab = int(getattr(model.config, "vocab_size", None) or len(tokenizer))
    check_fits(model, config, vocab_size=vocab, pad_token_id=facts[FlavorKey.PAD_TOKEN_ID],
               max_length=facts[FlavorKey.MAX_LENGTH])
    facts = with_config(facts, config)
    cls = type(model)
    if not cls.__module__.startswith("transformers."):
        facts[FlavorKey.MODEL_CLASS] = f"{cls.__module__}:{cls.__qualname__}"
    return facts


def copy_code_paths(code_paths: Optional[Sequence[str]], path: str) -> None:
    """Copy ``code_paths`` (files or folders) into the model's ``code/`` folder, as MLflow flavors do."""
    if not code_paths:
        return
    if isinstance(code_paths, (str, os.PathLike)):
        code_paths = [os.fspath(code_paths)]
    target = os.path.join(path, CODE_DIR)
    os.makedirs(target, exist_ok=True)
    for item in code_paths:
        name = os.path.basename(os.path.normpath(os.fspath(item)))
        if name in (PACKAGE, f"{PACKAGE}.py", "mlflow"):
            raise TfexportError(f"code_paths entry {item!r} would replace {name!r} in the model's code/ folder.")
        if os.path.isdir(item):
            shutil.copytree(item, os.path.join(target, name), ignore=shutil.ignore_patterns("__pycache__"))
        elif os.path.isfile(item):
            shutil.copy2(item, os.path.join(target, name))
        else:
            raise TfexportError(f"code_paths entry {item!r} is neither a file nor a folder.")


def model_facts(model: Any, tokenizer: Any, spec: TaskSpec) -> Dict[str, Any]:
    """The flavor block entries that describe the model and tokenizer."""
    transformers = require("transformers")
    torch = require("torch")
    config = model.config
    pad = _token_id(tokenizer, "pad_token_id")
    eos = _token_id(tokenizer, "eos_token_id")
    if eos is None and getattr(config, "eos_token_id", None) is not None:
        eos = int(config.eos_token_id if not isinstance(config.eos_token_id, list) else config.eos_token_id[0])
    if pad is None:
        pad = eos if eos is not None else 0
    id2label = {str(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    return {
        FlavorKey.TASK: spec.name,
        FlavorKey.INPUT_NAMES: model_input_names(model, tokenizer),
        FlavorKey.OUTPUT_NAMES: list(spec.output_names),
        FlavorKey.ID2LABEL: id2label if spec.keeps_labels else {},
        FlavorKey.MAX_LENGTH: max_length(model, tokenizer),
        FlavorKey.PAD_TOKEN_ID: pad,
        FlavorKey.EOS_TOKEN_ID: eos,
        FlavorKey.MASK_TOKEN_ID: _token_id(tokenizer, "mask_token_id"),
        FlavorKey.MODEL_TYPE: config.model_type,
        FlavorKey.ARCHITECTURE: type(model).__name__,
        FlavorKey.PROBLEM_TYPE: getattr(config, "problem_type", None),
        FlavorKey.TRANSFORMERS_VERSION: str(transformers.__version__),
        FlavorKey.TORCH_VERSION: str(torch.__version__),
    }


def check_no_pickle(path: str) -> None:
    """Refuse pickle-based weight files: the source variant is safetensors only."""
    for root, _, files in os.walk(path):
        for name in files:
            if name.endswith(_PICKLE_SUFFIXES):
                raise TfexportError(
                    f"Refusing to keep pickle-based file {os.path.join(root, name)} in the model; "
                    "weights are saved as safetensors only."
                )


def save_tokenizer(tokenizer: Any, path: str) -> None:
    target = os.path.join(path, TOKENIZER_DIR)
    tokenizer.save_pretrained(target)
    if not os.path.exists(os.path.join(target, TOKENIZER_FILE)):
        raise TfexportError(
            f"The tokenizer {type(tokenizer).__name__} did not write a tokenizer.json; the serving "
            "runtime needs a fast tokenizer. Load it with AutoTokenizer.from_pretrained(..., use_fast=True)."
        )


def save_model(
    model: Any,
    path: str,
    *,
    tokenizer: Any = None,
    task: Optional[str] = None,
    signature: Optional[ModelSignature] = None,
    input_example: Optional[ModelInputExample] = None,
    pip_requirements: Optional[Sequence[str]] = None,
    extra_pip_requirements: Optional[Sequence[str]] = None,
    metadata: Optional[Dict[str, Any]] = None,
    mlflow_model: Optional[Model] = None,
    image_processor: Any = None,
    input_schema: InputSchemaArg = None,
    export_config: Any = None,
    code_paths: Optional[Sequence[str]] = None,
) -> None:
    """Save a transformers model (or Pipeline) and its tokenizer as a tfexport model.

    ``export_config`` (an :class:`~mlflow_tfexport.ExportConfig`, its ``to_dict()`` or a JSON file) exports,
    validates and serves a model the task table does not know: it is checked against the model here and kept
    in the flavor block, so every later export uses it. Without one, a config registered for the model's
    ``model_type`` by an installed package (entry points ``mlflow_tfexport.export_configs``) is used.
    ``code_paths`` (files or folders) are copied into the model's ``code/`` folder, as MLflow flavors do: a
    model class defined outside transformers travels that way with the source (its variants do not need it).

    Without ``signature=``, the signature declares the task's default inputs (one unnamed string
    column for single-text tasks, named columns for question answering and for a text classifier
    whose ``input_example`` carries ``text_pair``, one unnamed binary column for images; see
    ``flavor.signatures.default_inputs``), which
    MLServer/KServe, ``spark_udf`` and the MLflow UI read. ``input_schema=True`` (or the column
    names, e.g. ``["text", "text_pair"]``) declares named columns instead, which requests must
    then name; ``input_schema=False`` writes no input schema.

    A vision model (one whose forward takes ``pixel_values``) is saved with its
    ``image_processor`` (as ``preprocessor_config.json``) instead of a tokenizer; a Pipeline
    brings its own.
    """
    config = _export_config(model, export_config)
    if config is not None:
        model, preprocessor, spec = _custom_model(model, tokenizer, task, config)
        facts = custom_facts(model, preprocessor, config)  # refuses a config that does not fit, before any write
    else:
        model, preprocessor, task = _split_pipeline(model, tokenizer, task, image_processor)
        spec = resolve_task(model, task)
    if os.path.exists(path) and os.listdir(path):
        raise TfexportError(f"Path {path!r} already exists and is not empty; choose a new path.")
    os.makedirs(path, exist_ok=True)
    if config is not None:
        asset_key, asset_dir = FlavorKey.TOKENIZER_DIR, TOKENIZER_DIR
        save_tokenizer(preprocessor, path)
    elif spec.input_kind == IMAGE_TEXT:
        tokenizer, image_processor = preprocessor
        text_config = getattr(model.config, "text_config", model.config)
        pre = save_image_processor(image_processor, path)
        facts = image_text_facts(model, model_facts(model, tokenizer, spec), pre, spec,
                                 max_length(text_config, tokenizer))
        asset_key, asset_dir = FlavorKey.TOKENIZER_DIR, TOKENIZER_DIR
        save_tokenizer(tokenizer, path)
        check_no_pickle(os.path.join(path, IMAGE_PROCESSOR_DIR))
    elif spec.input_kind == IMAGE:
        facts = image_model_facts(model, preprocessor, spec, save_image_processor(preprocessor, path))
        asset_key, asset_dir = FlavorKey.IMAGE_PROCESSOR_DIR, IMAGE_PROCESSOR_DIR
    else:
        facts = model_facts(model, preprocessor, spec)
        asset_key, asset_dir = FlavorKey.TOKENIZER_DIR, TOKENIZER_DIR
        save_tokenizer(preprocessor, path)
    assets = {asset_key: asset_dir}
    if spec.input_kind == IMAGE_TEXT:
        assets[FlavorKey.IMAGE_PROCESSOR_DIR] = IMAGE_PROCESSOR_DIR
    conf = source_block(facts, fmt=Format.TRANSFORMERS, model_file=MODEL_DIR, assets=assets)
    bars = require("transformers").utils.logging
    shown = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()  # no "Writing model shards" bar inside log_model
    try:
        model.save_pretrained(os.path.join(path, MODEL_DIR))
    finally:
        if shown:
            bars.enable_progress_bar()
    check_no_pickle(os.path.join(path, MODEL_DIR))
    check_no_pickle(os.path.join(path, asset_dir))
    requirements = resolve_requirements(
        default_requirements(Format.TRANSFORMERS), pip_requirements, extra_pip_requirements
    )
    if signature is None:
        config = model.config
        hidden = getattr(config, "hidden_size", None) or (getattr(config, "hidden_sizes", None) or [None])[-1]
        signature = task_signature(spec, hidden, input_schema, input_example)
    elif input_schema:
        raise TfexportError("Pass either signature= or input_schema=, not both: input_schema builds the signature.")
    if input_example is not None:
        input_example = named_example(input_example, signature)
    copy_code_paths(code_paths, path)
    write_model(
        path,
        conf,
        requirements=requirements,
        signature=signature,
        input_example=input_example,
        metadata=metadata,
        mlflow_model=mlflow_model,
    )


def log_model(
    model: Any,
    *,
    tokenizer: Any = None,
    task: Optional[str] = None,
    name: str = LOGGED_MODEL_NAME,
    registered_model_name: Optional[str] = None,
    signature: Optional[ModelSignature] = None,
    input_example: Optional[ModelInputExample] = None,
    pip_requirements: Optional[Sequence[str]] = None,
    extra_pip_requirements: Optional[Sequence[str]] = None,
    metadata: Optional[Dict[str, Any]] = None,
    image_processor: Any = None,
    input_schema: InputSchemaArg = None,
    export_config: Any = None,
    code_paths: Optional[Sequence[str]] = None,
    **kwargs: Any,
) -> ModelInfo:
    """Log a transformers model as a tfexport model in the active run.

    Example:
        >>> import mlflow, mlflow_tfexport
        >>> with mlflow.start_run():
        ...     info = mlflow.tfexport.log_model(model, tokenizer=tok, registered_model_name="sentiment")

    With ``registered_model_name`` the model is registered as a new version
    tagged ``tfexport.format=transformers`` and ``tfexport.task``.

    Vision models take ``image_processor=`` (e.g. ``AutoImageProcessor.from_pretrained(...)``)
    instead of ``tokenizer=``, as ``mlflow.transformers`` names that component; a Pipeline brings
    its own image processor.

    ``export_config=`` exports, validates and serves an architecture the task table does not know (see
    :class:`~mlflow_tfexport.ExportConfig` and docs/custom-export-config.md); it is saved with the source, so
    ``export("models:/<name>/<version>")``, the CLI, the MLproject and the worker use it without your code.
    ``code_paths=`` carries a model class of your own with the source (its exported variants do not need it).

    The signature's inputs default to the task's (``default_inputs``: one unnamed string column
    for single-text tasks, which keeps bare lists and every JSON request form working; named
    columns for question answering, and ``text`` + ``text_pair`` for a classifier whose
    ``input_example`` carries ``text_pair``). ``input_schema=True`` declares the task's named
    columns (``text``, optional ``text_pair``; ``question`` and ``context``; ``image``);
    ``input_schema=["text", "text_pair"]`` declares exactly those, all required (a pair
    classifier: MLflow drops a ``text_pair`` column sent to the unnamed default);
    ``input_schema=False`` writes none.
    """
    import sys

    flavor_module = sys.modules[__name__]
    info = Model.log(
        artifact_path=None,
        name=name,
        flavor=flavor_module,
        tokenizer=tokenizer,
        image_processor=image_processor,
        task=task,
        input_schema=input_schema,
        export_config=export_config,
        code_paths=code_paths,
        signature=signature,
        input_example=input_example,
        pip_requirements=pip_requirements,
        extra_pip_requirements=extra_pip_requirements,
        metadata=metadata,
        model=model,
        **kwargs,
    )
    if registered_model_name:
        conf = info.flavors[FLAVOR_NAME]
        version = register_version(
            registered_model_name,
            info,
            tags={Tag.FORMAT: Format.TRANSFORMERS, Tag.TASK: conf[FlavorKey.TASK]},
            description=(
                f"Transformers source ({conf[FlavorKey.TASK]}, {conf[FlavorKey.ARCHITECTURE]}, safetensors), "
                "logged with mlflow.tfexport.log_model. Export it with `mlflow-tfexport export` to add "
                "ONNX, TorchScript or Neuron variants as new versions."
            ),
        )
        info.registered_model_version = int(version.version)
    return info


@dataclass
class LoadedModel:
    """The native objects of a tfexport model.

    ``model`` is a ``PreTrainedModel`` (source), an ``onnxruntime.InferenceSession``
    (onnx) or a ``torch.jit.ScriptModule`` (torchscript, neuron); ``tokenizer`` is
    a transformers tokenizer for the source and a ``tokenizers.Tokenizer`` otherwise.
    """

    model: Any
    tokenizer: Any
    task: str
    format: str
    flavor_conf: Dict[str, Any]


def load_model(model_uri: str, dst_path: Optional[str] = None) -> LoadedModel:
    """Load the native model object of any tfexport variant."""
    from mlflow.artifacts import download_artifacts

    local = download_artifacts(artifact_uri=model_uri, dst_path=dst_path)
    conf = read_flavor_conf(local)
    fmt = conf[FlavorKey.FORMAT]
    if conf.get(FlavorKey.IMAGE_PROCESSOR_DIR):
        return _load_image_model(local, conf)
    tok_dir = artifact_path(local, conf, FlavorKey.TOKENIZER_DIR)
    if fmt == Format.TRANSFORMERS:
        transformers = require("transformers")
        return LoadedModel(
            load_transformers_model(local, conf),
            transformers.AutoTokenizer.from_pretrained(tok_dir),
            conf[FlavorKey.TASK],
            fmt,
            conf,
        )
    tokenizers = require("tokenizers")
    runner = load_runner(local, conf, {})
    native = getattr(runner, "session", None) or getattr(runner, "module", None) or runner
    return LoadedModel(
        native,
        tokenizers.Tokenizer.from_file(os.path.join(tok_dir, TOKENIZER_FILE)),
        conf[FlavorKey.TASK],
        fmt,
        conf,
    )


def _load_image_model(local: str, conf: Dict[str, Any]) -> LoadedModel:
    """A vision variant: the transformers image processor for the source, the numpy one otherwise."""
    fmt = conf[FlavorKey.FORMAT]
    processor_dir = artifact_path(local, conf, FlavorKey.IMAGE_PROCESSOR_DIR)
    if fmt == Format.TRANSFORMERS:
        transformers = require("transformers")
        return LoadedModel(load_transformers_model(local, conf),
                           transformers.AutoImageProcessor.from_pretrained(processor_dir),
                           conf[FlavorKey.TASK], fmt, conf)
    runner = load_runner(local, conf, {})
    native = getattr(runner, "session", None) or getattr(runner, "module", None) or runner
    return LoadedModel(native, ImagePreprocessor.from_dir(processor_dir), conf[FlavorKey.TASK], fmt, conf)
