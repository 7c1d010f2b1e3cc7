"""Helpers shared by the test modules: sample texts and registry look-ups.

Fixtures (registries, tiny models) live in ``conftest.py``; real server processes in ``servers.py``;
tiny random models in ``tiny.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Any, Iterator, List, Optional

import mlflow
from mlflow import MlflowClient

from mlflow_tfexport.registry import versions_of

#: Short English sentences of different lengths, for predictions compared between variants.
TEXTS = [
    "I loved this film, the plot was great.",
    "I hated this movie, the story was dull.",
    "Paris is the capital of France.",
]


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def version_numbers(name: str, client: Optional[MlflowClient] = None) -> List[str]:
    """The version numbers of registered model ``name``, in order (none when it does not exist)."""
    return sorted((str(v.version) for v in versions_of(client or MlflowClient(), name)), key=int)


def versions(name: str, client: Optional[MlflowClient] = None) -> int:
    """How many versions registered model ``name`` has."""
    return len(version_numbers(name, client))


@contextlib.contextmanager
def sqlite_registry(root: Any, template: str) -> Iterator[str]:
    """A real SQLite registry in ``root`` (a copy of the session's empty database ``template``) as the tracking and
    registry URI, with ``root`` as the working folder until the block ends. Yields the URI."""
    shutil.copy(template, os.path.join(str(root), "mlflow.db"))
    uri = f"sqlite:///{root}/mlflow.db"
    previous = os.getcwd()
    os.chdir(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield uri
    finally:
        os.chdir(previous)
