"""The alias guard: an alias moved in the registry UI (or by any client) goes through the promotion policy.

MLflow's ``model_version_alias.created`` webhook says only which model, alias and version (not who, and not
where the alias pointed before), and a delivery may arrive late, twice or out of order. So the guard does not
act on the delivery's version: it *reconciles* the alias. It reads where the alias points now and compares it
with the version the policy last accepted for it (``tfexport.accepted.<alias>``, see ``history``):

- the same: nothing changed. This is also how the guard's own undo is recognised when its webhook comes
  back (the alias is back at the accepted version), so an undo is never refused again;
- a new version the policy allows: it becomes the accepted one, and the change is recorded;
- a new version the policy refuses: the alias goes back to the accepted version (or is removed when there was
  none), the version gets the tag ``tfexport.refused.<alias>`` saying what was refused, why and what was done,
  and the refusal is recorded;
- the alias is gone: the removal is recorded.

Poll mode calls ``guard_all`` on every pass; the webhook receiver queues the model on an ``AliasGuard``, whose
one thread reconciles one model at a time (so the guard never races itself).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, List, Mapping, Optional, Set

from mlflow.exceptions import MlflowException

import mlflow_tfexport.history as history
from mlflow_tfexport.constants import Tag
from mlflow_tfexport.policy import decide
from mlflow_tfexport.registry import move_alias

_logger = logging.getLogger(__name__)

RETRIES = 3
RETRY_WAIT_S = 2.0


def _is_ours(model_tags: Mapping[str, str], version_tags: Mapping[str, str]) -> bool:
    """A model this package looks after: it has a policy, an accepted state or a history, or the version the
    alias points at is a tfexport version. Aliases of other models are left alone."""
    return any(k.startswith(Tag.PREFIX) for k in model_tags) or Tag.FORMAT in version_tags


def _stamp(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _restore(client: Any, name: str, alias: str, before: Optional[str]) -> str:
    """Point ``alias`` back at ``before`` (or remove it); what was done, as words."""
    if before is not None:
        try:
            client.set_registered_model_alias(name, alias, before)
            return f"@{alias} moved back to version {before}"
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            history.set_accepted(client, name, alias, None)  # the accepted version was deleted since
            client.delete_registered_model_alias(name, alias)
            return f"@{alias} removed (version {before}, which held it before, no longer exists)"
    client.delete_registered_model_alias(name, alias)
    return f"@{alias} removed (it pointed nowhere before)"


def guard_alias(client: Any, name: str, alias: str, *, via: str) -> Optional[history.Entry]:
    """Reconcile one alias with its accepted state; returns the recorded entry, or None when nothing changed."""
    model = client.get_registered_model(name)
    tags = model.tags or {}
    now = (model.aliases or {}).get(alias)
    now = None if now is None else str(now)
    before = history.accepted(tags, alias)
    if now == before:
        return None
    if now is None:
        history.set_accepted(client, name, alias, None)
        entry = history.Entry(time.time(), alias, before, None, history.REMOVED, f"@{alias} was removed", None, via)
        history.record(client, name, entry)
        _logger.info("models:/%s@%s removed (was version %s); recorded", name, alias, before)
        return entry
    try:
        version_tags = client.get_model_version(name, now).tags or {}
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":  # moved again, or deleted, since: a later pass sees it
            return None
        raise
    if not _is_ours(tags, version_tags):
        return None
    decision = decide(client, name, alias, now, before)
    if decision.allowed:
        entry = move_alias(client, name, decision, via=via, by=None)
        _logger.info("models:/%s@%s -> version %s accepted (%s)", name, alias, now, decision.reason)
        return entry
    at = time.time()
    undone = _restore(client, name, alias, before)
    client.set_model_version_tag(
        name, now, Tag.REFUSED_PREFIX + alias,
        f"{_stamp(at)}: @{alias} may not point at version {now}: {decision.reason}. {undone}. "
        f"Policy: mlflow-tfexport policy {name}",
    )
    entry = history.Entry(at, alias, before, now, history.REFUSED, decision.reason, None, via, undone)
    history.record(client, name, entry)
    _logger.warning("models:/%s@%s -> version %s refused: %s; %s", name, alias, now, decision.reason, undone)
    return entry


def changed_aliases(model: Any) -> List[str]:
    """Aliases of a registered model that differ from their accepted state (new, moved or removed)."""
    now = {a: str(v) for a, v in (model.aliases or {}).items()}
    accepted = history.accepted_aliases(model.tags or {})
    return sorted(a for a in set(now) | set(accepted) if now.get(a) != accepted.get(a))


def guard_model(client: Any, name: str, *, via: str) -> List[history.Entry]:
    """Reconcile every alias of ``name``; the recorded entries."""
    recorded = []
    for alias in changed_aliases(client.get_registered_model(name)):
        entry = guard_alias(client, name, alias, via=via)
        if entry is not None:
            recorded.append(entry)
    return recorded


def guard_all(client: Any, *, via: str = "poll", page_size: int = 200) -> List[history.Entry]:
    """Reconcile the aliases of every registered model (poll mode, and once when the worker starts)."""
    recorded: List[history.Entry] = []
    token = None
    while True:
        page = client.search_registered_models(max_results=page_size, page_token=token)
        for model in page:
            if changed_aliases(model):
                try:
                    recorded += guard_model(client, model.name, via=via)
                except MlflowException as exc:  # one model's trouble does not stop the others
                    _logger.warning("guarding the aliases of %r failed: %s", model.name, exc)
        token = getattr(page, "token", None)
        if not token:
            return recorded


class AliasGuard:
    """One background thread reconciling the models that alias webhooks name, one model at a time.

    ``submit(name)`` returns at once; a model already waiting is not queued twice (its pass reads the latest
    state anyway). A pass that fails (registry unreachable) is tried ``RETRIES`` times.
    """

    def __init__(self, client: Any, *, max_queue: int = 1000) -> None:
        self.client = client
        self._queue: queue.Queue[Optional[str]] = queue.Queue(maxsize=max_queue)
        self._waiting: Set[str] = set()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> AliasGuard:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="tfexport-alias-guard", daemon=True)
                self._thread.start()
        return self

    def stop(self, timeout: Optional[float] = None) -> None:
        thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)
            self._thread = None

    def join(self) -> None:
        """Wait until every submitted model is reconciled."""
        self._queue.join()

    def submit(self, name: str) -> bool:
        """Queue ``name`` for a pass unless it waits already; False when it did. Raises ``queue.Full``."""
        self.start()
        with self._lock:
            if name in self._waiting:
                return False
            self._queue.put_nowait(name)
            self._waiting.add(name)
        return True

    def _loop(self) -> None:
        while True:
            name = self._queue.get()
            try:
                if name is None:
                    return
                with self._lock:
                    self._waiting.discard(name)
                self._pass(name)
            finally:
                self._queue.task_done()

    def _pass(self, name: str) -> None:
        for attempt in range(1, RETRIES + 1):
            try:
                guard_model(self.client, name, via="webhook")
                return
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":  # deleted since, or never was: nothing to guard
                    _logger.info("alias delivery for %r: no such registered model", name)
                    return
                _logger.warning("guarding the aliases of %r failed (attempt %d/%d): %s", name, attempt, RETRIES, exc)
                time.sleep(RETRY_WAIT_S)
            except Exception as exc:  # the registry away, or a bug: logged, tried again, the thread goes on
                _logger.warning("guarding the aliases of %r failed (attempt %d/%d): %s", name, attempt, RETRIES, exc)
                time.sleep(RETRY_WAIT_S)

