"""Alias history of a registered model: every accepted or refused alias change, and the accepted state.

The registry keeps only where an alias points now. What it pointed at before, who moved it and what the
policy said are kept here, in registered model tags, so that they live with the model (same database, same
permissions, visible in the UI) and need no store of their own:

- ``tfexport.accepted.<alias>``: the version the policy last accepted for the alias, as signed JSON
  (``{"alias", "version", "time", "sig"}``). The guard compares the alias with it: a change is a difference
  between the two, and the version to go back to is this one. An alias name that is long or not plain ASCII
  gets the key ``tfexport.accepted.sha256:<digest>`` (tag keys are limited to 250 characters); the value names it.
- ``tfexport.history.<time key>``: one entry per change, as compact JSON (time, alias, from, to, decision,
  reason, by, via, what the guard did about a refusal, and ``sig``). One tag per entry: writing one is a single
  ``set_registered_model_tag``, so two writers (the worker and a CLI) never overwrite each other's entries.

Anyone who may edit the model may edit these tags, so both carry an HMAC (``attest.Signer``) by a holder of the
worker's secret. A value without a matching signature is *unverified*: shown as such, never trusted (the guard
does not take an unverified accepted state for its own, ``rollback`` follows signed entries only), and pruned
first.

MLflow stores a registered model tag value in a ``VARCHAR(5000)`` column (``MAX_ENTRY_CHARS`` keeps an entry
below it) and every tag shows on the model's page, so the history is bounded: ``MAX_ENTRIES`` entries per
model; unverified entries are deleted first, then the oldest signed ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Mapping, Optional

from mlflow.exceptions import MlflowException

from mlflow_tfexport.constants import Tag
from mlflow_tfexport.registry.attest import Signer, resolve

ACCEPTED = "accepted"
REFUSED = "refused"
REMOVED = "removed"  # the alias was deleted (by a user; the guard's own removals are part of a refusal entry)
SUPERSEDED = "superseded"  # a move the worker was told of, replaced by another move before the guard looked
POLICY = "policy"  # the promotion policy tags changed (added, changed or removed)
ERROR = "error"  # the guard could not check an alias (the reason says why); the other aliases went on
REAPPLIED = "reapplied"  # a user's move the guard's undo overwrote (no compare-and-set), made again by the guard
VIA_ROLLBACK = "rollback"
MAX_ENTRIES = 50
MAX_ENTRY_CHARS = 4000
MAX_REASON_CHARS = 1500
#: Alias names kept readable in tag keys; any other name is keyed by a digest (the value holds the name).
_PLAIN_ALIAS = re.compile(r"[A-Za-z0-9_-]{1,64}")
_UNSIGNED_FIELDS = ("sig", "verified")


def alias_key(prefix: str, alias: str) -> str:
    """``prefix + alias``, or ``prefix + "sha256:" + digest`` for a name that is long or not plain ASCII, so the
    key stays far below MLflow's 250 characters whatever alias MLflow accepts (':' is never in an alias name)."""
    if _PLAIN_ALIAS.fullmatch(alias):
        return prefix + alias
    return prefix + "sha256:" + hashlib.sha256(alias.encode("utf-8")).hexdigest()[:40]


