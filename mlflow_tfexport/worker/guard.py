"""The alias guard: an alias moved in the registry UI (or by any client) goes through the promotion policy.

MLflow's ``model_version_alias.created`` webhook says only which model, alias and version (not who, and not
where the alias pointed before), and a delivery may arrive late, twice or out of order. So the guard does not
act on the delivery's version: it *reconciles* the alias. It reads where the alias points now and compares it
with the version the policy last accepted for it — its own state, which a registry user cannot forge: the
guard's memory (``memory.GuardMemory``) and the *signed* ``tfexport.accepted.<alias>`` tag (see ``history``;
an unsigned or mismatching one is ignored):

- the same: nothing changed. This is also how the guard's own undo is recognised when its webhook comes
  back (the alias is back at the accepted version), so an undo is never refused again;
- a new version the policy allows: it becomes the accepted one, and the change is recorded;
- a new version the policy refuses: the refusal is recorded (history entry, and the version's tag
  ``tfexport.refused.<alias>``) *before* the alias goes back to the accepted version (or is removed when there
  was none), so a crash between the two leaves the record;
- the alias is gone: the removal is recorded; it is put back only when the policy says ``<alias>.required``.

A move the worker was told of (a webhook) that another move replaced before the guard looked is recorded as
``superseded``, with its version. MLflow has no compare-and-set for aliases, so a user's move or deletion that
lands between the guard's last read and its undo is overwritten by the undo; its webhook, which comes after
it, tells the guard so (``journal``): that move is judged like any other and, when the policy allows it, put
back and recorded as ``reapplied`` (a refused one is recorded as refused and not put back).

A change of the policy tags is recorded, and every guarded alias is checked again under the new policy (a
loosen-move-tighten sequence ends with the move undone). One alias or model that fails is recorded as an
``error`` entry; the others are checked all the same.

Poll mode calls ``guard_all`` on every pass; the webhook receiver queues the model on an ``AliasGuard``, whose
one thread reconciles one model at a time (so the guard never races itself).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set

from mlflow.exceptions import MlflowException

import mlflow_tfexport.registry.history as history
from mlflow_tfexport.constants import Tag
from mlflow_tfexport.registry import clear_refusal
from mlflow_tfexport.registry.attest import Signer, resolve
from mlflow_tfexport.registry.policy import Policy, decide, read_policy
from mlflow_tfexport.worker.journal import Told, WriteJournal
from mlflow_tfexport.worker.memory import GuardMemory, policy_snapshot

_logger = logging.getLogger(__name__)

RETRIES = 3
RETRY_WAIT_S = 2.0
#: Passes over one model while its aliases keep moving under the guard (each pass re-reads the model).
MAX_ROUNDS = 3
#: Moves remembered per model between two passes (webhook deliveries); older ones are dropped.
MAX_TOLD = 100
MAX_TAG_VALUE_CHARS = 4900


def _stamp(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _policy_tags(tags: Mapping[str, str]) -> Dict[str, str]:
    return {k: v for k, v in tags.items() if k.startswith(Tag.POLICY_PREFIX)}


def _describe_change(old: Mapping[str, str], new: Mapping[str, str]) -> str:
    parts = []
    for key in sorted(set(old) | set(new)):
        if not key:  # the digest
            continue
        if key not in old:
            parts.append(f"{key} added: {new[key][:80]!r}")
        elif key not in new:
            parts.append(f"{key} removed (was {old[key][:80]!r})")
        elif old[key] != new[key]:
            parts.append(f"{key}: {old[key][:80]!r} -> {new[key][:80]!r}")
    if not parts and old.get("") != new.get(""):
        parts.append("policy tags beyond the first ones changed")
    return "policy changed: " + "; ".join(parts)


class _Pass:
    """One reconciliation of one registered model."""

    def __init__(self, client: Any, name: str, via: str, signer: Optional[Signer], memory: GuardMemory,
                 journal: Optional[WriteJournal] = None) -> None:
        self.client, self.name, self.via, self.signer, self.memory = client, name, via, signer, memory
        self.journal = journal if journal is not None else WriteJournal()
        self.recorded: List[history.Entry] = []

    def record(self, entry: history.Entry) -> history.Entry:
        history.record(self.client, self.name, entry, self.signer)
        self.recorded.append(entry)
        return entry

    def accepted_state(self, tags: Mapping[str, str]) -> Dict[str, Optional[str]]:
        """alias -> the version the guard takes as accepted: the signed tag or the memory, the newer one."""
        signed = {a: r for a, r in history.accepted_records(tags, name=self.name, signer=self.signer).items()
                  if r.verified}
        remembered = self.memory.accepted_all(self.name)
        state: Dict[str, Optional[str]] = {}
        for alias in set(signed) | set(remembered):
            tag, mem = signed.get(alias), remembered.get(alias)
            if tag is not None and (mem is None or tag.time >= mem[1]):
                state[alias] = tag.version
                if self.memory.knows(self.name) and (mem is None or mem[0] != tag.version):
                    self.memory.remember(self.name, accepted=(alias, tag.version, tag.time))
            elif mem is not None:
                state[alias] = mem[0]
        return state

    def set_accepted(self, alias: str, version: Optional[str], *, guarded: bool) -> None:
        at = time.time()
        history.set_accepted(self.client, self.name, alias, version, self.signer, at=at)
        self.memory.remember(self.name, accepted=(alias, version, at),
                             safe=(alias, version) if guarded and version is not None else None)

    def run(self, told: Sequence[Told]) -> bool:
        """One round; True when the model is settled (no alias moved under the guard meanwhile)."""
        told = self.journal.not_own(self.name, told)  # the deliveries of the guard's own writes
        model = self.client.get_registered_model(self.name)
        tags = model.tags or {}
        now = {a: str(v) for a, v in (model.aliases or {}).items()}
        known = self.memory.knows(self.name)
        snapshot = policy_snapshot(_policy_tags(tags))
        recheck = False
        if known:
            before_policy = self.memory.policy(self.name) or {}
            if before_policy != snapshot:
                self.record(history.Entry(time.time(), "", None, None, history.POLICY,
                                          _describe_change(before_policy, snapshot), None, self.via))
                self.memory.remember(self.name, policy=snapshot)
                recheck = True
        accepted = self.accepted_state(tags)
        policy = read_policy(tags)
        lost = self.journal.overwritten(self.name, now, told)
        for alias, (t, undo) in sorted(lost.items()):  # a user's move an undo overwrote: through the policy again
            self.journal.forget(self.name, alias)
            self.reapply(alias, t, undo.undid, now.get(alias), accepted.get(alias), policy, tags)
        if lost:
            now = {a: str(v) for a, v in (self.client.get_registered_model(self.name).aliases or {}).items()}
        reapplied = {id(t) for t, _ in lost.values()}
        for t in told:  # moves replaced before the guard looked: recorded with their version
            if id(t) in reapplied:
                continue
            if t.version is not None and now.get(t.alias) != t.version and accepted.get(t.alias) != t.version:
                self.record(history.Entry(
                    time.time(), t.alias, accepted.get(t.alias), t.version, history.SUPERSEDED,
                    f"@{t.alias} was moved to version {t.version}, then moved again before the guard checked it "
                    f"(now {'at version ' + now[t.alias] if t.alias in now else 'removed'})", None, self.via))
        settled = True
        ours = known or any(k.startswith(Tag.PREFIX) for k in tags)
        for alias in sorted(set(now) | {a for a, v in accepted.items() if v is not None}):
            moved = now.get(alias) != accepted.get(alias)
            if not moved and not (recheck and alias in now and policy.rule(alias) is not None):
                continue
            try:
                outcome = self.alias(alias, now.get(alias), accepted.get(alias), policy, tags, recheck=not moved)
            except Exception as exc:  # one alias failing never stops the checks of the others
                _logger.warning("guarding models:/%s@%s failed: %s", self.name, alias, exc)
                with contextlib.suppress(Exception):
                    self.record(history.Entry(time.time(), alias, accepted.get(alias), now.get(alias), history.ERROR,
                                              f"the guard could not check @{alias}: {type(exc).__name__}: {exc}",
                                              None, self.via))
                continue
            ours = ours or outcome != "not ours"
            settled = settled and outcome != "moved again"
        if ours and not known:  # from now on guarded, whatever happens to its tags
            self.memory.remember(self.name, policy=snapshot)
            self.accepted_state(self.client.get_registered_model(self.name).tags or {})  # into the memory
        return settled

    def alias(self, alias: str, now: Optional[str], before: Optional[str], policy: Policy, tags: Mapping[str, str],
              *, recheck: bool) -> str:
        rule = policy.rule(alias)
        if now is None:
            return self.removed(alias, before, rule is not None and rule.required and not policy.errors)
        try:
            version_tags = self.client.get_model_version(self.name, now).tags or {}
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":  # moved again, or deleted, since: a later pass sees it
                return "moved again"
            raise
        if not (self.memory.knows(self.name) or any(k.startswith(Tag.PREFIX) for k in tags)
                or Tag.FORMAT in version_tags):
            return "not ours"  # aliases of other flavors' models are left alone
        decision = decide(self.client, self.name, alias, now, before, signer=self.signer, model_tags=tags)
        if decision.allowed:
            if recheck:  # still fine under the new policy: nothing to record
                if decision.guarded:
                    self.memory.remember(self.name, safe=(alias, now))
                return "unchanged"
            # The alias is not set again here: a user's move or deletion since this pass read it must stand.
            self.set_accepted(alias, now, guarded=decision.guarded)
            clear_refusal(self.client, self.name, now, alias)
            self.record(history.Entry(time.time(), alias, before, now, history.ACCEPTED, decision.reason, None,
                                      self.via))
            _logger.info("models:/%s@%s -> version %s accepted (%s)", self.name, alias, now, decision.reason)
            return "accepted" if self._still(alias, now) else "moved again"
        target = before
        if recheck:  # accepted under a looser policy: back to the last version accepted while guarded
            safe = self.memory.safe(self.name, alias)
            target = None
            if safe is not None and safe != now:
                with contextlib.suppress(MlflowException):
                    if decide(self.client, self.name, alias, safe, None, signer=self.signer, model_tags=tags).allowed:
                        target = safe
        return self.refuse(alias, now, before, target, decision.reason)

    def _still(self, alias: str, version: Optional[str]) -> bool:
        current = (self.client.get_registered_model(self.name).aliases or {}).get(alias)
        return (None if current is None else str(current)) == version

    def refuse(self, alias: str, now: str, before: Optional[str], target: Optional[str], why: str) -> str:
        if not self._still(alias, now):  # moved (or deleted) by a user since this pass read it: not undone
            self.record(history.Entry(time.time(), alias, before, now, history.SUPERSEDED,
                                      f"refused ({why}), but moved again before the guard undid it", None, self.via))
            return "moved again"
        at = time.time()
        plan = f"@{alias} moved back to version {target}" if target is not None else (
            f"@{alias} removed (it pointed nowhere before)" if before is None else
            f"@{alias} removed (no version accepted under the policy in force to go back to)")
        # The record first: a crash between the two leaves the refusal recorded, and the next pass undoes it.
        text = (f"{_stamp(at)}: @{alias} may not point at version {now}: {why}. {plan}. "
                f"Policy: mlflow-tfexport policy {self.name}")
        self.client.set_model_version_tag(self.name, now, history.alias_key(Tag.REFUSED_PREFIX, alias),
                                          text[:MAX_TAG_VALUE_CHARS])
        self.record(history.Entry(at, alias, before, now, history.REFUSED, why, None, self.via, plan))
        checked = time.monotonic()  # a move made after this read may be overwritten below: see ``journal``
        if not self._still(alias, now):  # a user moved or removed it while the refusal was written: theirs stands
            self.record(history.Entry(time.time(), alias, now, None, history.SUPERSEDED,
                                      f"not undone: @{alias} was moved or removed meanwhile", None, self.via))
            return "moved again"
        done = self.restore(alias, target, checked=checked, undid=now)
        if done != plan:
            self.record(history.Entry(time.time(), alias, now, None, history.REMOVED, done, None, self.via))
        _logger.warning("models:/%s@%s -> version %s refused: %s; %s", self.name, alias, now, why, done)
        return "refused"

    def write_alias(self, alias: str, version: Optional[str]) -> None:
        """Point ``alias`` at ``version`` (None: remove it), noted in the journal first as the guard's own."""
        self.journal.expect(self.name, alias, version)
        if version is None:
            self.client.delete_registered_model_alias(self.name, alias)
        else:
            self.client.set_registered_model_alias(self.name, alias, version)

    def restore(self, alias: str, target: Optional[str], *, checked: float, undid: Optional[str]) -> str:
        """Point ``alias`` back at ``target`` (or remove it), having last read it at ``checked``; what was done,
        as words."""
        if target is not None:
            try:
                self.set_accepted(alias, target, guarded=True)
                self.write_alias(alias, target)
                self.journal.undone(self.name, alias, checked_at=checked, wrote=target, undid=undid)
                return f"@{alias} moved back to version {target}"
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                self.write_alias(alias, None)
                self.journal.undone(self.name, alias, checked_at=checked, wrote=None, undid=undid)
                self.set_accepted(alias, None, guarded=True)
                return f"@{alias} removed (version {target}, which held it before, no longer exists)"
        self.write_alias(alias, None)
        self.journal.undone(self.name, alias, checked_at=checked, wrote=None, undid=undid)
        self.set_accepted(alias, None, guarded=True)
        return f"@{alias} removed (it pointed nowhere before)"

    def reapply(self, alias: str, told: Told, undid: Optional[str], current: Optional[str], before: Optional[str],
                policy: Policy, tags: Mapping[str, str]) -> None:
        """A user's move (or deletion) of ``alias`` that the guard's undo overwrote (``journal``): judged like
        any move. Put back when the policy allows it (the rest of the pass then accepts it as any move), else
        recorded as refused, and the alias stays at ``current``, where the undo put it."""
        lost = "removal" if told.version is None else f"move to version {told.version}"
        undone = f"the move to version {undid}" if undid is not None else "the removal"
        how = (f"a user's {lost} of @{alias} was overwritten by the guard's undo of {undone}, made at the same "
               f"moment (the registry has no compare-and-set)")
        stays = f"not put back: @{alias} stays {'at version ' + current if current is not None else 'removed'}"
        if told.version is None:
            rule = policy.rule(alias)
            if rule is not None and rule.required and not policy.errors and current is not None:
                self.record(history.Entry(time.time(), alias, current, None, history.REFUSED,
                                          f"{how}; the policy says it is required ({Tag.POLICY_PREFIX}{alias}"
                                          ".required)", None, self.via, stays))
                return
            if self.write_over(alias, current, None, undid=undid):
                self.record(history.Entry(time.time(), alias, current, None, history.REAPPLIED,
                                          f"{how}; removed again", None, self.via))
            return
        try:
            decision = decide(self.client, self.name, alias, told.version, before, signer=self.signer,
                              model_tags=tags)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            self.record(history.Entry(time.time(), alias, current, told.version, history.SUPERSEDED,
                                      f"{how}; version {told.version} no longer exists", None, self.via, stays))
            return
        if not decision.allowed:
            at = time.time()
            text = (f"{_stamp(at)}: @{alias} may not point at version {told.version}: {decision.reason}. The move "
                    f"was overwritten by the guard at the same moment and is not put back. "
                    f"Policy: mlflow-tfexport policy {self.name}")
            self.client.set_model_version_tag(self.name, told.version, history.alias_key(Tag.REFUSED_PREFIX, alias),
                                              text[:MAX_TAG_VALUE_CHARS])
            self.record(history.Entry(at, alias, current, told.version, history.REFUSED,
                                      f"{decision.reason} ({how})", None, self.via, stays))
            _logger.warning("models:/%s@%s -> version %s (overwritten by an undo) refused: %s", self.name, alias,
                            told.version, decision.reason)
            return
        if not self.write_over(alias, current, told.version, undid=undid):
            return
        self.record(history.Entry(time.time(), alias, current, told.version, history.REAPPLIED,
                                  f"{how}; moved there again, to be checked like any move", None, self.via))
        _logger.info("models:/%s@%s -> version %s put back (overwritten by an undo)", self.name, alias,
                     told.version)

    def write_over(self, alias: str, current: Optional[str], value: Optional[str], *, undid: Optional[str]) -> bool:
        """Write ``value`` over ``alias`` if it still holds ``current``, noted in the journal as an undo (so that a
        user's move this write overwrites is found in turn); False when a user moved it meanwhile (theirs is newer
        than the move it would re-apply, and is checked as any move)."""
        checked = time.monotonic()
        if not self._still(alias, current):
            self.record(history.Entry(time.time(), alias, current, value, history.SUPERSEDED,
                                      f"a user's move of @{alias} overwritten by the guard's undo of "
                                      f"{'version ' + undid if undid is not None else 'a removal'} was not put back: "
                                      f"@{alias} was moved again since", None, self.via))
            return False
        self.write_alias(alias, value)
        self.journal.undone(self.name, alias, checked_at=checked, wrote=value, undid=current)
        return True

    def removed(self, alias: str, before: Optional[str], required: bool) -> str:
        if required and before is not None:
            at = time.time()
            plan = f"@{alias} set back to version {before}"
            why = f"@{alias} was removed, but the policy says it is required ({Tag.POLICY_PREFIX}{alias}.required)"
            self.record(history.Entry(at, alias, before, None, history.REFUSED, why, None, self.via, plan))
            checked = time.monotonic()
            if self._still(alias, None):
                self.restore(alias, before, checked=checked, undid=None)
            return "refused"
        self.set_accepted(alias, None, guarded=False)
        self.record(history.Entry(time.time(), alias, before, None, history.REMOVED, f"@{alias} was removed", None,
                                  self.via))
        _logger.info("models:/%s@%s removed (was version %s); recorded", self.name, alias, before)
        return "removed"


