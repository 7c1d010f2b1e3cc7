"""Lazy imports of heavy optional packages with errors that name the pip extra."""

from __future__ import annotations

import importlib
from types import ModuleType

from mlflow_tfexport.errors import MissingDependencyError

# module -> (pip extra, what it is needed for)
_EXTRAS = {
    "torch": ("export", "loading the source model and exporting it"),
    "transformers": ("export", "loading the source model and exporting it"),
    "onnx": ("onnx", "writing and checking ONNX models"),
    "onnxruntime": ("onnx", "running ONNX models"),
    "onnxscript": ("onnx", "the dynamo ONNX exporter"),
    "safetensors": ("export", "reading and writing weights"),
    "tokenizers": ("serve", "tokenizing requests"),
    "boto3": ("s3", "S3 artifact storage"),
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise an error that tells which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra, why = _EXTRAS.get(top, ("all", "this feature"))
        raise MissingDependencyError(
            f"'{top}' is needed for {why} but is not installed ({exc}). "
            f"Install it with: pip install 'mlflow-tfexport[{extra}]'"
        ) from exc
