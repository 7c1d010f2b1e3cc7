"""A user-written export config: the inputs, outputs, opset, tolerance and post-processing of a model the
task table does not know (what ``transformers.onnx.OnnxConfig`` subclasses described before Transformers 5).

The config is *data*: :meth:`ExportConfig.to_dict` is JSON that the flavor block keeps under
``export_config``, and the exporter, the validator and the scoring server read it back with
:meth:`ExportConfig.from_dict`. Nothing of the user's code is imported at serving time; a variant serves
with this package's serving code alone (the copy in its ``code/``). ``from_dict`` reads an MLmodel that
anyone with write access to the artifacts may have changed, so every field is checked and bounded.

Example:
    >>> config = ExportConfig(
    ...     inputs=(InputSpec("input_ids"), InputSpec("attention_mask"),
    ...             InputSpec("price", feed=Feed.COLUMN, dtype="float32")),
    ...     outputs=(OutputSpec("logits", {0: "batch"}), OutputSpec("score", {0: "batch"})),
    ...     opset=17, atol=1e-4,
    ... )

Serving path: no torch, no transformers, Python 3.10.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.errors import TfexportError
from mlflow_tfexport.tasks import (
    BATCH,
    CUSTOM,
    SEQUENCE,
    TASKS,
    TEXT,
    TEXT_INPUTS,
    OutputSpec,
    TaskSpec,
    get_task,
)

__all__ = ["RAW", "ExportConfig", "ExportConfigError", "Feed", "InputSpec", "OutputSpec"]

#: ``ExportConfig.postprocess`` value: every output returned as a column of the response, row by row.
RAW = "raw"
#: Bounds of a config read from an MLmodel (untrusted): inputs, outputs, axes per tensor, name lengths.
MAX_TENSORS = 32
MAX_AXES = 8
MAX_NAME = 64
#: The most numbers a constant input may hold per row.
MAX_CONSTANT_VALUES = 4096
#: Numeric dtypes an input may have (numpy names).
DTYPES = ("float32", "float64", "int64", "int32", "bool")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_VERSION = 1


class ExportConfigError(TfexportError):
    """An export config that is malformed, or that does not fit the model it is given with."""


class Feed:
    """Values of ``InputSpec.feed``: where a request's value for the input comes from."""

    TOKENIZER = "tokenizer_output"  # a tokenizer output (``key``: input_ids, attention_mask, token_type_ids)
    COLUMN = "column"  # a numeric column of the request (``key``: its name; default the input's name)
    CONSTANT = "constant"  # the same ``value`` for every row

    ALL = (TOKENIZER, COLUMN, CONSTANT)


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name (the ``forward`` argument and the graph input), its dynamic axes and its feed.

    Args:
        name: The ``forward`` keyword argument, also the name of the exported graph's input.
        axes: Dynamic axes, axis index -> name (``"batch"``, ``"sequence"``, or a name of yours). Default:
            ``{0: "batch", 1: "sequence"}`` for a tokenizer feed, ``{0: "batch"}`` otherwise.
        feed: :class:`Feed` value: ``"tokenizer_output"`` (default), ``"column"`` or ``"constant"``.
        key: The tokenizer output (``input_ids``, ``attention_mask``, ``token_type_ids``) or the request
            column it is read from; default ``name``.
        dtype: ``float32`` (default for columns and constants), ``float64``, ``int64`` (tokenizer feeds),
            ``int32`` or ``bool``.
        value: A constant feed's value: a number, or a list of numbers (one row's values).
        shape: A column feed's shape per row: ``()`` (default) for a number, ``(4,)`` for a list of 4 numbers.
    """

    name: str
    axes: Optional[Mapping[int, str]] = None
    feed: str = Feed.TOKENIZER
    key: Optional[str] = None
    dtype: Optional[str] = None
    value: Any = None
    shape: Tuple[int, ...] = ()

    def __post_init__(self) -> None:  # defaults resolved: equal configs compare equal, as written or as read back
        object.__setattr__(self, "shape", tuple(self.shape))
        object.__setattr__(self, "axes", self.dynamic_axes)
        object.__setattr__(self, "key", self.source)
        object.__setattr__(self, "dtype", self.numpy_dtype)

    @property
    def row_shape(self) -> Tuple[int, ...]:
        """The shape of one row's value (a constant's from its value)."""
        if self.feed == Feed.CONSTANT:
            return (len(self.value),) if isinstance(self.value, (list, tuple)) else ()
        return self.shape

    @property
    def source(self) -> str:
        """The tokenizer output or request column read (``key``, default ``name``)."""
        return self.key or self.name

    @property
    def numpy_dtype(self) -> str:
        if self.dtype:
            return self.dtype
        return "int64" if self.feed == Feed.TOKENIZER else "float32"

    @property
    def dynamic_axes(self) -> Dict[int, str]:
        if self.axes is not None and not isinstance(self.axes, Mapping):
            raise _bad(f"inputs ({self.name}).axes", self.axes, "a mapping of axis index to name, e.g. {0: 'batch'}")
        if self.axes is not None:
            return {int(k): str(v) for k, v in self.axes.items()}
        return {0: BATCH, 1: SEQUENCE} if self.feed == Feed.TOKENIZER else {0: BATCH}


@dataclass(frozen=True)
class ExportConfig:
    """How to export, validate and serve a model the task table does not know.

    Args:
        inputs: The model inputs, in the order the exported graph takes them.
        outputs: The outputs to export (``OutputSpec(name, axes)``): keys of what ``forward`` returns.
        postprocess: ``"raw"`` (default: each output a column of the response), or a task of the task table
            whose post-processing applies to these outputs (e.g. ``"text-classification"`` for ``logits``).
        opset: Default ONNX opset (``export(opset=...)`` overrides it).
        atol: Validation tolerance: max abs difference per output (``export(atol=...)`` overrides it).
        text_columns: The request's text columns the tokenizer reads (two: a text pair). Default: the
            post-processing task's, ``("text",)`` for raw outputs.
        model_type: The ``config.model_type`` this config is for (informational; entry points key on it).
    """

    inputs: Tuple[InputSpec, ...]
    outputs: Tuple[OutputSpec, ...]
    postprocess: str = RAW
    opset: int = 17
    atol: float = 1e-4
    text_columns: Optional[Tuple[str, ...]] = None
    model_type: Optional[str] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        if self.text_columns is not None:
            object.__setattr__(self, "text_columns", tuple(self.text_columns))
        check_config(self)

    # ------------------------------------------------------------------ what the rest of the package asks

    @property
    def task_name(self) -> str:
        """The flavor block's ``task``: the post-processing task, or ``custom`` for raw outputs."""
        return CUSTOM.name if self.postprocess == RAW else get_task(self.postprocess).name

    @property
    def input_names(self) -> List[str]:
        return [i.name for i in self.inputs]

    @property
    def output_names(self) -> List[str]:
        return [o.name for o in self.outputs]

    @property
    def tokenizer_inputs(self) -> List[InputSpec]:
        return [i for i in self.inputs if i.feed == Feed.TOKENIZER]

    @property
    def column_inputs(self) -> List[InputSpec]:
        return [i for i in self.inputs if i.feed == Feed.COLUMN]

    def input(self, name: str) -> InputSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise ExportConfigError(f"Export config has no input {name!r}; its inputs: {', '.join(self.input_names)}.")

    def task_spec(self) -> TaskSpec:
        """The task spec the package works with: the post-processing task's (or ``custom``'s) behaviour with
        this config's outputs, opset, tolerance and request columns."""
        base = CUSTOM if self.postprocess == RAW else get_task(self.postprocess)
        return replace(
            base,
            outputs=self.outputs,
            default_opset=int(self.opset),
            atol=float(self.atol),
            text_columns=self.text_columns or base.text_columns,
            optional_columns=() if self.text_columns else base.optional_columns,
            numeric_columns=tuple(dict.fromkeys(i.source for i in self.column_inputs)),
            custom=self,
        )

    # ------------------------------------------------------------------ JSON

    def to_dict(self) -> Dict[str, Any]:
        """The JSON-serialisable form kept in the flavor block (axis indices as strings, as JSON keys are)."""
        return {
            "version": _VERSION,
            "inputs": [
                {"name": i.name, "axes": {str(k): v for k, v in i.dynamic_axes.items()}, "feed": i.feed,
                 "key": i.source, "dtype": i.numpy_dtype,
                 **({"value": list(i.value) if isinstance(i.value, tuple) else i.value}
                    if i.feed == Feed.CONSTANT else {}),
                 **({"shape": list(i.shape)} if i.shape else {})}
                for i in self.inputs
            ],
            "outputs": [{"name": o.name, "axes": {str(k): v for k, v in o.axes.items()}} for o in self.outputs],
            "postprocess": self.postprocess,
            "opset": int(self.opset),
            "atol": float(self.atol),
            "text_columns": list(self.text_columns) if self.text_columns else None,
            "model_type": self.model_type,
        }

    @classmethod
    def from_dict(cls, data: Any) -> ExportConfig:
        """The config of ``data`` (what :meth:`to_dict` wrote), every field checked; else
        :class:`ExportConfigError` naming the field."""
        if isinstance(data, ExportConfig):
            return data
        if not isinstance(data, Mapping):
            raise _bad("export_config", data, "a mapping with inputs and outputs (ExportConfig.to_dict())")
        unknown = sorted(set(map(str, data)) - {"version", "inputs", "outputs", "postprocess", "opset", "atol",
                                                 "text_columns", "model_type"})
        if unknown:
            raise _bad("export_config", unknown, "only the fields inputs, outputs, postprocess, opset, atol, "
                       "text_columns, model_type, version")
        inputs = _items(data.get("inputs"), "inputs")
        outputs = _items(data.get("outputs"), "outputs")
        try:
            return cls(
                inputs=tuple(_input(item, f"inputs[{n}]") for n, item in enumerate(inputs)),
                outputs=tuple(OutputSpec(_str(item.get("name"), f"outputs[{n}].name"),
                                         _axes(item.get("axes"), f"outputs[{n}].axes") or {})
                              for n, item in enumerate(outputs)),
                postprocess=_str(data.get("postprocess", RAW), "postprocess"),
                opset=_int(data.get("opset", 17), "opset"),
                atol=_float(data.get("atol", 1e-4), "atol"),
                text_columns=tuple(_str(c, "text_columns") for c in _items(data.get("text_columns"), "text_columns",
                                                                           optional=True)) or None,
                model_type=None if data.get("model_type") is None else _str(data["model_type"], "model_type"),
            )
        except (TypeError, ValueError) as exc:
            raise ExportConfigError(f"export_config cannot be read: {exc}.") from exc