def guard_model(client: Any, name: str, *, via: str, signer: Optional[Signer] = None,
                memory: Optional[GuardMemory] = None, told: Sequence[Told] = (),
                journal: Optional[WriteJournal] = None) -> List[history.Entry]:
    """Reconcile every alias of ``name`` (and its policy) with the guard's state; the recorded entries.

    ``signer``: the worker's (default: this process's secret, if any); ``memory``: the guard's memory (default:
    a fresh one, which knows nothing: only signed tags are then trusted); ``told``: the moves webhooks named,
    in the order received; ``journal``: the guard's own alias writes (default: a fresh one; pass the same one
    to every pass, so that a user's move an undo overwrote is found from its delivery).
    """
    signer = resolve(signer)
    memory = memory if memory is not None else GuardMemory()
    one = _Pass(client, name, via, signer, memory, journal)
    for _ in range(MAX_ROUNDS):
        if one.run(told):
            break
        told = ()
    return one.recorded


def guard_alias(client: Any, name: str, alias: str, *, via: str, signer: Optional[Signer] = None,
                memory: Optional[GuardMemory] = None) -> Optional[history.Entry]:
    """Reconcile the aliases of ``name``; the last entry recorded for ``alias``, or None when it did not change."""
    found = [e for e in guard_model(client, name, via=via, signer=signer, memory=memory) if e.alias == alias]
    return found[-1] if found else None


