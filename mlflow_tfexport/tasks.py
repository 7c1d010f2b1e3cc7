"""Task specs as data.

One row per task: the auto-model class, the text columns a request carries,
the model outputs with their dynamic axes, the default ONNX opset and
validation tolerance, the post-processing and the ``params`` it accepts.
The old ``transformers.onnx`` feature names are accepted as aliases.

This module is imported by the serving path: it must not import torch or
transformers, and must run on Python 3.10.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from mlflow_tfexport.errors import UnknownTaskError

BATCH = "batch"
SEQUENCE = "sequence"

#: Inputs a text model may take, in the order a traced module receives them.
TEXT_INPUTS: Tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
INPUT_AXES: Dict[int, str] = {0: BATCH, 1: SEQUENCE}


@dataclass(frozen=True)
class OutputSpec:
    """One model output and its dynamic axes (axis index -> name)."""

    name: str
    axes: Mapping[int, str]


@dataclass(frozen=True)
class ParamSpec:
    """One inference ``params`` entry: MLflow data type and default."""

    name: str
    dtype: str
    default: Any


_COMMON_PARAMS = (
    ParamSpec("truncation", "boolean", True),
    ParamSpec("batch_size", "long", 0),
)


@dataclass(frozen=True)
class TaskSpec:
    """Everything the export, validation and serving code needs about a task."""

    name: str
    auto_model: str
    text_columns: Tuple[str, ...]
    outputs: Tuple[OutputSpec, ...]
    default_opset: int = 17
    atol: float = 1e-4
    aliases: Tuple[str, ...] = ()
    class_suffixes: Tuple[str, ...] = ()
    params: Tuple[ParamSpec, ...] = ()
    optional_columns: Tuple[str, ...] = ()
    generative: bool = False
    output_columns: Tuple[Tuple[str, str], ...] = field(default=())

    @property
    def output_names(self) -> Tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    @property
    def all_params(self) -> Tuple[ParamSpec, ...]:
        return _COMMON_PARAMS + self.params

    def param_defaults(self) -> Dict[str, Any]:
        return {p.name: p.default for p in self.all_params}


_SEQ = {0: BATCH, 1: SEQUENCE}
_ROW = {0: BATCH}

TASKS: Dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            name="feature-extraction",
            auto_model="AutoModel",
            aliases=("default",),
            class_suffixes=("Model",),
            text_columns=("text",),
            outputs=(OutputSpec("last_hidden_state", {0: BATCH, 1: SEQUENCE}),),
            params=(ParamSpec("pooling", "string", "mean"), ParamSpec("normalize", "boolean", False)),
        ),
        TaskSpec(
            name="text-classification",
            auto_model="AutoModelForSequenceClassification",
            aliases=("sequence-classification", "sentiment-analysis"),
            class_suffixes=("ForSequenceClassification",),
            text_columns=("text",),
            optional_columns=("text_pair",),
            outputs=(OutputSpec("logits", _ROW),),
            output_columns=(("label", "string"), ("score", "double")),
        ),
        TaskSpec(
            name="token-classification",
            auto_model="AutoModelForTokenClassification",
            aliases=("ner",),
            class_suffixes=("ForTokenClassification",),
            text_columns=("text",),
            outputs=(OutputSpec("logits", _SEQ),),
            params=(ParamSpec("output", "string", "labels"),),
        ),
        TaskSpec(
            name="question-answering",
            auto_model="AutoModelForQuestionAnswering",
            class_suffixes=("ForQuestionAnswering",),
            text_columns=("question", "context"),
            outputs=(OutputSpec("start_logits", _SEQ), OutputSpec("end_logits", _SEQ)),
            params=(ParamSpec("max_answer_len", "long", 15),),
            output_columns=(("answer", "string"), ("score", "double"), ("start", "long"), ("end", "long")),
        ),
        TaskSpec(
            name="fill-mask",
            auto_model="AutoModelForMaskedLM",
            aliases=("masked-lm",),
            class_suffixes=("ForMaskedLM",),
            text_columns=("text",),
            outputs=(OutputSpec("logits", _SEQ),),
            params=(ParamSpec("top_k", "long", 5),),
            output_columns=(("token_str", "string"), ("score", "double")),
        ),
        TaskSpec(
            name="text-generation",
            auto_model="AutoModelForCausalLM",
            aliases=("causal-lm",),
            class_suffixes=("ForCausalLM", "LMHeadModel"),
            text_columns=("text",),
            outputs=(OutputSpec("logits", _SEQ),),
            atol=1e-4,
            generative=True,
            params=(ParamSpec("max_new_tokens", "long", 20),),
        ),
    )
}

_ALIASES: Dict[str, str] = {alias: spec.name for spec in TASKS.values() for alias in spec.aliases}


def known_tasks() -> Tuple[str, ...]:
    return tuple(TASKS)


def get_task(name: str) -> TaskSpec:
    """Return the spec for ``name`` (a task or an old feature alias)."""
    key = _ALIASES.get(name, name)
    if key not in TASKS:
        aliases = ", ".join(f"{a} -> {t}" for a, t in sorted(_ALIASES.items()))
        raise UnknownTaskError(
            f"Unknown task {name!r}. Known tasks: {', '.join(TASKS)} "
            f"(old feature names also accepted: {aliases})."
        )
    return TASKS[key]


def infer_task(model_class_name: str) -> TaskSpec:
    """Infer the task from a transformers model class name (e.g. ``BertForMaskedLM``)."""
    # Longest suffix first so that "ForCausalLM" wins over "Model".
    candidates = sorted(
        ((suffix, spec) for spec in TASKS.values() for suffix in spec.class_suffixes),
        key=lambda item: -len(item[0]),
    )
    for suffix, spec in candidates:
        if model_class_name.endswith(suffix):
            return spec
    raise UnknownTaskError(
        f"Cannot infer a task from model class {model_class_name!r}. Pass task= explicitly; "
        f"known tasks: {', '.join(TASKS)}."
    )


def dummy_inputs(
    input_names: Tuple[str, ...],
    batch: int,
    sequence: int,
    *,
    vocab_size: int,
    pad_token_id: Optional[int],
    seed: int = 0,
    padded_rows: bool = True,
    eos_token_id: Optional[int] = None,
) -> Dict[str, np.ndarray]:
    """Make int64 model inputs of one shape, with padded rows when ``padded_rows``.

    Row ``i`` of a padded batch keeps ``sequence - i * step`` real tokens (at
    least one), so every batch of two or more rows has padding in it. With
    ``eos_token_id`` each row's last real token is that id, as the tokenizers
    of encoder-decoder models write it (their classifiers pool at it).
    """
    rng = np.random.default_rng(seed)
    low = min(5, max(vocab_size - 1, 0))
    ids = rng.integers(low, max(vocab_size, low + 1), size=(batch, sequence), dtype=np.int64)
    mask = np.ones((batch, sequence), dtype=np.int64)
    if padded_rows and batch > 1:
        step = max(1, sequence // (2 * batch))
        for row in range(1, batch):
            keep = max(1, sequence - row * step)
            mask[row, keep:] = 0
    if eos_token_id is not None:
        ids[np.arange(batch), mask.sum(axis=1) - 1] = eos_token_id
    pad = 0 if pad_token_id is None else pad_token_id
    ids = np.where(mask == 1, ids, pad).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {name: feeds[name] for name in input_names}
