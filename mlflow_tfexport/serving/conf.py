"""The ``tfexport`` block of a saved model's MLmodel, as the serving side reads it."""

from __future__ import annotations

import os
from typing import Any, Dict

from mlflow_tfexport.constants import FLAVOR_NAME, MLMODEL_FILE
from mlflow_tfexport.errors import NotATfexportModelError


def read_flavor_conf(path: str) -> Dict[str, Any]:
    """The ``tfexport`` block of the MLmodel file in ``path``."""
    from mlflow.models import Model

    model = Model.load(os.path.join(path, MLMODEL_FILE))
    if FLAVOR_NAME not in model.flavors:
        raise NotATfexportModelError(
            f"The model at {path} has flavors {sorted(model.flavors)}, not {FLAVOR_NAME!r}. "
            "Log it with mlflow.tfexport.log_model first."
        )
    conf: Dict[str, Any] = model.flavors[FLAVOR_NAME]
    return conf