def _needs_pass(model: Any, signer: Optional[Signer], memory: GuardMemory) -> bool:
    tags = model.tags or {}
    if memory.knows(model.name) and memory.policy(model.name) != policy_snapshot(_policy_tags(tags)):
        return True
    now = {a: str(v) for a, v in (model.aliases or {}).items()}
    accepted = _Pass(None, model.name, "", signer, memory).accepted_state(tags)
    return any(now.get(a) != accepted.get(a) for a in set(now) | {a for a, v in accepted.items() if v})


def changed_aliases(model: Any, signer: Optional[Signer] = None,
                    memory: Optional[GuardMemory] = None) -> List[str]:
    """Aliases of a registered model that differ from their accepted state (new, moved or removed)."""
    memory = memory if memory is not None else GuardMemory()
    now = {a: str(v) for a, v in (model.aliases or {}).items()}
    accepted = _Pass(None, model.name, "", resolve(signer), memory).accepted_state(model.tags or {})
    return sorted(a for a in set(now) | {a for a, v in accepted.items() if v} if now.get(a) != accepted.get(a))


def guard_all(client: Any, *, via: str = "poll", page_size: int = 200, signer: Optional[Signer] = None,
              memory: Optional[GuardMemory] = None, journal: Optional[WriteJournal] = None) -> List[history.Entry]:
    """Reconcile the aliases of every registered model (poll mode, and once when the worker starts)."""
    signer = resolve(signer)
    memory = memory if memory is not None else GuardMemory()
    recorded: List[history.Entry] = []
    token = None
    while True:
        page = client.search_registered_models(max_results=page_size, page_token=token)
        for model in page:
            try:
                if _needs_pass(model, signer, memory):
                    recorded += guard_model(client, model.name, via=via, signer=signer, memory=memory,
                                            journal=journal)
            except Exception as exc:  # one model's trouble does not stop the others
                _logger.warning("guarding the aliases of %r failed: %s", model.name, exc)
        token = getattr(page, "token", None)
        if not token:
            return recorded


