"""Per-format runners behind one interface.

A runner takes int64 numpy feeds keyed by input name and returns float numpy
outputs keyed by the task spec's output names. Each runner module is imported
only when its format is loaded, so serving an ONNX variant never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, Mapping

from mlflow_tfexport.constants import Format
from mlflow_tfexport.errors import UnknownFormatError
from mlflow_tfexport.runtimes.base import Runner

_RUNNERS: Dict[str, str] = {
    Format.TRANSFORMERS: "mlflow_tfexport.runtimes.eager",
    Format.ONNX: "mlflow_tfexport.runtimes.onnx",
    Format.TORCHSCRIPT: "mlflow_tfexport.runtimes.torchscript",
    Format.NEURON: "mlflow_tfexport.runtimes.neuron",
}


#: ``model_config`` keys every variant accepts at load time, with their defaults.
BASE_MODEL_CONFIG: Dict[str, Any] = {"batch_size": 32}
#: Extra keys per format (0 threads and "all" are onnxruntime's own defaults).
FORMAT_MODEL_CONFIG: Dict[str, Dict[str, Any]] = {
    Format.TRANSFORMERS: {"device": "auto"},
    Format.TORCHSCRIPT: {"device": "auto"},
    Format.ONNX: {
        "providers": [],
        "intra_op_num_threads": 0,
        "inter_op_num_threads": 0,
        "graph_optimization_level": "all",
    },
}


def default_model_config(fmt: str) -> Dict[str, Any]:
    """The ``model_config`` written into a variant's pyfunc block (MLflow accepts only these keys)."""
    return {**BASE_MODEL_CONFIG, **FORMAT_MODEL_CONFIG.get(fmt, {})}


def load_runner(
    model_dir: str, flavor_conf: Mapping[str, Any], model_config: Mapping[str, Any] | None = None
) -> Runner:
    """Load the runner for the saved model's format (``flavor_conf['format']``)."""
    fmt = flavor_conf["format"]
    if fmt not in _RUNNERS:
        raise UnknownFormatError(
            f"Saved model has format {fmt!r}; this version of mlflow-tfexport can run "
            f"{', '.join(_RUNNERS)}. Upgrade mlflow-tfexport to serve it."
        )
    module = importlib.import_module(_RUNNERS[fmt])
    runner: Runner = module.load(model_dir, flavor_conf, dict(model_config or {}))
    return runner


__all__ = ["Runner", "default_model_config", "load_runner"]
