"""The ``flavor`` handed to ``Model.log`` for an exported variant.

The backend has already written the exported file into a staging directory;
``save_model`` copies it beside the tokenizer and writes the MLmodel with the
same ``tfexport`` flavor and pyfunc loader as the source.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Dict, Optional, Sequence

from mlflow.models import Model, ModelSignature

from mlflow_tfexport.flavor.block import write_model


def save_model(
    path: str,
    *,
    staged_dir: str,
    flavor_conf: Dict[str, Any],
    requirements: Sequence[str],
    signature: Optional[ModelSignature] = None,
    input_example: Any = None,
    python_version: Optional[str] = None,
    extra_index_urls: Sequence[str] = (),
    mlflow_model: Optional[Model] = None,
    **_: Any,
) -> None:
    os.makedirs(path, exist_ok=True)
    for entry in os.listdir(staged_dir):
        src = os.path.join(staged_dir, entry)
        dst = os.path.join(path, entry)
        if os.path.isdir(src):
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)
    write_model(
        path,
        flavor_conf,
        requirements=requirements,
        signature=signature,
        input_example=input_example,
        metadata=None,
        mlflow_model=mlflow_model,
        python_version=python_version,
        extra_index_urls=extra_index_urls,
    )