@dataclass(frozen=True)
class Entry:
    """One recorded alias change (or policy change: ``alias`` is "" then)."""

    time: float  # unix seconds
    alias: str
    from_version: Optional[str]  # None: the alias pointed nowhere
    to_version: Optional[str]  # None: the alias was removed
    decision: str  # ACCEPTED, REFUSED, REMOVED, SUPERSEDED, REAPPLIED, POLICY or ERROR
    reason: str = ""
    by: Optional[str] = None  # who, when known (MLflow's alias webhooks do not say)
    via: str = ""  # "webhook", "poll", "cli", "rollback", "start"
    undone: Optional[str] = None  # a refusal: "moved back to version 3" or "removed"
    #: Whether its signature matched (None: not checked, no secret or no model name to check with).
    verified: Optional[bool] = field(default=None, compare=False)

    def _data(self) -> Dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if v not in (None, "") and k not in _UNSIGNED_FIELDS}
        data["reason"] = _cut(self.reason, MAX_REASON_CHARS)
        return data

    def to_json(self, name: str = "", signer: Optional[Signer] = None) -> str:
        """The entry as compact JSON, with ``sig`` when ``signer`` is given (over the model ``name`` too)."""
        data = self._data()
        text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        if len(text) > MAX_ENTRY_CHARS:  # a long alias name with a long reason: the reason gives way
            data["reason"] = _cut(data["reason"], max(20, len(data["reason"]) - (len(text) - MAX_ENTRY_CHARS)))
        if signer is not None:
            data["sig"] = signer.sign("history", name, data)
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str, name: Optional[str] = None, signer: Optional[Signer] = None) -> Optional[Entry]:
        try:
            data = json.loads(text)
            entry = cls(float(data["time"]), str(data.get("alias", "")), _opt(data.get("from_version")),
                        _opt(data.get("to_version")), str(data["decision"]), str(data.get("reason", "")),
                        _opt(data.get("by")), str(data.get("via", "")), _opt(data.get("undone")))
        except (ValueError, KeyError, TypeError, RecursionError):  # hand-edited in the UI, or cut short: skipped
            return None
        if name is None or signer is None:
            return entry
        signed = {k: v for k, v in data.items() if k != "sig"}
        return replace(entry, verified=signer.verify(data.get("sig"), "history", name, signed))

    def row(self) -> Dict[str, str]:
        """The entry as strings, for a table."""
        return {
            "time": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.time)) + " UTC",
            "alias": self.alias or "-",
            "from": self.from_version or "-",
            "to": self.to_version or "-",
            "decision": self.decision + (f" ({self.undone})" if self.undone else "")
            + (" (unverified)" if self.verified is False else ""),
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


def entries(model_tags: Mapping[str, str], alias: Optional[str] = None, *, name: Optional[str] = None,
            signer: Optional[Signer] = None, verified_only: bool = False) -> List[Entry]:
    """The recorded entries, oldest first (of ``alias`` only, when given). With the model's ``name`` and a
    ``signer``, each says whether its signature matched (``verified``); ``verified_only`` keeps those that did."""
    found = []
    for key in sorted(k for k in (model_tags or {}) if k.startswith(Tag.HISTORY_PREFIX)):
        entry = Entry.from_json(model_tags[key], name, signer)
        if entry is None or (alias is not None and entry.alias != alias):
            continue
        if verified_only and not entry.verified:
            continue
        found.append(entry)
    return found


def _prune_order(name: str, tags: Mapping[str, str], signer: Optional[Signer]) -> List[str]:
    """History keys in the order they go when over ``MAX_ENTRIES``: unverified ones first, then oldest first."""
    keys = sorted(k for k in tags if k.startswith(Tag.HISTORY_PREFIX))

    def genuine(key: str) -> bool:
        entry = Entry.from_json(tags[key], name, signer)
        return bool(entry is not None and entry.verified)

    return [k for k in keys if not genuine(k)] + [k for k in keys if genuine(k)]


def record(client: Any, name: str, entry: Entry, signer: Optional[Signer] = None) -> None:
    """Add ``entry`` (signed with ``signer``, else this process's secret, if any) to the model's history, and
    drop entries past ``MAX_ENTRIES``: unverified ones first, then the oldest."""
    signer = resolve(signer)
    client.set_registered_model_tag(name, _key(entry.time), entry.to_json(name, signer))
    tags = client.get_registered_model(name).tags or {}
    order = _prune_order(name, tags, signer)
    for key in order[: max(0, len(order) - MAX_ENTRIES)]:
        with contextlib.suppress(MlflowException):  # another writer deleted it first
            client.delete_registered_model_tag(name, key)


@dataclass(frozen=True)
class Accepted:
    """The accepted state of one alias, as read from its tag."""

    alias: str
    version: str
    time: float
    verified: Optional[bool]  # None: not checked (no secret)


def _read_accepted(key: str, value: str, name: Optional[str], signer: Optional[Signer]) -> Optional[Accepted]:
    text = (value or "").strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict):
        alias, version = data.get("alias"), data.get("version")
        if not isinstance(alias, str) or not isinstance(version, str) or not version:
            return None
        try:
            at = float(data.get("time", 0.0))
        except (TypeError, ValueError):
            at = 0.0
        verified = None
        if name is not None and signer is not None:
            verified = signer.verify(data.get("sig"), "accepted", name, alias, version, data.get("time"))
        if key != alias_key(Tag.ACCEPTED_PREFIX, alias):  # a value copied under another alias's key
            verified = False if verified is not None else None
        return Accepted(alias, version, at, verified)
    # A plain version number (written before signatures, or by hand): never verified.
    return Accepted(key[len(Tag.ACCEPTED_PREFIX):], text, 0.0, False if signer is not None else None)


