"""ONNX Runtime runner: imports onnxruntime and numpy only (generation graphs: ``onnx_with_past``)."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import numpy as np

from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.serving.conf import artifact_path
from mlflow_tfexport.serving.runtimes import onnx_with_past
from mlflow_tfexport.serving.runtimes.sessions import default_providers, new_session, session_options

__all__ = ["OnnxRunner", "default_providers", "load", "session_options"]

class OnnxRunner:
    def __init__(self, path: str, config: Mapping[str, Any]) -> None:
        self.session = new_session(path, config)
        self.input_names: Tuple[str, ...] = tuple(i.name for i in self.session.get_inputs())
        self.output_names: Tuple[str, ...] = tuple(o.name for o in self.session.get_outputs())

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        values = self.session.run(None, {k: feeds[k] for k in self.input_names})
        return dict(zip(self.output_names, values, strict=True))

    def describe(self) -> Dict[str, Any]:
        return {"providers": self.session.get_providers()}


def load(model_dir: str, flavor_conf: Mapping[str, Any], config: Dict[str, Any]) -> Any:
    if flavor_conf.get(FlavorKey.GENERATION):  # generation graphs with past key values
        return onnx_with_past.load(model_dir, flavor_conf, config)
    return OnnxRunner(artifact_path(model_dir, flavor_conf, FlavorKey.MODEL_FILE), config)
