"""Resolve a model URI to the source variant it names: registry entry, files, flavor block.

The URI is checked before anything is downloaded: a local path must hold an
MLmodel file of a tfexport source model, and an ``http(s)://`` URI is refused
(MLflow would read it as the REST endpoint of an artifact server).
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from typing import Any, Dict, Optional

from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from mlflow_tfexport.constants import MLMODEL_FILE, FlavorKey, Format
from mlflow_tfexport.errors import ExportError, NotATfexportModelError
from mlflow_tfexport.registry import parse_models_uri
from mlflow_tfexport.serving.conf import read_flavor_conf

_EXAMPLES = "e.g. 'models:/sentiment/1', 'models:/sentiment@production', 'runs:/<run_id>/model' or a local directory"


@dataclass
class ResolvedSource:
    uri: str  # as given
    local_path: str
    flavor_conf: Dict[str, Any]
    signature: Any
    registered_name: Optional[str]
    version: Optional[str]
    run_id: Optional[str]
    model_id: Optional[str]

    @property
    def canonical_uri(self) -> str:
        if self.registered_name and self.version:
            return f"models:/{self.registered_name}/{self.version}"
        return self.uri

    @property
    def identity(self) -> str:
        return f"{self.canonical_uri}|{self.model_id or ''}"

    def input_example(self) -> Any:
        """The source's logged input example (what MLflow shows and validates), or None: variants copy it."""
        model = Model.load(self.local_path)
        if model.saved_input_example_info is None:
            return None
        return model.load_input_example(self.local_path)


def _check_source_conf(conf: Dict[str, Any], model_uri: str) -> None:
    if conf.get(FlavorKey.FORMAT) != Format.TRANSFORMERS:
        raise ExportError(
            f"{model_uri} is already an exported variant (format {conf.get(FlavorKey.FORMAT)!r}); export from "
            "its source version instead (see its tfexport.source tag)."
        )


def _read_conf(local: str, model_uri: str) -> Dict[str, Any]:
    try:
        return read_flavor_conf(local)
    except NotATfexportModelError as exc:
        raise NotATfexportModelError(
            f"{model_uri} is not a tfexport model ({exc.message}). Only models logged with "
            "mlflow.tfexport.log_model can be exported."
        ) from exc


def _check_uri(model_uri: Any) -> None:
    """Refuse, before any download, a URI that cannot name a tfexport source model."""
    if not isinstance(model_uri, str) or not model_uri.strip():
        raise ExportError(f"A model URI is required, received {model_uri!r}; {_EXAMPLES}.")
    scheme = urllib.parse.urlparse(model_uri).scheme.lower()
    if scheme in ("http", "https"):
        raise ExportError(
            f"{model_uri!r} is an {scheme}:// URL, which MLflow reads as the REST endpoint of an artifact server, "
            f"not as a model. Pass a model URI instead ({_EXAMPLES}), or download the model and pass its directory."
        )
    if scheme in ("", "file"):
        path = urllib.parse.urlparse(model_uri).path if scheme == "file" else model_uri
        if not os.path.isdir(path):
            raise ExportError(
                f"{model_uri!r} is a local path, but {path!r} is not a directory. Pass the directory that "
                f"mlflow_tfexport.save_model wrote, or a registry URI ({_EXAMPLES})."
            )
        if not os.path.isfile(os.path.join(path, MLMODEL_FILE)):
            raise ExportError(
                f"{model_uri!r} is a local directory without an {MLMODEL_FILE} file: not a saved MLflow model. "
                f"Pass the directory that mlflow_tfexport.save_model wrote, or a registry URI ({_EXAMPLES})."
            )
        _check_source_conf(_read_conf(path, model_uri), model_uri)  # before copying it


def local_source(path: str) -> ResolvedSource:
    """The tfexport source model saved in directory ``path``, read in place (no registry, no copy)."""
    _check_uri(path)
    conf = _read_conf(path, path)
    return ResolvedSource(path, path, conf, Model.load(path).signature, None, None, None, None)


def resolve_source(client: MlflowClient, model_uri: str, dst_path: Optional[str] = None) -> ResolvedSource:
    """Download and check the source model; raise a clear error if it is not a tfexport source."""
    _check_uri(model_uri)
    name = version = run_id = model_id = None
    parsed = parse_models_uri(model_uri)
    try:
        if parsed:
            name = parsed.name
            if parsed.alias:
                mv = client.get_model_version_by_alias(name, parsed.alias)
            else:
                mv = client.get_model_version(name, str(parsed.version))
            version, run_id, model_id = mv.version, mv.run_id, getattr(mv, "model_id", None)
        local = download_artifacts(artifact_uri=model_uri, dst_path=dst_path)
    except MlflowException as exc:
        raise ExportError(f"Cannot find model {model_uri!r}: {exc.message}") from exc
    except OSError as exc:  # a store that cannot be reached (unknown host, refused connection)
        raise ExportError(
            f"Cannot download model {model_uri!r}: {type(exc).__name__}: {exc}. Check the URI and that its "
            f"store is reachable from here ({_EXAMPLES})."
        ) from exc
    conf = _read_conf(local, model_uri)
    _check_source_conf(conf, model_uri)
    signature = Model.load(local).signature
    return ResolvedSource(model_uri, local, conf, signature, name, version, run_id, model_id)
