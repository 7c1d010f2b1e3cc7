"""Export backends: one module per format, same verbs, one registry.

A backend module exposes ``BACKEND``, an object with the ``Backend`` verbs
(``check``, ``export``, ``validation_shapes``, ``tags``). Backends are imported
only when asked for, so listing formats imports no heavy package.
"""

from __future__ import annotations

import importlib
from typing import Dict, Tuple

from mlflow_tfexport.constants import Format
from mlflow_tfexport.errors import UnknownFormatError
from mlflow_tfexport.export.base import Backend, ExportedArtifact, ExportOptions, SourceModel

_BACKENDS: Dict[str, str] = {
    Format.ONNX: "mlflow_tfexport.export.onnx",
    Format.TORCHSCRIPT: "mlflow_tfexport.export.torchscript",
    Format.NEURON: "mlflow_tfexport.export.neuron",
}


def known_formats() -> Tuple[str, ...]:
    return tuple(_BACKENDS)


def get_backend(fmt: str) -> Backend:
    """The backend for ``fmt``; an unknown format lists the known ones."""
    if fmt not in _BACKENDS:
        raise UnknownFormatError(
            f"Unknown export format {fmt!r}. Known formats: {', '.join(_BACKENDS)}."
        )
    backend: Backend = importlib.import_module(_BACKENDS[fmt]).BACKEND
    return backend


__all__ = ["Backend", "ExportOptions", "ExportedArtifact", "SourceModel", "get_backend", "known_formats"]
