"""The registry side of the package: register, find again, settle races, promote and roll back (through the
promotion policy, recorded in the history), list, parse URIs.

Tags and description are passed to ``create_model_version`` itself, so a
version is never visible in the registry without them. Registered model
names reach MLflow's search filter grammar quoted so that it reads them back
exactly (``name_filter``), whatever characters they hold; names that could
not be loaded back as a ``models:/`` URI are refused before any work
(``check_model_name``).
"""

from __future__ import annotations

import getpass
import os
import re
import time
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo

import mlflow_tfexport.registry.history as history
from mlflow_tfexport.constants import Format, Tag
from mlflow_tfexport.errors import ExportError, TfexportError
from mlflow_tfexport.registry.attest import Signer
from mlflow_tfexport.registry.policy import Decision, decide

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


def _who() -> Optional[str]:
    """Who runs this process, for the history: the tracking user name, else the OS user."""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if user:
        return user
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return None


def _refusal(decision: Decision, name: str) -> TfexportError:
    return TfexportError(
        f"Refusing to point @{decision.alias} at models:/{name}/{decision.version}: {decision.reason}. The policy of "
        f"{name!r} (mlflow-tfexport policy {name}) guards @{decision.alias}: export again and promote a version that "
        "meets it, or change the policy."
    )


def move_alias(client: MlflowClient, name: str, decision: Decision, *, via: str, by: Optional[str],
               signer: Optional[Signer] = None) -> history.Entry:
    """Point the alias of an accepted ``decision`` at its version and record it (accepted state first, so that
    the worker's alias guard, hearing of the change, finds it already accepted). Both are signed with ``signer``
    (else this process's secret, if any: without one, the worker checks the move again itself)."""
    history.set_accepted(client, name, decision.alias, decision.version, signer)
    client.set_registered_model_alias(name, decision.alias, decision.version)
    clear_refusal(client, name, decision.version, decision.alias)
    entry = history.Entry(time.time(), decision.alias, decision.previous, decision.version, history.ACCEPTED,
                          decision.reason, by, via)
    history.record(client, name, entry, signer)
    return entry


def clear_refusal(client: MlflowClient, name: str, version: str, alias: str) -> None:
    """Delete the version's refusal tag for ``alias``, once the alias is accepted there."""
    try:
        tags = client.get_model_version(name, version).tags or {}
        key = history.alias_key(Tag.REFUSED_PREFIX, alias)
        if key in tags:
            client.delete_model_version_tag(name, version, key)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise


def promote(name: str, version: str, alias: str, client: Optional[MlflowClient] = None, *,
            via: str = "cli", by: Optional[str] = None) -> ModelVersion:
    """Point ``alias`` at ``version`` of ``name`` if the model's promotion policy allows it, and record it.

    The decision is the one the worker's alias guard takes for a change made in the UI (``policy.decide``):
    by default ``@production`` is guarded and needs a version whose validation passed, of the task and label set
    of the version it replaces; ``mlflow-tfexport policy NAME`` shows the policy. Accepted and refused attempts
    are both recorded in the model's history (``mlflow-tfexport history NAME``).

    Args:
        name: The registered model.
        version: The version to promote (``"2"`` or ``2``).
        alias: The alias to point at it, e.g. ``"production"``; it moves if it pointed elsewhere.
        client: The ``MlflowClient`` to use (default: one for the current tracking and registry URIs).
        via: What asked, for the history (``"cli"``).
        by: Who asked, for the history (default: the tracking user name, else the OS user).

    Returns:
        The promoted ``ModelVersion``.

    Raises:
        TfexportError: the policy refuses it; the message lists every reason (e.g. the version is not a tfexport
            version, or it is an exported variant whose ``tfexport.validation`` tag is not ``passed``, with the last
            check on real data: metric, value, threshold, rows).
        mlflow.exceptions.MlflowException: the version does not exist.

    Example:
        >>> promote("sentiment", "2", "production")
        >>> mlflow.pyfunc.load_model("models:/sentiment@production")
    """
    client = client or MlflowClient()
    mv = client.get_model_version(name, str(version))
    current = (client.get_registered_model(name).aliases or {}).get(alias)
    decision = decide(client, name, alias, str(mv.version), None if current is None else str(current))
    by = by or _who()
    if not decision.allowed:
        history.record(client, name, history.Entry(time.time(), alias, decision.previous, decision.version,
                                                   history.REFUSED, decision.reason, by, via))
        raise _refusal(decision, name)
    move_alias(client, name, decision, via=via, by=by)
    return mv


def rollback(name: str, alias: str = "production", client: Optional[MlflowClient] = None, *,
             by: Optional[str] = None) -> Tuple[Optional[str], str]:
    """Move ``alias`` back one step in its recorded history, through the policy; returns (from, to) versions.

    Rolling back twice goes two steps back. Raises ``TfexportError`` when the alias points nowhere, when the
    history has no earlier version, or when the policy refuses the earlier version now.
    """
    client = client or MlflowClient()
    model = client.get_registered_model(name)
    current = (model.aliases or {}).get(alias)
    current = None if current is None else str(current)
    try:
        target = history.rollback_target(model.tags or {}, alias, current, name=name)
    except LookupError as exc:
        raise TfexportError(
            f"Cannot roll @{alias} of {name!r} back: {exc}. See mlflow-tfexport history {name}."
        ) from None
    decision = decide(client, name, alias, str(target), current)
    by = by or _who()
    if not decision.allowed:
        history.record(client, name, history.Entry(time.time(), alias, current, decision.version, history.REFUSED,
                                                   decision.reason, by, history.VIA_ROLLBACK))
        raise _refusal(decision, name)
    move_alias(client, name, decision, via=history.VIA_ROLLBACK, by=by)
    return current, str(target)


def history_rows(name: str, alias: Optional[str] = None, client: Optional[MlflowClient] = None) -> List[Dict[str, str]]:
    """The recorded alias changes of ``name`` (of ``alias`` only, when given), oldest first, as strings."""
    client = client or MlflowClient()
    signer = Signer.from_env()
    tags = client.get_registered_model(name).tags or {}
    return [e.row() for e in history.entries(tags, alias, name=name if signer else None, signer=signer)]


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
                # A quantised variant is gated on agreement: its fp32 atol is not a bound it met.
                "atol": "n/a" if tags.get(Tag.QUANTIZED) else tags.get(Tag.ATOL, "-"),
                "max diff": tags.get(Tag.MAX_ABS_DIFF, "-"),
                "validation": tags.get(Tag.GATE) or tags.get(
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
