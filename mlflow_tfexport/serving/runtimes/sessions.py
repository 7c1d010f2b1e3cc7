"""ONNX Runtime sessions from a pyfunc ``model_config``: providers, threads, graph optimisation level.

Shared by the ONNX runners (``onnx``, ``onnx_with_past``). onnxruntime is
imported when a session is made, never at module level. Python 3.10-compatible.
"""

from __future__ import annotations

from typing import Any, List, Mapping

from mlflow_tfexport._lazy import require
from mlflow_tfexport.errors import TfexportError

#: The most threads a model_config may ask onnxruntime for.
MAX_THREADS = 1024
_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def default_providers(available: List[str]) -> List[str]:
    """CUDA when onnxruntime offers it, then CPU."""
    preferred = [p for p in ("CUDAExecutionProvider",) if p in available]
    return preferred + ["CPUExecutionProvider"]


def session_options(ort: Any, config: Mapping[str, Any]) -> Any:
    """Build ``SessionOptions`` from a pyfunc ``model_config``."""
    options = ort.SessionOptions()
    for key in ("intra_op_num_threads", "inter_op_num_threads"):
        value = config.get(key)
        if not value:
            continue
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_THREADS:
            raise TfexportError(
                f"model_config {key}={value!r} is not a thread count: expected an integer from 1 to {MAX_THREADS} "
                "(or 0 for onnxruntime's default). Fix it in the MLmodel's python_function config or in "
                "the model_config passed to mlflow.pyfunc.load_model."
            )
        setattr(options, key, value)
    level = config.get("graph_optimization_level")
    if level is not None:
        if str(level) not in _LEVELS:
            raise TfexportError(
                f"model_config graph_optimization_level={level!r} is not one of {', '.join(_LEVELS)}; fix it in "
                "the MLmodel's python_function config or in the model_config passed to mlflow.pyfunc.load_model."
            )
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[str(level)])
    return options


def new_session(path: str, config: Mapping[str, Any]) -> Any:
    """An ``InferenceSession`` of the graph at ``path`` with the providers and options of ``config``."""
    ort = require("onnxruntime")
    providers = config.get("providers") or default_providers(ort.get_available_providers())
    return ort.InferenceSession(path, sess_options=session_options(ort, config), providers=list(providers))
