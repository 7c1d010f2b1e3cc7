"""ONNX Runtime runner: imports onnxruntime and numpy only."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

from mlflow_tfexport._lazy import require
from mlflow_tfexport.constants import FlavorKey

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
    if config.get("intra_op_num_threads"):
        options.intra_op_num_threads = int(config["intra_op_num_threads"])
    if config.get("inter_op_num_threads"):
        options.inter_op_num_threads = int(config["inter_op_num_threads"])
    level = config.get("graph_optimization_level")
    if level is not None:
        if str(level) not in _LEVELS:
            from mlflow_tfexport.errors import TfexportError

            raise TfexportError(
                f"graph_optimization_level={level!r} is not one of {', '.join(_LEVELS)}."
            )
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[str(level)])
    return options


class OnnxRunner:
    def __init__(self, path: str, config: Mapping[str, Any]) -> None:
        ort = require("onnxruntime")
        providers = config.get("providers") or default_providers(ort.get_available_providers())
        self.session = ort.InferenceSession(
            path, sess_options=session_options(ort, config), providers=list(providers)
        )
        self.input_names: Tuple[str, ...] = tuple(i.name for i in self.session.get_inputs())
        self.output_names: Tuple[str, ...] = tuple(o.name for o in self.session.get_outputs())

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        values = self.session.run(None, {k: feeds[k] for k in self.input_names})
        return dict(zip(self.output_names, values, strict=True))

    def describe(self) -> Dict[str, Any]:
        return {"providers": self.session.get_providers()}


def load(model_dir: str, flavor_conf: Mapping[str, Any], config: Dict[str, Any]) -> Any:
    if flavor_conf.get(FlavorKey.GENERATION):  # generation graphs with past key values
        from mlflow_tfexport.serving.runtimes import onnx_with_past as onnx_generation

        return onnx_generation.load(model_dir, flavor_conf, config)
    return OnnxRunner(os.path.join(model_dir, flavor_conf[FlavorKey.MODEL_FILE]), config)