# --------------------------------------------------------------------------- checks (shape of the config only;
# whether it fits a model is checked by ``mlflow_tfexport.export.custom.check_fits``)


def _bad(where: str, value: Any, expected: str) -> ExportConfigError:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return ExportConfigError(f"Export config field {where} is {shown}; expected {expected}.")


def _items(value: Any, where: str, optional: bool = False) -> List[Any]:
    if value is None and optional:
        return []
    if not isinstance(value, (list, tuple)) or len(value) > MAX_TENSORS:
        raise _bad(where, value, f"a list of at most {MAX_TENSORS} entries")
    return list(value)


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise _bad(where, value, f"a non-empty string of at most {MAX_NAME} characters")
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(where, value, "an integer")
    return value


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(where, value, "a number")
    return float(value)


def _axes(value: Any, where: str) -> Optional[Dict[int, str]]:
    if value is None:
        return None
    if not isinstance(value, Mapping) or len(value) > MAX_AXES:
        raise _bad(where, value, f"a mapping of axis index to axis name (at most {MAX_AXES}), e.g. {{0: 'batch'}}")
    out: Dict[int, str] = {}
    for key, name in value.items():
        text = str(key)
        if isinstance(key, bool) or not (isinstance(key, int) or (text.isascii() and text.isdigit())) \
                or not 0 <= int(text) < MAX_AXES:
            raise _bad(where, value, f"axis indices from 0 to {MAX_AXES - 1}")
        out[int(text)] = _str(name, f"{where}[{text}]")
    return out


