"""Lazy imports of heavy optional packages with errors that name the pip extra.

Serving path: Python 3.10, imports nothing heavy itself.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Dict, Optional, Tuple

from mlflow_tfexport.errors import MissingDependencyError

#: import name -> (pip distribution, extra of mlflow-tfexport that installs it or None for a core
#: dependency, what it is needed for). ``tests/test_layout.py`` checks each against pyproject.toml.
PACKAGES: Dict[str, Tuple[str, Optional[str], str]] = {
    "torch": ("torch", "export", "loading the source model and exporting it"),
    "transformers": ("transformers", "export", "loading the source model and exporting it"),
    "safetensors": ("safetensors", "export", "reading and writing weights"),
    "onnxscript": ("onnxscript", "export", "the dynamo ONNX exporter"),
    "onnx": ("onnx", "onnx", "writing and checking ONNX models"),
    "onnxruntime": ("onnxruntime", "onnx", "running ONNX models"),
    "PIL": ("pillow", "images", "decoding and resizing images"),
    "boto3": ("boto3", "s3", "S3 artifact storage"),
    "tokenizers": ("tokenizers", None, "tokenizing requests"),
}


def install_hint(module: str) -> str:
    """The pip command that installs ``module``'s package the way this project declares it."""
    top = module.split(".")[0]
    dist, extra, _ = PACKAGES.get(top, (top, "all", ""))
    if extra:
        return f"pip install 'mlflow-tfexport[{extra}]'"
    return f"pip install {dist} (a dependency of mlflow-tfexport)"


def require(module: str) -> ModuleType:
    """Import ``module`` or raise an error that tells which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        dist, _, why = PACKAGES.get(top, (top, "all", "this feature"))
        raise MissingDependencyError(
            f"'{dist}' (import {top}) is needed for {why} but is not installed ({exc}). "
            f"Install it with: {install_hint(module)}"
        ) from exc
