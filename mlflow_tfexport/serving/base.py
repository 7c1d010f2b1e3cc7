"""What every tfexport pyfunc shares: the task, the runner, labels, batch size and ``params`` checks."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.errors import BadInputError
from mlflow_tfexport.serving.runtimes import Runner
from mlflow_tfexport.tasks import get_task

DEFAULT_BATCH_SIZE = 32


class PyfuncBase:
    """The parts of ``predict`` that do not depend on what a request carries (text or images)."""

    def __init__(self, conf: Mapping[str, Any], runner: Runner, model_config: Mapping[str, Any]) -> None:
        self.conf = dict(conf)
        self.spec = get_task(conf[FlavorKey.TASK])
        self.runner = runner
        self.id2label = {int(k): v for k, v in (conf.get(FlavorKey.ID2LABEL) or {}).items()}
        self.batch_size = int(model_config.get("batch_size", DEFAULT_BATCH_SIZE))
        self._defaults = self.spec.param_defaults()

    def get_raw_model(self) -> Runner:
        """The format's runner (``.session`` for ONNX, ``.model`` for the source, ``.module`` for traces)."""
        return self.runner

    def _params(self, params: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
        merged = dict(self._defaults)
        for key, value in (params or {}).items():
            if key not in merged:
                raise BadInputError(
                    f"Unknown param {key!r} for task {self.spec.name!r}; accepted params: "
                    f"{', '.join(sorted(merged))}."
                )
            if value is not None:
                merged[key] = value
        return merged

    def _batch_size(self, p: Mapping[str, Any]) -> int:
        return int(p.get("batch_size") or 0) or self.batch_size
