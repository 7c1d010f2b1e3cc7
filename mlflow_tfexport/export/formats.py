"""The export backend of a format (see ``mlflow_tfexport.formats`` for the records).

A backend module exposes ``BACKEND``, an object with the ``Backend`` verbs
(``check``, ``export``, ``validation_shapes``). Backends are imported only
when asked for, so listing formats imports no heavy package.
"""

from __future__ import annotations

import importlib

from mlflow_tfexport.export.options import Backend, export_format


def get_backend(fmt: str) -> Backend:
    """The backend for ``fmt``; an unknown format lists the known ones."""
    module = export_format(fmt).backend
    backend: Backend = importlib.import_module(str(module)).BACKEND
    return backend
