"""The registry side of the package: register, find again, settle races, promote, list, parse URIs.

Tags and description are passed to ``create_model_version`` itself, so a
version is never visible in the registry without them. Registered model
names reach MLflow's search filter grammar quoted so that it reads them back
exactly (``name_filter``), whatever characters they hold; names that could
not be loaded back as a ``models:/`` URI are refused before any work
(``check_model_name``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo

from mlflow_tfexport.constants import VALIDATION_PASSED, Format, Tag
from mlflow_tfexport.errors import ExportError, TfexportError

#: ``models:/<name>/<version>`` or ``models:/<name>@<alias>``.
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/]+))$")
#: Characters a registered model name may not hold, and why (MLflow itself refuses '/' and ':').
_NOT_IN_NAMES: Dict[str, str] = {
    "/": "MLflow refuses it in names",
    ":": "MLflow refuses it in names",
    "@": "models:/<name>/<version> would be read as an alias of the name before the '@'",
    "?": "models:/<name>/<version> would be cut at the '?' (read as a URL query)",
}
#: What a search filter string can quote: MLflow's parser strips the quotes and never unescapes.
_QUOTES = ("'", '"')


@dataclass(frozen=True)
class ModelsUri:
    """A parsed ``models:/`` URI of a registered version: by number or by alias."""

    name: str
    version: Optional[str] = None
    alias: Optional[str] = None


def parse_models_uri(uri: str) -> Optional[ModelsUri]:
    """``models:/<name>/<version>`` or ``models:/<name>@<alias>`` -> its parts; None for any other URI."""
    match = _MODELS_URI.match(uri) if isinstance(uri, str) else None
    if match is None:
        return None
    return ModelsUri(match.group("name"), match.group("version"), match.group("alias"))


def check_model_name(name: str) -> None:
    """Refuse a registered model name that MLflow refuses or that could not be loaded back as a
    ``models:/<name>/<version>`` URI, before any work."""
    if not isinstance(name, str) or not name.strip():
        raise ExportError(
            f"Registered model name {name!r} is not allowed: it must be a non-empty string, e.g. 'sentiment'."
        )
    if name == "." or name.startswith(".."):
        raise ExportError(
            f"Registered model name {name!r} is not allowed: MLflow refuses names that read as a relative path "
            "('.', or starting with '..'). Choose another name, e.g. 'sentiment'."
        )
    bad = [c for c in _NOT_IN_NAMES if c in name]
    if bad:
        reasons = "; ".join(f"{c!r}: {_NOT_IN_NAMES[c]}" for c in bad)
        raise ExportError(
            f"Registered model name {name!r} is not allowed: it contains {', '.join(map(repr, bad))} ({reasons}). "
            f"Choose a name without {', '.join(map(repr, _NOT_IN_NAMES))}, e.g. {_suggest(name)!r}."
        )


def _suggest(name: str) -> str:
    for c in _NOT_IN_NAMES:
        name = name.replace(c, "-")
    return name


def name_filter(name: str) -> str:
    """A search filter clause that selects the versions of ``name``.

    MLflow's filter parser takes a quoted string as it is between its quotes (no unescaping), and its
    tokenizer reads a backslash before a quote as an escaped quote. So a name is quoted with a quote
    character it does not contain, unless it ends with a backslash. Any other name (both quote characters,
    or a final backslash) cannot be written as an equality: it is matched with ``LIKE`` and a
    one-character wildcard in place of each quote and backslash (an escape character in some databases'
    ``LIKE``), a superset that callers narrow to the exact name (``versions_of``).
    """
    if not name.endswith("\\"):
        for quote in _QUOTES:
            if quote not in name:
                return f"name = {quote}{name}{quote}"
    pattern = re.sub(r"['\"\\]", "_", name)
    return f"name LIKE '{pattern}'"


def _search(client: MlflowClient, name: str, extra: str = "") -> List[ModelVersion]:
    """Every version of exactly ``name`` matching the extra filter clause, oldest first (all pages)."""
    query = name_filter(name) + (f" and {extra}" if extra else "")
    found: List[ModelVersion] = []
    token: Optional[str] = None
    while True:
        page = client.search_model_versions(query, page_token=token)
        found += [v for v in page if v.name == name]
        token = page.token
        if not token:
            break
    return sorted(found, key=lambda v: int(v.version))


def versions_of(client: MlflowClient, name: str) -> List[ModelVersion]:
    """All versions of the registered model ``name``, oldest first."""
    return _search(client, name)


def find_by_export_key(client: MlflowClient, name: str, export_key: str) -> List[ModelVersion]:
    """Versions of ``name`` already registered for this export key, oldest first."""
    if not re.fullmatch(r"[0-9a-f]+", export_key):
        raise TfexportError(f"An export key is a hex digest; received {export_key!r}.")
    return _search(client, name, f"tags.`{Tag.EXPORT_KEY}` = '{export_key}'")


def settle_duplicates(client: MlflowClient, name: str, key: str, mine: ModelVersion) -> ModelVersion:
    """Two identical exports racing: the lowest version wins, later duplicates delete themselves."""
    same = find_by_export_key(client, name, key)
    if same and int(same[0].version) < int(mine.version):
        client.delete_model_version(name, mine.version)
        return same[0]
    return mine


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


def promote(name: str, version: str, alias: str, client: Optional[MlflowClient] = None) -> ModelVersion:
    """Point ``alias`` at ``version`` of ``name``; refuse an exported variant whose validation did not pass.

    Args:
        name: The registered model.
        version: The version to promote (``"2"`` or ``2``).
        alias: The alias to point at it, e.g. ``"production"``; it moves if it pointed elsewhere.
        client: The ``MlflowClient`` to use (default: one for the current tracking and registry URIs).

    Returns:
        The promoted ``ModelVersion``.

    Raises:
        TfexportError: ``version`` is not a tfexport version (no ``tfexport.format`` tag), or it is an
            exported variant whose ``tfexport.validation`` tag is not ``passed`` (``mlflow-tfexport validate
            --tag`` records ``failed`` when a re-validation fails); the message names the last check on real
            data (metric, value, threshold, rows).
        mlflow.exceptions.MlflowException: the version does not exist.

    Example:
        >>> promote("sentiment", "2", "production")
        >>> mlflow.pyfunc.load_model("models:/sentiment@production")
    """
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
            f"{tags.get(Tag.VALIDATION, 'missing')!r}, not {VALIDATION_PASSED!r}{last_validation(tags)}. Export it "
            "again and promote a version whose validation passed."
        )
    client.set_registered_model_alias(name, alias, str(version))
    return mv


def last_validation(tags: Mapping[str, str]) -> str:
    """The last recorded check on real data, as a clause (e.g. " (label_agreement 0.5000, >= 1 required, on
    332 rows from file reviews.csv)"), or "" when none is recorded."""
    metric = tags.get(Tag.AGREEMENT_METRIC)
    if not metric:
        return ""
    return (f" ({metric} {tags.get(Tag.AGREEMENT, '?')}, >= {tags.get(Tag.AGREEMENT_THRESHOLD, '?')} required, "
            f"on {tags.get(Tag.DATA_ROWS, '?')} rows from {tags.get(Tag.DATA_ORIGIN, '?')})")


