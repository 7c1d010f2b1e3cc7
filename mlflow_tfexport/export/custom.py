"""User-written export configs on the export side: where one comes from, its dummy inputs, and whether it fits
the model (refused before any export, with the model's actual signature in the message).

A config comes from ``log_model(export_config=...)`` (kept in the source's flavor block), from
``export(config=...)`` (an override: an ``ExportConfig``, its ``to_dict()`` or a JSON file), or from a package
that registers it for a ``model_type`` in the ``mlflow_tfexport.export_configs`` entry-point group
(``model_type = "module:attribute"``, the attribute an ``ExportConfig`` or a function returning one).
"""

from __future__ import annotations

import inspect
import json
import os
from importlib import metadata
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport._lazy import require
from mlflow_tfexport.constants import EXPORT_CONFIG_ENTRY_POINTS
from mlflow_tfexport.errors import cause
from mlflow_tfexport.serving.export_config import ExportConfig, ExportConfigError, Feed
from mlflow_tfexport.tasks import BATCH, SEQUENCE, dummy_inputs

#: The two shapes a config is checked at (batch, sequence): every dynamic axis must follow them.
CHECK_SHAPES: Tuple[Tuple[int, int], ...] = ((2, 7), (3, 11))
#: The largest JSON file ``load_config`` reads.
MAX_CONFIG_BYTES = 1 << 20

ConfigArg = Any  # ExportConfig | Mapping | str | os.PathLike | None


def load_config(value: ConfigArg) -> Optional[ExportConfig]:
    """An ``ExportConfig`` from what a user passes: the object, its ``to_dict()`` or a path to a JSON file of it."""
    if value is None or isinstance(value, ExportConfig):
        return value
    if isinstance(value, Mapping):
        return ExportConfig.from_dict(value)
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if not os.path.isfile(path):
            raise ExportConfigError(f"Export config file {path!r} does not exist; pass a JSON file written from "
                                    "ExportConfig.to_dict(), or the ExportConfig itself.")
        if os.path.getsize(path) > MAX_CONFIG_BYTES:
            raise ExportConfigError(f"Export config file {path!r} is larger than {MAX_CONFIG_BYTES} bytes.")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise ExportConfigError(f"Export config file {path!r} is not readable JSON: {cause(exc)}.") from exc
        return ExportConfig.from_dict(data)
    raise ExportConfigError(
        f"config= takes an ExportConfig, its to_dict() or a JSON file path; received {type(value).__name__}."
    )


def registered_config(model_type: Optional[str]) -> Optional[ExportConfig]:
    """The config a package registered for ``model_type`` (entry-point group ``mlflow_tfexport.export_configs``),
    or None."""
    if not model_type:
        return None
    found = [ep for ep in metadata.entry_points(group=EXPORT_CONFIG_ENTRY_POINTS) if ep.name == model_type]
    if not found:
        return None
    entry = found[0]
    try:
        obj = entry.load()
        config = obj if isinstance(obj, (ExportConfig, Mapping)) else obj()
    except Exception as exc:
        raise ExportConfigError(
            f"The export config registered for model_type {model_type!r} ({entry.value}, entry point group "
            f"{EXPORT_CONFIG_ENTRY_POINTS}) cannot be loaded: {cause(exc)}."
        ) from exc
    loaded = load_config(config) if isinstance(config, (ExportConfig, Mapping)) else None
    if loaded is None:
        raise ExportConfigError(
            f"The entry point {entry.value} registered for model_type {model_type!r} gave a "
            f"{type(config).__name__}; expected an ExportConfig (or a function returning one)."
        )
    return loaded


def dummy_feeds(config: ExportConfig, batch: int, sequence: int, *, vocab_size: int, pad_token_id: Optional[int],
                seed: int = 0) -> Dict[str, np.ndarray]:
    """Inputs of one shape for every input of ``config``: padded token rows for tokenizer feeds, random values
    for columns, the constant for constants."""
    keys = tuple(dict.fromkeys(i.source for i in config.tokenizer_inputs))
    tokens = dummy_inputs(keys, batch, sequence, vocab_size=vocab_size, pad_token_id=pad_token_id, seed=seed)
    rng = np.random.default_rng(seed + 1)
    feeds: Dict[str, np.ndarray] = {}
    for spec in config.inputs:
        shape = (batch, *spec.row_shape)
        if spec.feed == Feed.TOKENIZER:
            feeds[spec.name] = tokens[spec.source]
        elif spec.feed == Feed.CONSTANT:
            value = np.asarray(spec.value, dtype=spec.numpy_dtype)
            feeds[spec.name] = np.ascontiguousarray(np.broadcast_to(value, shape))
        elif spec.numpy_dtype == "bool":
            feeds[spec.name] = rng.integers(0, 2, size=shape).astype(bool)
        elif spec.numpy_dtype.startswith("int"):
            feeds[spec.name] = rng.integers(0, 10, size=shape).astype(spec.numpy_dtype)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.numpy_dtype)
    return feeds


