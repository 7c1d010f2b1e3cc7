"""Model signatures per task: what a request carries, what comes back, which params exist."""

from __future__ import annotations

from typing import Optional

from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from mlflow_tfexport.tasks import TaskSpec

_DTYPES = {"string": "string", "double": "double", "long": "long", "boolean": "boolean"}


def task_signature(spec: TaskSpec, hidden_size: Optional[int] = None) -> ModelSignature:
    """The default signature written for ``spec`` when the user gives none."""
    if len(spec.text_columns) > 1:
        inputs = Schema([ColSpec("string", name) for name in spec.text_columns])
    else:
        inputs = Schema([ColSpec("string")])
    if spec.name == "feature-extraction":
        import numpy as np

        outputs = Schema([TensorSpec(np.dtype("float32"), (-1, hidden_size or -1))])
    elif spec.output_columns:
        outputs = Schema([ColSpec(_DTYPES[t], name) for name, t in spec.output_columns])
    else:
        outputs = Schema([ColSpec("string")])
    params = ParamSchema([ParamSpec(p.name, p.dtype, p.default) for p in spec.all_params])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)
