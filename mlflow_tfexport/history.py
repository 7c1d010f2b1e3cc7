"""Alias history of a registered model: every accepted or refused alias change, and the accepted state.

The registry keeps only where an alias points now. What it pointed at before, who moved it and what the
policy said are kept here, in registered model tags, so that they live with the model (same database, same
permissions, visible in the UI) and need no store of their own:

- ``tfexport.accepted.<alias>``: the version the policy last accepted for the alias. The guard compares the
  alias with it: a change is a difference between the two, and the version to go back to is this one.
- ``tfexport.history.<time key>``: one entry per change, as compact JSON (time, alias, from, to, decision,
  reason, by, via, and what the guard did about a refusal). One tag per entry: writing one is a single
  ``set_registered_model_tag``, so two writers (the worker and a CLI) never overwrite each other's entries.

MLflow stores a registered model tag value in a ``VARCHAR(5000)`` column (``MAX_ENTRY_CHARS`` keeps an entry
below it) and every tag shows on the model's page, so the history is bounded: ``MAX_ENTRIES`` most recent
entries per model; the oldest are deleted as new ones come.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional

from mlflow.exceptions import MlflowException

from mlflow_tfexport.constants import Tag

ACCEPTED = "accepted"
REFUSED = "refused"
REMOVED = "removed"  # the alias was deleted (by a user; the guard's own removals are part of a refusal entry)
VIA_ROLLBACK = "rollback"
MAX_ENTRIES = 50
MAX_ENTRY_CHARS = 4000
MAX_REASON_CHARS = 1500


@dataclass(frozen=True)
class Entry:
    """One recorded alias change."""

    time: float  # unix seconds
    alias: str
    from_version: Optional[str]  # None: the alias pointed nowhere
    to_version: Optional[str]  # None: the alias was removed
    decision: str  # ACCEPTED, REFUSED or REMOVED
    reason: str = ""
    by: Optional[str] = None  # who, when known (MLflow's alias webhooks do not say)
    via: str = ""  # "webhook", "poll", "cli", "rollback"
    undone: Optional[str] = None  # a refusal: "moved back to version 3" or "removed"

    def to_json(self) -> str:
        data = {k: v for k, v in asdict(self).items() if v not in (None, "")}
        data["reason"] = _cut(self.reason, MAX_REASON_CHARS)
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        return text if len(text) <= MAX_ENTRY_CHARS else text[: MAX_ENTRY_CHARS - 3] + "..."

    @classmethod
    def from_json(cls, text: str) -> Optional[Entry]:
        try:
            data = json.loads(text)
            return cls(float(data["time"]), str(data["alias"]), _opt(data.get("from_version")),
                       _opt(data.get("to_version")), str(data["decision"]), str(data.get("reason", "")),
                       _opt(data.get("by")), str(data.get("via", "")), _opt(data.get("undone")))
        except (ValueError, KeyError, TypeError):  # hand-edited in the UI, or cut short: skipped
            return None

    def row(self) -> Dict[str, str]:
        """The entry as strings, for a table."""
        return {
            "time": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.time)) + " UTC",
            "alias": self.alias,
            "from": self.from_version or "-",
            "to": self.to_version or "-",
            "decision": self.decision + (f" ({self.undone})" if self.undone else ""),
            "by": self.by or "-",
            "via": self.via or "-",
            "reason": self.reason or "-",
        }


def _opt(value: Any) -> Optional[str]:
    return None if value is None else str(value)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key(at: float) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(at)) + f".{int(at * 1000) % 1000:03d}Z"
    return f"{Tag.HISTORY_PREFIX}{stamp}-{secrets.token_hex(2)}"


def entries(model_tags: Mapping[str, str], alias: Optional[str] = None) -> List[Entry]:
    """The recorded entries, oldest first (of ``alias`` only, when given)."""
    found = []
    for key in sorted(k for k in (model_tags or {}) if k.startswith(Tag.HISTORY_PREFIX)):
        entry = Entry.from_json(model_tags[key])
        if entry is not None and (alias is None or entry.alias == alias):
            found.append(entry)
    return found


def record(client: Any, name: str, entry: Entry) -> None:
    """Add ``entry`` to the model's history and drop the oldest entries past ``MAX_ENTRIES``."""
    client.set_registered_model_tag(name, _key(entry.time), entry.to_json())
    keys = sorted(k for k in (client.get_registered_model(name).tags or {}) if k.startswith(Tag.HISTORY_PREFIX))
    for key in keys[: max(0, len(keys) - MAX_ENTRIES)]:
        with contextlib.suppress(MlflowException):  # another writer deleted it first
            client.delete_registered_model_tag(name, key)


def accepted(model_tags: Mapping[str, str], alias: str) -> Optional[str]:
    """The version the policy last accepted for ``alias``; None if none (or the alias was removed)."""
    value = (model_tags or {}).get(Tag.ACCEPTED_PREFIX + alias, "").strip()
    return value or None


def accepted_aliases(model_tags: Mapping[str, str]) -> Dict[str, str]:
    """alias -> accepted version, for every alias with an accepted state."""
    return {k[len(Tag.ACCEPTED_PREFIX):]: v for k, v in (model_tags or {}).items()
            if k.startswith(Tag.ACCEPTED_PREFIX) and v.strip()}


def set_accepted(client: Any, name: str, alias: str, version: Optional[str]) -> None:
    """Record ``version`` as the accepted holder of ``alias`` (None: the alias has none)."""
    if version is None:
        try:
            client.delete_registered_model_tag(name, Tag.ACCEPTED_PREFIX + alias)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
    else:
        client.set_registered_model_tag(name, Tag.ACCEPTED_PREFIX + alias, str(version))


def holders(recorded: List[Entry], alias: str) -> List[Optional[str]]:
    """The versions ``alias`` was accepted at, oldest first, with rolled-back steps taken off: a rollback
    returns to the step before, so rolling back twice goes two steps back (not back and forth)."""
    stack: List[Optional[str]] = []
    for entry in recorded:
        if entry.alias != alias or entry.decision == REFUSED:
            continue
        if entry.via == VIA_ROLLBACK and stack:
            stack.pop()
            if not stack or stack[-1] != entry.to_version:
                stack.append(entry.to_version)
            continue
        if not stack and entry.from_version is not None:
            stack.append(entry.from_version)
        if not stack or stack[-1] != entry.to_version:
            stack.append(entry.to_version if entry.decision == ACCEPTED else None)
    return stack


def rollback_target(model_tags: Mapping[str, str], alias: str, current: Optional[str]) -> Optional[str]:
    """The version one step before ``current`` in the accepted history of ``alias``.

    Raises ``LookupError`` with the reason when there is none.
    """
    stack = holders(entries(model_tags, alias), alias)
    if not stack or stack[-1] != current:
        raise LookupError(
            f"the recorded history of @{alias} does not end at version {current or '(none)'}"
            + (f" (it ends at {stack[-1] or '(none)'})" if stack else " (nothing is recorded)")
        )
    if len(stack) < 2 or stack[-2] is None:
        raise LookupError(f"@{alias} pointed nowhere before version {current}: there is no earlier version")
    return stack[-2]
