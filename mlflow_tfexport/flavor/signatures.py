"""Model signatures per task: what a request carries, what comes back, which params exist."""

from __future__ import annotations

from typing import Optional

from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from mlflow_tfexport.tasks import OutputKind, TaskSpec

_DTYPES = {"string": "string", "double": "double", "long": "long", "boolean": "boolean"}


def task_signature(spec: TaskSpec, hidden_size: Optional[int] = None) -> ModelSignature:
    """The default signature written for ``spec`` when the user gives none.

    It declares the outputs and the ``params`` schema but no input schema, on
    purpose: MLflow enforces an input schema before the pyfunc sees the data,
    and a text schema there turns ``{"inputs": [1, 2]}`` into the strings
    ``"1"``, ``"2"``, keeps only the first column of an unnamed DataFrame (so a
    ``text_pair`` column is silently dropped), and rejects an empty batch. The
    pyfunc checks its inputs itself (``mlflow_tfexport.serving.inputs``): text in a
    list, an array, a string, a dict or a DataFrame, with the task's columns
    (``text`` and optional ``text_pair``, or ``question`` and ``context``).
    """
    if spec.output_kind == OutputKind.ARRAY:
        import numpy as np

        outputs = Schema([TensorSpec(np.dtype("float32"), (-1, hidden_size or -1))])
    elif spec.output_columns:
        outputs = Schema([ColSpec(_DTYPES[t], name) for name, t in spec.output_columns])
    else:
        outputs = Schema([ColSpec("string")])
    params = ParamSchema([ParamSpec(p.name, p.dtype, p.default, shape=p.shape) for p in spec.all_params])
    return ModelSignature(inputs=None, outputs=outputs, params=params)
