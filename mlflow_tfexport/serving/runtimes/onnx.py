"""ONNX Runtime runner: imports onnxruntime and numpy only (generation graphs: ``onnx_with_past``).

``intra_op_num_threads: "auto"`` (what new variants are written with) makes two
sessions of the graph and lets the workload pick per call (``lanes.py``): every
core for a lone call, one thread per concurrent call. A number (or 0,
onnxruntime's one thread per core) makes one session used by every call.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.serving.batching import batchable, given_cores
from mlflow_tfexport.serving.conf import artifact_path
from mlflow_tfexport.serving.runtimes import onnx_with_past
from mlflow_tfexport.serving.runtimes.lanes import Lanes
from mlflow_tfexport.serving.runtimes.sessions import (
    AUTO,
    default_providers,
    new_session,
    session_options,
    wants_auto_threads,
)
from mlflow_tfexport.tasks import BATCH, get_task

__all__ = ["OnnxRunner", "default_providers", "load", "session_options"]


class OnnxRunner:
    def __init__(self, path: str, config: Mapping[str, Any], batch_axes: Optional[Mapping[str, int]] = None) -> None:
        auto = wants_auto_threads(config)
        narrow = {**config, "intra_op_num_threads": 1} if auto else config
        #: The session every call runs on (with ``"auto"`` threads: the one-thread session of concurrent calls).
        self.session = new_session(path, narrow)
        self.input_names: Tuple[str, ...] = tuple(i.name for i in self.session.get_inputs())
        self.output_names: Tuple[str, ...] = tuple(o.name for o in self.session.get_outputs())
        cores = given_cores()
        #: With ``"auto"`` threads on several cores: the session of lone calls, one intra-op thread per core.
        self.wide_session: Any = None
        if auto and cores > 1 and "CUDAExecutionProvider" not in self.session.get_providers():
            self.wide_session = new_session(path, {**config, "intra_op_num_threads": cores})
        self.lanes: Optional[Lanes] = None
        if self.wide_session is not None:
            self.lanes = Lanes(self._runner(self.session), self._runner(self.wide_session), cores, batch_axes)

    def _runner(self, session: Any) -> Any:
        def run(feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
            values = session.run(None, {k: feeds[k] for k in self.input_names})
            return dict(zip(self.output_names, values, strict=True))
        return run

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The outputs of ``feeds``; with ``"auto"`` threads, on the lane the calls in flight choose."""
        return self._runner(self.session)(feeds) if self.lanes is None else self.lanes.run(feeds)

    def run_lone(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """A run the caller knows to be alone (the batcher): every core."""
        return self._runner(self.session)(feeds) if self.lanes is None else self.lanes.run_lone(feeds)

    def run_shared(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """A run the caller knows to have company (the batcher): one thread with ``"auto"``."""
        return self._runner(self.session)(feeds) if self.lanes is None else self.lanes.run_shared(feeds)

    def describe(self) -> Dict[str, Any]:
        threads = AUTO if self.lanes is not None else "fixed"
        return {"providers": self.session.get_providers(), "threads": threads}


def batch_axes(task: str) -> Optional[Dict[str, int]]:
    """Output name -> batch axis for a text task that does not generate (rows independent), else None."""
    spec = get_task(task)
    if not batchable(spec):
        return None
    axes = {o.name: next((a for a, kind in o.axes.items() if kind == BATCH), -1) for o in spec.outputs}
    return None if -1 in axes.values() else axes


def load(model_dir: str, flavor_conf: Mapping[str, Any], config: Dict[str, Any]) -> Any:
    if flavor_conf.get(FlavorKey.GENERATION):  # generation graphs with past key values
        return onnx_with_past.load(model_dir, flavor_conf, config)
    return OnnxRunner(artifact_path(model_dir, flavor_conf, FlavorKey.MODEL_FILE), config,
                      batch_axes(str(flavor_conf[FlavorKey.TASK])))
