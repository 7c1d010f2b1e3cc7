"""The alias guard's own memory: which models it guards, their last seen policy, and the accepted versions.

Why a local file and not (only) registry tags: every tag of a registered model can be *deleted* by anyone with
EDIT on it, and a deleted tag looks exactly like one never written, signed or not. A guard that learned from
tags alone which models it guards could be switched off by deleting them. So the worker keeps what it must not
forget on its own disk (``--state-dir``; one JSON file per registry URI, written atomically, readable by the
worker's user only):

- the models it has guarded (a model stays guarded when its ``tfexport.*`` tags or its versions'
  ``tfexport.format`` are deleted);
- their policy tags as last seen, so that a policy change (a tag added, changed or removed) is noticed and
  recorded, and the guarded aliases are checked again under the new policy;
- per alias, the accepted version (with the time it was accepted, so that an older signed
  ``tfexport.accepted`` value put back by a user does not win) and the last version accepted while the alias
  was guarded (where a re-check under a tightened policy goes back to).

The signed ``tfexport.accepted.*`` tags remain the shared state: a worker with an empty memory (a new machine)
starts from them, and a promotion signed by another holder of the secret (``mlflow-tfexport promote`` with the
secret set) is taken when it is newer than what the memory holds. Without ``--state-dir`` the memory lives in
the process only (a restart then starts from the signed tags).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import tempfile
import threading
from typing import Any, Dict, Mapping, Optional, Tuple

_logger = logging.getLogger(__name__)

STATE_DIR_ENV = "MLFLOW_TFEXPORT_STATE_DIR"
#: Policy tags kept per model, and the characters kept of each value (a larger policy is a user's doing: the
#: memory stays bounded, and a change beyond these bounds still shows as a change of the digest).
MAX_POLICY_TAGS = 200
MAX_POLICY_VALUE_CHARS = 500


def policy_snapshot(policy_tags: Mapping[str, str]) -> Dict[str, str]:
    """The policy tags as the memory keeps them (bounded), with a digest of all of them."""
    items = sorted(policy_tags.items())
    digest = hashlib.sha256(json.dumps(items, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]
    kept = {k: v[:MAX_POLICY_VALUE_CHARS] for k, v in items[:MAX_POLICY_TAGS]}
    return {**kept, "": digest}


class GuardMemory:
    """What the guard remembers per registered model; thread-safe; saved to ``path`` after each change."""

    def __init__(self, path: Optional[str] = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._models: Dict[str, Dict[str, Any]] = {}
        if path and os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
                self._models = {str(k): v for k, v in (data.get("models") or {}).items() if isinstance(v, dict)}
            except (OSError, ValueError, AttributeError) as exc:
                _logger.warning("the guard's memory %s cannot be read (%s): starting from the signed tags", path, exc)

    @classmethod
    def in_dir(cls, directory: str, registry_uri: str) -> GuardMemory:
        """The memory for ``registry_uri`` in ``directory`` (created, mode 0700)."""
        os.makedirs(directory, mode=0o700, exist_ok=True)
        digest = hashlib.sha256(registry_uri.encode("utf-8")).hexdigest()[:16]
        return cls(os.path.join(directory, f"guard-{digest}.json"))

    def knows(self, name: str) -> bool:
        with self._lock:
            return name in self._models

    def policy(self, name: str) -> Optional[Dict[str, str]]:
        with self._lock:
            found = self._models.get(name)
            return None if found is None else dict(found.get("policy") or {})

    def accepted(self, name: str, alias: str) -> Optional[Tuple[Optional[str], float]]:
        """(version or None when removed, time) as remembered; None when nothing is remembered."""
        with self._lock:
            value = ((self._models.get(name) or {}).get("accepted") or {}).get(alias)
        if not isinstance(value, list) or len(value) != 2:
            return None
        return (None if value[0] is None else str(value[0]), float(value[1]))

    def accepted_all(self, name: str) -> Dict[str, Tuple[Optional[str], float]]:
        with self._lock:
            found = copy.deepcopy((self._models.get(name) or {}).get("accepted") or {})
        return {a: (None if v[0] is None else str(v[0]), float(v[1])) for a, v in found.items()
                if isinstance(v, list) and len(v) == 2}

    def safe(self, name: str, alias: str) -> Optional[str]:
        with self._lock:
            value = ((self._models.get(name) or {}).get("safe") or {}).get(alias)
        return None if value is None else str(value)

    def remember(self, name: str, *, policy: Optional[Dict[str, str]] = None,
                 accepted: Optional[Tuple[str, Optional[str], float]] = None,
                 safe: Optional[Tuple[str, Optional[str]]] = None) -> None:
        """Note a model as guarded, and (when given) its policy snapshot, an alias's accepted version
        ``(alias, version or None, time)`` or its last version accepted while guarded ``(alias, version)``."""
        with self._lock:
            model = self._models.setdefault(name, {"policy": {}, "accepted": {}, "safe": {}})
            if policy is not None:
                model["policy"] = dict(policy)
            if accepted is not None:
                alias, version, at = accepted
                model.setdefault("accepted", {})[alias] = [version, at]
            if safe is not None:
                alias, version = safe
                if version is None:
                    model.setdefault("safe", {}).pop(alias, None)
                else:
                    model.setdefault("safe", {})[alias] = version
            self._save()

    def _save(self) -> None:
        if not self.path:
            return
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, tmp = tempfile.mkstemp(prefix=".guard-", suffix=".json", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"models": self._models}, f, ensure_ascii=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
