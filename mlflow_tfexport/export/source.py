"""Resolve a model URI to the source variant it names: registry entry, files, flavor block."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, Optional

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlflow_tfexport.constants import FlavorKey, Format
from mlflow_tfexport.errors import ExportError, NotATfexportModelError

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/]+))$")


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


def resolve_source(client: MlflowClient, model_uri: str, dst_path: Optional[str] = None) -> ResolvedSource:
    """Download and check the source model; raise a clear error if it is not a tfexport source."""
    from mlflow.artifacts import download_artifacts
    from mlflow.models import Model

    from mlflow_tfexport.serving.conf import read_flavor_conf

    if not isinstance(model_uri, str) or not model_uri.strip():
        raise ExportError(
            f"A model URI is required, received {model_uri!r}; e.g. 'models:/sentiment/1' or "
            "'models:/sentiment@production'."
        )
    name = version = run_id = model_id = None
    match = _MODELS_URI.match(model_uri)
    try:
        if match:
            name = match.group("name")
            if match.group("alias"):
                mv = client.get_model_version_by_alias(name, match.group("alias"))
            else:
                mv = client.get_model_version(name, match.group("version"))
            version, run_id, model_id = mv.version, mv.run_id, getattr(mv, "model_id", None)
        local = download_artifacts(artifact_uri=model_uri, dst_path=dst_path)
    except MlflowException as exc:
        raise ExportError(f"Cannot find model {model_uri!r}: {exc.message}") from exc
    try:
        conf = read_flavor_conf(local)
    except NotATfexportModelError as exc:
        raise NotATfexportModelError(
            f"{model_uri} is not a tfexport model ({exc.message}). Only models logged with "
            "mlflow.tfexport.log_model can be exported."
        ) from exc
    if conf.get(FlavorKey.FORMAT) != Format.TRANSFORMERS:
        raise ExportError(
            f"{model_uri} is already an exported variant (format {conf.get(FlavorKey.FORMAT)!r}); export from "
            "its source version instead (see its tfexport.source tag)."
        )
    signature = Model.load(local).signature
    return ResolvedSource(model_uri, local, conf, signature, name, version, run_id, model_id)