def _input(item: Any, where: str) -> InputSpec:
    if not isinstance(item, Mapping):
        raise _bad(where, item, "a mapping with name, axes, feed, key, dtype (and value for a constant)")
    return InputSpec(
        name=_str(item.get("name"), f"{where}.name"),
        axes=_axes(item.get("axes"), f"{where}.axes"),
        feed=_str(item.get("feed", Feed.TOKENIZER), f"{where}.feed"),
        key=None if item.get("key") is None else _str(item["key"], f"{where}.key"),
        dtype=None if item.get("dtype") is None else _str(item["dtype"], f"{where}.dtype"),
        value=item.get("value"),
        shape=tuple(_int(v, f"{where}.shape") for v in _items(item.get("shape"), f"{where}.shape", optional=True)),
    )


def _check_constant(spec: InputSpec, where: str) -> None:
    value = spec.value
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or len(values) > MAX_CONSTANT_VALUES or not all(
            isinstance(v, (int, float)) and (not isinstance(v, bool) or spec.numpy_dtype == "bool") for v in values):
        raise _bad(f"{where}.value", value, f"a number or a list of at most {MAX_CONSTANT_VALUES} numbers")


def _check_axes(axes: Mapping[int, str], where: str) -> None:
    for axis, name in axes.items():
        if not isinstance(axis, int) or isinstance(axis, bool) or not 0 <= axis < MAX_AXES:
            raise _bad(where, dict(axes), f"axis indices from 0 to {MAX_AXES - 1}")
        if not isinstance(name, str) or not _NAME.match(name) or len(name) > MAX_NAME:
            raise _bad(where, dict(axes), "axis names such as 'batch' or 'sequence'")
    if axes.get(0) != BATCH:
        raise _bad(where, dict(axes), "axis 0 named 'batch': every input and output has one row per request row")


