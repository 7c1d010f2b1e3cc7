"""The MLflow store a command works on: ``--tracking-uri``/``--registry-uri``, checked before any use.

MLflow creates a SQLite database (and a ``file:`` store's folder) the first time a client touches
it, so a command run from the wrong folder would silently make an empty ``mlflow.db`` there and
then report "not found". Every command goes through ``connect`` first: a local store that does not
exist is an error naming the URI in use, and nothing is created.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional
from urllib.parse import unquote, urlparse

from mlflow_tfexport.errors import TfexportError

TRACKING_ENV = "MLFLOW_TRACKING_URI"
REGISTRY_ENV = "MLFLOW_REGISTRY_URI"


@dataclass(frozen=True)
class Store:
    tracking_uri: str
    registry_uri: str

    def describe(self) -> str:
        if self.registry_uri == self.tracking_uri:
            return f"tracking URI {self.tracking_uri}"
        return f"tracking URI {self.tracking_uri}, registry URI {self.registry_uri}"


def _local_path(uri: str) -> Optional[str]:
    """The file or folder a local store URI names (``sqlite:///x.db``, ``file:///d``, a bare path); else None."""
    if uri.startswith("sqlite:"):
        if not uri.startswith("sqlite:///"):
            return None  # sqlite:// is an in-memory database
        path = unquote(uri[len("sqlite:///"):].split("?", 1)[0])  # sqlite:////abs/x.db -> /abs/x.db
        return None if path in ("", ":memory:") else path
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return unquote(parsed.path)
    if (parsed.scheme == "" and not uri.startswith("databricks")) or (len(parsed.scheme) == 1 and os.name == "nt"):
        return uri
    return None


def check_exists(uri: str, what: str) -> None:
    """Raise when ``uri`` is a local store (SQLite file, ``file:`` folder) that does not exist."""
    path = _local_path(uri)
    if path is None or os.path.exists(path):
        return
    env = TRACKING_ENV if what == "tracking" else REGISTRY_ENV
    raise TfexportError(
        f"No MLflow store at {what} URI {uri} ({os.path.abspath(path)} does not exist); nothing was created. "
        f"Run the command from the folder that holds the store, or pass --{what}-uri (or set {env}) to the store "
        "your models were logged to, e.g. sqlite:////abs/path/mlflow.db or http://127.0.0.1:5000."
    )


def connect(tracking_uri: Optional[str] = None, registry_uri: Optional[str] = None) -> Store:
    """Point MLflow at the command's store (flags, else the environment, else MLflow's default) after checking it."""
    import mlflow

    tracking = tracking_uri or os.environ.get(TRACKING_ENV) or mlflow.get_tracking_uri()
    registry = registry_uri or os.environ.get(REGISTRY_ENV) or (tracking if tracking_uri else mlflow.get_registry_uri())
    check_exists(tracking, "tracking")
    if registry != tracking:
        check_exists(registry, "registry")
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry)
    return Store(tracking, registry)


def with_store_hint(exc: Exception, store: Store) -> Exception:
    """A "does not exist" error from the registry, with the store it was looked up in."""
    code = getattr(exc, "error_code", "")
    if code == "RESOURCE_DOES_NOT_EXIST" or (isinstance(exc, TfexportError) and "not found" in str(exc).lower()):
        message = getattr(exc, "message", None) or str(exc)
        return TfexportError(f"{message.rstrip()} (looked up in the {store.describe()}; pass --tracking-uri "
                             "or set MLFLOW_TRACKING_URI if your models are in another store)")
    return exc
