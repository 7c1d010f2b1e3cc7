"""What every tfexport pyfunc shares: the task, the runner, labels, batch size and ``params`` checks.

``params`` are checked in one place (``PyfuncBase._params``), before any work,
against the task table's ``ParamSpec`` (type, ``minimum``/``maximum``,
``choices``): a bad value is a ``BadInputError`` (HTTP 400) naming the value,
what is accepted and how to send it.

Serving path: no torch, no transformers, Python 3.10.
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any, Dict, Mapping, Optional

import numpy as np

from mlflow_tfexport.errors import BadInputError, TfexportError
from mlflow_tfexport.serving.batching import make_batcher
from mlflow_tfexport.serving.conf import labels
from mlflow_tfexport.serving.export_config import task_of
from mlflow_tfexport.serving.limits import Limits
from mlflow_tfexport.serving.runtimes import Runner
from mlflow_tfexport.tasks import MAX_BATCH_SIZE, ParamSpec

DEFAULT_BATCH_SIZE = 32


def _bad_param(spec: ParamSpec, value: Any, task: str) -> BadInputError:
    example = json.dumps({"params": {spec.name: spec.choices[0] if spec.choices else spec.default}})
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return BadInputError(
        f"params {spec.name}={shown} is not accepted by task {task!r}: expected {spec.accepted()}. "
        f"Send a value in that range, e.g. {example}, or leave {spec.name} out for its default."
    )


def check_param(spec: ParamSpec, value: Any, task: str) -> Any:
    """``value`` as the Python type of ``spec.dtype`` if it is in ``spec``'s range, else ``BadInputError``."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy scalars (0-d arrays)
        value = value.item()
    if spec.shape is not None:  # a list param: each item checked as one value of the spec's type
        if hasattr(value, "tolist"):
            value = value.tolist()
        if not isinstance(value, (list, tuple)):
            raise _bad_param(spec, value, task)
        item = ParamSpec(spec.name, spec.dtype, spec.default, spec.minimum, spec.maximum, spec.choices)
        try:
            return [check_param(item, v, task) for v in value]
        except BadInputError:
            raise _bad_param(spec, value, task) from None
    if spec.dtype == "boolean":
        if not isinstance(value, bool):
            raise _bad_param(spec, value, task)
        return value
    if spec.dtype == "string":
        if not isinstance(value, str) or (spec.choices and value not in spec.choices):
            raise _bad_param(spec, value, task)
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _bad_param(spec, value, task)
    if spec.dtype == "long":
        whole = isinstance(value, numbers.Integral) or (math.isfinite(value) and float(value).is_integer())
        if not whole:
            raise _bad_param(spec, value, task)
        number: Any = int(float(value)) if not isinstance(value, numbers.Integral) else int(value)
    else:
        number = float(value)
        if not math.isfinite(number):
            raise _bad_param(spec, value, task)
    if (spec.minimum is not None and number < spec.minimum) or (spec.maximum is not None and number > spec.maximum):
        raise _bad_param(spec, value, task)
    return number


def model_batch_size(model_config: Mapping[str, Any]) -> int:
    """``model_config["batch_size"]`` (rows per model call when a request names none), checked."""
    value = model_config.get("batch_size", DEFAULT_BATCH_SIZE)
    if value is None:
        return DEFAULT_BATCH_SIZE
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= int(value) <= MAX_BATCH_SIZE:
        raise TfexportError(
            f"model_config batch_size={value!r} is out of range: expected an integer from 1 to {MAX_BATCH_SIZE}. "
            "Fix the python_function config in the MLmodel, or pass model_config={'batch_size': 32} to "
            "mlflow.pyfunc.load_model."
        )
    return int(value)


class PyfuncBase:
    """The parts of ``predict`` that do not depend on what a request carries (text or images)."""

    def __init__(self, conf: Mapping[str, Any], runner: Runner, model_config: Mapping[str, Any]) -> None:
        self.conf = dict(conf)
        self.spec = task_of(conf)
        self.runner = runner
        self.id2label = labels(conf)
        self.batch_size = model_batch_size(model_config)
        #: What one request may ask for (``serving/limits.py``), from ``model_config``.
        self.limits = Limits.from_config(model_config)
        self._param_specs = {p.name: p for p in self.spec.all_params}
        self._defaults = self.spec.param_defaults()
        #: Shares model runs between concurrent calls; None when batching is off (``serving/batching.py``).
        self.batcher = make_batcher(runner, self.spec, self.conf, model_config)

    def get_raw_model(self) -> Runner:
        """The format's runner (``.session`` for ONNX, ``.model`` for the source, ``.module`` for traces)."""
        return self.runner

    def run_model(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """``runner.run(feeds)``, through the batcher when batching is on."""
        return self.runner.run(feeds) if self.batcher is None else self.batcher.run(feeds)

    def _params(self, params: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
        """The task's defaults with the request's ``params`` over them, every value checked against its range."""
        merged = dict(self._defaults)
        for key, value in (params or {}).items():
            spec = self._param_specs.get(key)
            if spec is None:
                raise BadInputError(
                    f"Unknown param {key!r} for task {self.spec.name!r}; accepted params: "
                    f"{', '.join(sorted(merged))}."
                )
            if value is not None:
                merged[key] = check_param(spec, value, self.spec.name)
        return merged

    def _batch_size(self, p: Mapping[str, Any]) -> int:
        """Rows per model call: the request's ``batch_size`` (checked by ``_params``), 0 meaning the model's."""
        return int(p.get("batch_size") or 0) or self.batch_size