def forward_arguments(model: Any) -> List[str]:
    """The named arguments of ``model.forward`` (no ``*args``/``**kwargs``)."""
    params = inspect.signature(model.forward).parameters.values()
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _shape(value: Any) -> List[int]:
    return [int(d) for d in value.shape]


def _run(model: Any, feeds: Mapping[str, np.ndarray]) -> Any:
    torch = require("torch")
    kwargs: Dict[str, Any] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
    if "use_cache" in forward_arguments(model):
        kwargs["use_cache"] = False
    if "return_dict" in forward_arguments(model):
        kwargs["return_dict"] = True
    with torch.no_grad():
        return model(**kwargs)


def check_fits(model: Any, config: ExportConfig, *, vocab_size: int, pad_token_id: Optional[int],
               max_length: int) -> None:
    """Refuse, before any export, a config that does not fit ``model``: an input its ``forward`` does not take,
    an output it does not return, an axis declared dynamic that does not change with the input (or one that
    changes and is not declared). Every problem is listed in one ``ExportConfigError`` with the model's actual
    signature: its ``forward`` arguments and the outputs it returns with their shapes."""
    arch = type(model).__name__
    arguments = forward_arguments(model)
    problems: List[str] = []
    for n, spec in enumerate(config.inputs):
        if spec.name not in arguments:
            problems.append(f"inputs[{n}].name {spec.name!r}: {arch}.forward takes no argument {spec.name!r}")
    signature = f"{arch}.forward({', '.join(arguments)})"
    if problems:
        raise _misfit(arch, problems, signature)
    runs = []
    for batch, seq in CHECK_SHAPES:
        seq = max(2, min(seq, max_length - (CHECK_SHAPES[-1][1] - seq)))
        feeds = dummy_feeds(config, batch, seq, vocab_size=vocab_size, pad_token_id=pad_token_id)
        try:
            out = _run(model, feeds)
        except Exception as exc:
            raise ExportConfigError(
                f"{arch} cannot run from the export config's inputs ({', '.join(config.input_names)}) at batch "
                f"{batch} x sequence {seq}: {cause(exc)}. Its signature is {signature}; fix the config's inputs "
                "(names, feeds, dtypes, row shapes)."
            ) from exc
        if not isinstance(out, Mapping):
            raise ExportConfigError(
                f"{arch}.forward returns a {type(out).__name__}, not named outputs; an export config names the "
                "outputs it exports. Return a ModelOutput (or a dict), or honour return_dict=True."
            )
        runs.append(((batch, seq), {k: v for k, v in out.items() if hasattr(v, "shape")}))
    (b1, s1), first = runs[0]
    (b2, s2), second = runs[1]
    returned = ", ".join(f"{k} {_shape(v)}" for k, v in first.items())
    signature += f" -> {returned or 'no tensors'} (at batch {b1} x sequence {s1})"
    for n, out in enumerate(config.outputs):
        where = f"outputs[{n}] ({out.name})"
        if out.name not in first:
            problems.append(f"outputs[{n}].name {out.name!r}: {arch} returns no output of that name")
            continue
        shape1, shape2 = _shape(first[out.name]), _shape(second[out.name])
        follows = {BATCH: (b1, b2), SEQUENCE: (s1, s2)}
        for axis, name in sorted(out.axes.items()):
            if axis >= len(shape1):
                problems.append(f"{where}.axes declares axis {axis} {name!r}, but the output has {len(shape1)} "
                                f"dimension(s) {shape1}")
            elif name in follows and (shape1[axis], shape2[axis]) != follows[name]:
                problems.append(
                    f"{where}.axes declares axis {axis} {name!r}, but that axis is not dynamic: it is "
                    f"{shape1[axis]} and {shape2[axis]} where the {name} is {follows[name][0]} and "
                    f"{follows[name][1]}; drop it from axes (or name the axis it is)")
        for axis, (d1, d2) in enumerate(zip(shape1, shape2, strict=False)):
            if d1 != d2 and axis not in out.axes:
                kind = BATCH if (d1, d2) == (b1, b2) else SEQUENCE if (d1, d2) == (s1, s2) else "a name of yours"
                problems.append(f"{where}.axes leaves axis {axis} static, but it changes with the input ({d1} at "
                                f"{b1}x{s1}, {d2} at {b2}x{s2}); declare it, e.g. {{{axis}: {kind!r}}}")
    if problems:
        raise _misfit(arch, problems, signature)


def _misfit(arch: str, problems: Sequence[str], signature: str) -> ExportConfigError:
    listed = "; ".join(problems)
    return ExportConfigError(
        f"The export config does not fit {arch}: {listed}. The model's actual signature: {signature}. Fix the "
        "config's fields named above."
    )