def variant_rows(name: str, client: Optional[MlflowClient] = None) -> List[Dict[str, str]]:
    """One row per version of ``name`` (its variants): format, task, opset, trace shape, atol, max diff,
    validation and aliases, as strings ("-" where a tag is absent)."""
    client = client or MlflowClient()
    aliases: Dict[str, List[str]] = {}
    for alias, version in (client.get_registered_model(name).aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for mv in versions_of(client, name):
        tags = mv.tags or {}
        rows.append(
            {
                "version": str(mv.version),
                "format": tags.get(Tag.FORMAT, "-"),
                "task": tags.get(Tag.TASK, "-"),
                "opset": tags.get(Tag.OPSET, "-"),
                "trace shape": tags.get(Tag.TRACE_SHAPE, "-"),
                "atol": tags.get(Tag.ATOL, "-"),
                "max diff": tags.get(Tag.MAX_ABS_DIFF, "-"),
                "validation": tags.get(
                    Tag.VALIDATION, "source" if tags.get(Tag.FORMAT) == Format.TRANSFORMERS else "-"
                ),
                "aliases": ",".join(sorted(aliases.get(str(mv.version), []))) or "-",
            }
        )
    return rows


def resolve_version(model_uri: str, client: Optional[MlflowClient] = None) -> Tuple[str, str]:
    """``models:/<name>/<version>`` or ``models:/<name>@<alias>`` -> (name, version)."""
    parsed = parse_models_uri(model_uri)
    if parsed is None:
        raise TfexportError(
            f"{model_uri!r} does not name a registered version: use models:/<name>/<version> or "
            "models:/<name>@<alias>."
        )
    if parsed.alias:
        return parsed.name, str((client or MlflowClient()).get_model_version_by_alias(parsed.name, parsed.alias)
                                .version)
    return parsed.name, str(parsed.version)


def set_version_tags(name: str, version: str, tags: Mapping[str, str], client: Optional[MlflowClient] = None) -> None:
    """Set ``tags`` on version ``version`` of ``name``."""
    client = client or MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
