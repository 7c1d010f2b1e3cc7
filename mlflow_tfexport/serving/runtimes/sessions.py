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
#: ``intra_op_num_threads`` chosen by the workload (``runtimes/lanes.py``): every core for a lone call, one
#: thread per concurrent call. Where one session serves every call (generation graphs), it has one thread.
AUTO = "auto"
#: onnxruntime's session config key: whether idle intra-op workers spin for the next parallel section.
SPINNING_KEY = "session.intra_op.allow_spinning"
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


def wants_auto_threads(config: Mapping[str, Any]) -> bool:
    """Whether ``config`` leaves onnxruntime's intra-op threads to the workload (``"auto"``)."""
    value = config.get("intra_op_num_threads")
    return isinstance(value, str) and value.strip().lower() == AUTO


def session_options(ort: Any, config: Mapping[str, Any], *, spinning: bool = True) -> Any:
    """Build ``SessionOptions`` from a pyfunc ``model_config`` (``"auto"`` threads: one, see ``AUTO``);
    ``spinning=False`` stops idle intra-op workers from spinning after a run."""
    options = ort.SessionOptions()
    if not spinning:
        options.add_session_config_entry(SPINNING_KEY, "0")
    for key in ("intra_op_num_threads", "inter_op_num_threads"):
        value = config.get(key)
        if key == "intra_op_num_threads" and wants_auto_threads(config):
            value = 1
        if not value:
            continue
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_THREADS:
            auto = ", or 'auto': chosen by the workload" if key == "intra_op_num_threads" else ""
            raise TfexportError(
                f"model_config {key}={value!r} is not a thread count: expected an integer from 1 to {MAX_THREADS} "
                f"(or 0 for onnxruntime's default{auto}). Fix it in the MLmodel's python_function config or in "
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


def new_session(path: str, config: Mapping[str, Any], *, spinning: bool = True) -> Any:
    """An ``InferenceSession`` of the graph at ``path`` with the providers and options of ``config``."""
    ort = require("onnxruntime")
    providers = config.get("providers") or default_providers(ort.get_available_providers())
    options = session_options(ort, config, spinning=spinning)
    return ort.InferenceSession(path, sess_options=options, providers=list(providers))
