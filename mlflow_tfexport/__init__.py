"""mlflow-tfexport: a Transformers model flavor for MLflow with on-demand export.

``import mlflow_tfexport`` also makes ``mlflow.tfexport`` the same module.

Example:
    >>> import mlflow
    >>> with mlflow.start_run():
    ...     info = mlflow.tfexport.log_model(model, tokenizer=tok, registered_model_name="sentiment")
    >>> mlflow_tfexport.export("models:/sentiment/1", format="onnx")
"""

from __future__ import annotations

import sys

from mlflow_tfexport.constants import FLAVOR_NAME, FlavorKey, Format, Tag
from mlflow_tfexport.errors import (
    ExportError,
    MissingDependencyError,
    TfexportError,
    UnknownFormatError,
    UnknownTaskError,
    ValidationFailedError,
)
from mlflow_tfexport.export.api import ExportResult, export, export_to_directory
from mlflow_tfexport.flavor.api import LoadedModel, get_default_pip_requirements, load_model, log_model, save_model
from mlflow_tfexport.registry import promote
from mlflow_tfexport.serving.export_config import ExportConfig, ExportConfigError, Feed, InputSpec, OutputSpec
from mlflow_tfexport.tasks import TASKS, get_task

__version__ = "0.1.0"

__all__ = [
    "FLAVOR_NAME",
    "ExportConfig",
    "ExportConfigError",
    "ExportResult",
    "Feed",
    "InputSpec",
    "OutputSpec",
    "TASKS",
    "ExportError",
    "FlavorKey",
    "Format",
    "LoadedModel",
    "MissingDependencyError",
    "Tag",
    "TfexportError",
    "UnknownFormatError",
    "UnknownTaskError",
    "ValidationFailedError",
    "export",
    "export_to_directory",
    "get_default_pip_requirements",
    "get_task",
    "load_model",
    "log_model",
    "promote",
    "save_model",
]


def _attach_to_mlflow() -> None:
    import mlflow

    sys.modules["mlflow.tfexport"] = sys.modules[__name__]
    mlflow.tfexport = sys.modules[__name__]  # type: ignore[attr-defined]


_attach_to_mlflow()
