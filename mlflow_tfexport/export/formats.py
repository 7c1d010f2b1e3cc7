"""The export backend of a format (see ``mlflow_tfexport.formats`` for the records).

A backend module exposes ``BACKEND``, an object with the ``Backend`` verbs
(``check``, ``export``, ``validation_shapes``). Backends are imported only
when asked for, so listing formats imports no heavy package.
"""

from __future__ import annotations

import importlib

from mlflow_tfexport.errors import UnknownFormatError
from mlflow_tfexport.export.options import Backend
from mlflow_tfexport.formats import FORMATS, export_formats


def get_backend(fmt: str) -> Backend:
    """The backend for ``fmt``; an unknown format lists the known ones."""
    module = FORMATS[fmt].backend if isinstance(fmt, str) and fmt in FORMATS else None
    if module is None:
        raise UnknownFormatError(f"Unknown export format {fmt!r}. Known formats: {', '.join(export_formats())}.")
    backend: Backend = importlib.import_module(module).BACKEND
    return backend