class AliasGuard:
    """One background thread reconciling the models that alias webhooks name, one model at a time.

    ``submit(name, alias, version)`` returns at once; a model already waiting is not queued twice (its pass
    reads the latest state anyway), but every move submitted is kept for it (at most ``MAX_TOLD``), so that a
    move replaced before the pass is recorded as superseded, and one that an undo overwrote is found (with the
    guard's ``journal`` of its own writes). A pass that fails (registry unreachable) is tried ``RETRIES`` times.
    """

    def __init__(self, client: Any, *, max_queue: int = 1000, signer: Optional[Signer] = None,
                 memory: Optional[GuardMemory] = None) -> None:
        self.client = client
        self.signer = resolve(signer)
        self.memory = memory if memory is not None else GuardMemory()
        self.journal = WriteJournal()
        self._queue: queue.Queue[Optional[str]] = queue.Queue(maxsize=max_queue)
        self._waiting: Set[str] = set()
        self._told: Dict[str, List[Told]] = {}
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

    def submit(self, name: str, alias: Optional[str] = None, version: Optional[str] = None) -> bool:
        """Queue ``name`` for a pass unless it waits already; False when it did. Raises ``queue.Full``.

        ``alias`` and ``version`` (None: a deletion) are the move the delivery named."""
        self.start()
        with self._lock:
            if alias is not None:
                told = self._told.setdefault(name, [])
                told.append(Told(alias, version))
                del told[:-MAX_TOLD]
            if name in self._waiting:
                return False
            try:
                self._queue.put_nowait(name)
            except queue.Full:
                self._told.pop(name, None)
                raise
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
                    told = self._told.pop(name, [])
                self._pass(name, told)
            finally:
                self._queue.task_done()

    def _pass(self, name: str, told: List[Told]) -> None:
        for attempt in range(1, RETRIES + 1):
            try:
                guard_model(self.client, name, via="webhook", signer=self.signer, memory=self.memory, told=told,
                            journal=self.journal)
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