def check_config(config: ExportConfig) -> None:
    """The config's own consistency (names, feeds, dtypes, axes, post-processing); raises ExportConfigError."""
    if not config.inputs:
        raise _bad("inputs", [], "at least one InputSpec")
    if not config.outputs:
        raise _bad("outputs", [], "at least one OutputSpec, e.g. OutputSpec('logits', {0: 'batch'})")
    for kind, specs in (("inputs", config.inputs), ("outputs", config.outputs)):
        if len(specs) > MAX_TENSORS:
            raise _bad(kind, len(specs), f"at most {MAX_TENSORS} entries")
        names = [s.name for s in specs]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise _bad(kind, names, f"distinct names ({', '.join(twice)} given more than once)")
        for n, spec in enumerate(specs):
            if not isinstance(spec, (InputSpec, OutputSpec)):
                raise _bad(f"{kind}[{n}]", spec, "an InputSpec" if kind == "inputs" else "an OutputSpec")
            if not isinstance(spec.name, str) or not _NAME.match(spec.name) or len(spec.name) > MAX_NAME:
                raise _bad(f"{kind}[{n}].name", spec.name, "an identifier such as 'input_ids' or 'logits'")
    for n, spec in enumerate(config.inputs):
        where = f"inputs[{n}] ({spec.name})"
        if spec.feed not in Feed.ALL:
            raise _bad(f"{where}.feed", spec.feed, "one of " + ", ".join(repr(f) for f in Feed.ALL))
        if spec.numpy_dtype not in DTYPES:
            raise _bad(f"{where}.dtype", spec.dtype, "one of " + ", ".join(DTYPES))
        _check_axes(spec.dynamic_axes, f"{where}.axes")
        if spec.feed == Feed.TOKENIZER:
            if spec.source not in TEXT_INPUTS:
                raise _bad(f"{where}.key", spec.source, "a tokenizer output: " + ", ".join(TEXT_INPUTS))
            if spec.numpy_dtype != "int64":
                raise _bad(f"{where}.dtype", spec.dtype, "int64 (tokenizer outputs are token ids and masks)")
            if spec.dynamic_axes != {0: BATCH, 1: SEQUENCE}:
                raise _bad(f"{where}.axes", spec.dynamic_axes,
                           "{0: 'batch', 1: 'sequence'}: the tokenizer pads each batch to its longest row, so the "
                           "sequence axis of a tokenizer output is dynamic")
        elif spec.feed == Feed.CONSTANT:
            _check_constant(spec, where)
        elif spec.feed == Feed.COLUMN and not _NAME.match(spec.source):
            raise _bad(f"{where}.key", spec.source, "a column name such as 'price'")
        if spec.feed != Feed.TOKENIZER and (len(spec.row_shape) > MAX_AXES - 1 or any(
                isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= MAX_CONSTANT_VALUES
                for d in spec.row_shape) or int(np.prod(spec.row_shape)) > MAX_CONSTANT_VALUES):
            raise _bad(f"{where}.shape", spec.shape, f"a row shape of positive sizes, at most {MAX_CONSTANT_VALUES} "
                       "numbers per row")
        if spec.feed != Feed.TOKENIZER and any(a > len(spec.row_shape) for a in spec.dynamic_axes):
            raise _bad(f"{where}.axes", spec.dynamic_axes, f"axes of a tensor of {1 + len(spec.row_shape)} "
                       f"dimension(s) (batch, then the row shape {spec.row_shape})")
    if not config.tokenizer_inputs:
        raise _bad("inputs", config.input_names,
                   "at least one tokenizer input (e.g. InputSpec('input_ids')): requests carry text")
    keys = [i.source for i in config.tokenizer_inputs]
    if "input_ids" not in keys:
        raise _bad("inputs", config.input_names, "a tokenizer input fed from 'input_ids' (the token ids)")
    for n, out in enumerate(config.outputs):
        _check_axes(out.axes, f"outputs[{n}] ({out.name}).axes")
    if config.postprocess != RAW:
        if config.postprocess not in TASKS and get_task(config.postprocess).name not in TASKS:
            raise _bad("postprocess", config.postprocess, f"'raw' or a task: {', '.join(TASKS)}")
        task = get_task(config.postprocess)
        if task.generative or task.postprocess is None or task.input_kind != TEXT:
            raise _bad("postprocess", config.postprocess, "'raw' or a text task that post-processes outputs: "
                       + ", ".join(t.name for t in TASKS.values() if t.postprocess and t.input_kind == TEXT))
        missing = [o for o in task.output_names if o not in config.output_names]
        if missing:
            raise _bad("outputs", config.output_names,
                       f"the outputs that {task.name!r} post-processes: {', '.join(task.output_names)} "
                       f"(missing {', '.join(missing)}); or postprocess='raw'")
    columns = config.text_columns or ()
    if config.text_columns is not None and not 1 <= len(columns) <= 2:
        raise _bad("text_columns", list(columns), "one text column, or two for a text pair")
    clash = sorted(set(columns) & {i.source for i in config.column_inputs})
    if clash:
        raise _bad("text_columns", list(columns), f"names other than the numeric columns ({', '.join(clash)})")
    if not isinstance(config.opset, int) or isinstance(config.opset, bool):
        raise _bad("opset", config.opset, "an integer such as 17")
    if isinstance(config.atol, bool) or not isinstance(config.atol, (int, float)) or not 0 < config.atol < 1e3:
        raise _bad("atol", config.atol, "a positive number such as 1e-4")


def config_of(conf: Mapping[str, Any]) -> Optional[ExportConfig]:
    """The export config of a flavor block, or None (a model of the task table)."""
    raw = conf.get(FlavorKey.EXPORT_CONFIG)
    return None if raw is None else ExportConfig.from_dict(raw)


def task_of(conf: Mapping[str, Any]) -> TaskSpec:
    """The task spec of a flavor block: its task's row, or the one derived from its export config."""
    config = config_of(conf)
    return get_task(conf[FlavorKey.TASK]) if config is None else config.task_spec()


def with_config(conf: Mapping[str, Any], config: ExportConfig) -> Dict[str, Any]:
    """``conf`` (a flavor block) with ``config``'s task, inputs, outputs and the config itself."""
    out = dict(conf)
    out.update({FlavorKey.TASK: config.task_name, FlavorKey.INPUT_NAMES: config.input_names,
                FlavorKey.OUTPUT_NAMES: config.output_names, FlavorKey.EXPORT_CONFIG: config.to_dict()})
    return out


def config_names(config: ExportConfig) -> Sequence[str]:
    """The request columns a config reads: its text columns, then its numeric columns."""
    spec = config.task_spec()
    return (*spec.text_columns, *spec.numeric_columns)
