"""Every use of a private API of MLflow, pandas or transformers, in one place.

Each function says why no public API does the job; when one appears, only
this module changes. Serving path: Python 3.10, no torch or transformers at
module level.
"""

from __future__ import annotations

from typing import Any


def save_input_example(mlflow_model: Any, input_example: Any, path: str) -> None:
    """Write ``input_example`` into the model directory and record it in ``mlflow_model``.

    MLflow offers no public call for a custom flavor's ``save_model``; its own flavors use this one.
    """
    from mlflow.models.utils import _save_example

    _save_example(mlflow_model, input_example, path)


def in_serving_environment() -> bool:
    """Whether this process runs inside MLflow's serving environment: the scoring server of ``mlflow models
    serve``, ``mlflow models predict`` and ``validate_serving_input``, which write a prediction as JSON with
    ``predictions_to_json``.

    MLflow sets ``_MLFLOW_IS_IN_SERVING_ENVIRONMENT`` there and reads it for its own type-hinted models; no
    public API says it.
    """
    from mlflow.environment_variables import _MLFLOW_IS_IN_SERVING_ENVIRONMENT

    return bool(_MLFLOW_IS_IN_SERVING_ENVIRONMENT.get())