def accepted_records(model_tags: Mapping[str, str], *, name: Optional[str] = None,
                     signer: Optional[Signer] = None) -> Dict[str, Accepted]:
    """alias -> its accepted state, for every ``tfexport.accepted.*`` tag that reads as one."""
    found: Dict[str, Accepted] = {}
    for key, value in (model_tags or {}).items():
        if key.startswith(Tag.ACCEPTED_PREFIX):
            record_ = _read_accepted(key, value, name, signer)
            if record_ is not None:
                found[record_.alias] = record_
    return found


def accepted(model_tags: Mapping[str, str], alias: str, *, name: Optional[str] = None,
             signer: Optional[Signer] = None) -> Optional[str]:
    """The version the accepted state of ``alias`` names; None if none (or the alias was removed). With
    ``name`` and ``signer``, only a verified state counts."""
    key = alias_key(Tag.ACCEPTED_PREFIX, alias)
    found = _read_accepted(key, (model_tags or {}).get(key, ""), name, signer)
    if found is None or (signer is not None and name is not None and not found.verified):
        return None
    return found.version


def accepted_aliases(model_tags: Mapping[str, str]) -> Dict[str, str]:
    """alias -> accepted version, for every alias with an accepted state (verified or not)."""
    return {a: r.version for a, r in accepted_records(model_tags).items()}


def set_accepted(client: Any, name: str, alias: str, version: Optional[str], signer: Optional[Signer] = None,
                 *, at: Optional[float] = None) -> None:
    """Record ``version`` as the accepted holder of ``alias`` (None: the alias has none), signed with ``signer``
    (else this process's secret, if any)."""
    key = alias_key(Tag.ACCEPTED_PREFIX, alias)
    if version is None:
        try:
            client.delete_registered_model_tag(name, key)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        return
    signer = resolve(signer)
    stamp = f"{time.time() if at is None else at:.3f}"
    data: Dict[str, Any] = {"alias": alias, "version": str(version), "time": stamp}
    if signer is not None:
        data["sig"] = signer.sign("accepted", name, alias, str(version), stamp)
    client.set_registered_model_tag(name, key, json.dumps(data, separators=(",", ":"), ensure_ascii=False))


_STEPS = (ACCEPTED, REMOVED)


def holders(recorded: List[Entry], alias: str) -> List[Optional[str]]:
    """The versions ``alias`` was accepted at, oldest first, with rolled-back steps taken off: a rollback
    returns to the step before, so rolling back twice goes two steps back (not back and forth)."""
    stack: List[Optional[str]] = []
    for entry in recorded:
        if entry.alias != alias or entry.decision not in _STEPS:
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


def rollback_target(model_tags: Mapping[str, str], alias: str, current: Optional[str], *,
                    name: Optional[str] = None, signer: Optional[Signer] = None) -> Optional[str]:
    """The version one step before ``current`` in the accepted history of ``alias``, following signed entries
    only (with ``name`` and a ``signer``, else this process's secret).

    Raises ``LookupError`` with the reason when there is none.
    """
    signer = resolve(signer)
    if signer is None or name is None:
        raise LookupError("no secret to verify the history with (set MLFLOW_TFEXPORT_GUARD_SECRET or "
                          "MLFLOW_TFEXPORT_WEBHOOK_SECRET to the worker's secret)")
    stack = holders(entries(model_tags, alias, name=name, signer=signer, verified_only=True), alias)
    if not stack or stack[-1] != current:
        raise LookupError(
            f"the signed history of @{alias} does not end at version {current or '(none)'}"
            + (f" (it ends at {stack[-1] or '(none)'})" if stack else " (nothing signed is recorded)")
        )
    if len(stack) < 2 or stack[-2] is None:
        raise LookupError(f"@{alias} pointed nowhere before version {current}: there is no earlier version")
    return stack[-2]
