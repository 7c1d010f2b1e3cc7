"""Register variants as model versions, with their tags and report set at creation.

Tags and description are passed to ``create_model_version`` itself, so a
version is never visible in the registry without them.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo

from mlflow_tfexport.constants import Tag


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        try:
            client.create_registered_model(name)
        except MlflowException as create_exc:
            if create_exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise


def register_version(
    name: str,
    info: ModelInfo,
    *,
    tags: Dict[str, str],
    description: Optional[str] = None,
    client: Optional[MlflowClient] = None,
) -> ModelVersion:
    """Create a new version of ``name`` from a logged model, tags and description included."""
    client = client or MlflowClient()
    ensure_registered_model(client, name)
    return client.create_model_version(
        name=name,
        source=info.model_uri,
        run_id=info.run_id,
        tags={k: str(v) for k, v in tags.items()},
        description=description,
        model_id=info.model_id,
    )


def find_by_export_key(client: MlflowClient, name: str, export_key: str) -> List[ModelVersion]:
    """Versions of ``name`` already registered for this export key, oldest first."""
    escaped = name.replace("'", "\\'")
    found = client.search_model_versions(
        f"name = '{escaped}' and tags.`{Tag.EXPORT_KEY}` = '{export_key}'"
    )
    return sorted(found, key=lambda v: int(v.version))


def promote(name: str, version: str, alias: str, client: Optional[MlflowClient] = None) -> ModelVersion:
    """Point ``alias`` at ``version``; refuse an exported variant whose validation did not pass."""
    from mlflow_tfexport.constants import VALIDATION_PASSED, Format
    from mlflow_tfexport.errors import TfexportError

    client = client or MlflowClient()
    mv = client.get_model_version(name, str(version))
    tags = mv.tags or {}
    fmt = tags.get(Tag.FORMAT)
    if fmt is None:
        raise TfexportError(
            f"models:/{name}/{version} is not a tfexport version (no {Tag.FORMAT} tag); promote it with "
            "MlflowClient.set_registered_model_alias if that is intended."
        )
    if fmt != Format.TRANSFORMERS and tags.get(Tag.VALIDATION) != VALIDATION_PASSED:
        raise TfexportError(
            f"Refusing to point @{alias} at models:/{name}/{version}: its validation is "
            f"{tags.get(Tag.VALIDATION, 'missing')!r}, not {VALIDATION_PASSED!r}. Export it again and promote "
            "a version whose validation passed."
        )
    client.set_registered_model_alias(name, alias, str(version))
    return mv
