"""The alias guard cannot be switched off or steered by tags a registry user can write (issue 23).

Each test plays a user with EDIT on the registered model (who may set and delete every ``tfexport.*`` tag and
every alias) against the worker's guard, on a real SQLite registry: the guard runs as the worker runs it
(``guard_all`` each poll pass, with the worker's signer and memory), through ``mlflow-tfexport worker --poll``,
or as the webhook worker at start (``worker_in_thread``). ``test_promotion_http.py`` has the webhook cases
against a real ``mlflow server``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any, Callable, List, Optional, Tuple

import pytest
from helpers import wait_for, worker_in_thread
from mlflow import MlflowClient
from test_policy import NAME, SECRET, _alias, _secret, client, folder, variant  # noqa: F401  (fixtures)

from mlflow_tfexport.cli.main import main as cli_main
from mlflow_tfexport.constants import Tag
from mlflow_tfexport.errors import TfexportError
from mlflow_tfexport.registry import history, promote, rollback
from mlflow_tfexport.registry.attest import Signer, attest_version, validation_state
from mlflow_tfexport.worker.guard import AliasGuard, guard_all, guard_model
from mlflow_tfexport.worker.journal import Told, WriteJournal
from mlflow_tfexport.worker.memory import GuardMemory

LONG_ALIAS = "a" * 240  # legal for MLflow (255 at most); tfexport.accepted.<it> would be 258 characters
SIGNER = Signer(SECRET)


@pytest.fixture
def memory(tmp_path: Any) -> GuardMemory:
    """The worker's memory, kept across passes as a running worker keeps it."""
    return GuardMemory(str(tmp_path / "guard.json"))


def _pass(registry: MlflowClient, memory: GuardMemory) -> List[history.Entry]:
    """One poll pass of the worker's guard."""
    return guard_all(registry, via="poll", signer=SIGNER, memory=memory)


def _entries(registry: MlflowClient, name: str = NAME, **kw: Any) -> List[history.Entry]:
    return history.entries(registry.get_registered_model(name).tags, name=name, signer=SIGNER, **kw)


def _guarded_at_good(client: MlflowClient, folder: Any, memory: GuardMemory) -> tuple[str, str]:  # noqa: F811
    """A model whose @production the worker has accepted at a good variant; and a failed variant."""
    good, failed = variant(client, folder), variant(client, folder, validation="failed")
    client.set_registered_model_alias(NAME, "production", good)
    assert [e.decision for e in _pass(client, memory)] == ["accepted"]
    return good, failed


# ----------------------------------------------------------------------------------- any legal alias name


def test_a_240_character_alias_breaks_nothing_in_poll_mode(client: MlflowClient, folder: Any,  # noqa: F811
                                                           memory: GuardMemory) -> None:
    good, failed = _guarded_at_good(client, folder, memory)
    client.set_registered_model_alias(NAME, LONG_ALIAS, good)  # an unguarded alias: accepted, recorded
    client.set_registered_model_alias(NAME, "production", failed)
    recorded = _pass(client, memory)
    assert _alias(client) == good, "the failed version stayed on @production"
    assert sorted((e.alias == LONG_ALIAS, e.decision) for e in recorded) == [(False, "refused"), (True, "accepted")]
    tags = client.get_registered_model(NAME).tags
    assert max(len(k) for k in tags) <= 250
    assert history.accepted(tags, LONG_ALIAS, name=NAME, signer=SIGNER) == good  # the full name in the value
    assert _pass(client, memory) == []  # settled


def test_a_240_character_alias_breaks_nothing_in_the_cli_poll_worker(client: MlflowClient,  # noqa: F811
                                                                     folder: Any, tracking_uri: str,  # noqa: F811
                                                                     tmp_path: Any) -> None:
    good, failed = variant(client, folder), variant(client, folder, validation="failed")
    promote(NAME, good, "production")
    client.set_registered_model_alias(NAME, LONG_ALIAS, "1")
    client.set_registered_model_alias(NAME, "production", failed)
    args = ["worker", "--poll", "--once", "--tracking-uri", tracking_uri, "--state-dir", str(tmp_path / "state")]
    assert cli_main(args) == 0
    assert _alias(client) == good
    assert Tag.REFUSED_PREFIX + "production" in client.get_model_version(NAME, failed).tags


def test_a_240_character_alias_breaks_nothing_at_restart(client: MlflowClient, folder: Any) -> None:  # noqa: F811
    good, failed = variant(client, folder), variant(client, folder, validation="failed")
    promote(NAME, good, "production")
    client.set_registered_model_alias(NAME, LONG_ALIAS, "1")  # while no worker ran
    client.set_registered_model_alias(NAME, "production", failed)
    with worker_in_thread(secret=SECRET):
        wait_for(lambda: _alias(client) == good, "the start-up check to undo the failed promotion", timeout=30)
        wait_for(lambda: any(e.alias == LONG_ALIAS and e.decision == "accepted" for e in _entries(client)),
                 "the long alias to be recorded", timeout=30)


class _FlakyClient:
    """A real client whose registry calls fail for one version and one model: a registry that errs on some
    entities (a fault injected in front of the real SQLite registry, as a network or a bug would)."""

    def __init__(self, registry: MlflowClient, bad_version: str, bad_model: str) -> None:
        self._client, self._bad_version, self._bad_model = registry, bad_version, bad_model

    def get_model_version(self, name: str, version: str) -> Any:
        if name == NAME and str(version) == self._bad_version:
            raise RuntimeError("the registry dropped the connection")
        return self._client.get_model_version(name, version)

    def get_registered_model(self, name: str) -> Any:
        if name == self._bad_model:
            raise TypeError("a bug in one model's pass")
        return self._client.get_registered_model(name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._client, attr)


def test_one_alias_or_model_failing_does_not_stop_the_others(client: MlflowClient, folder: Any,  # noqa: F811
                                                             memory: GuardMemory) -> None:
    good, failed = _guarded_at_good(client, folder, memory)
    flaky_version = variant(client, folder)
    variant(client, folder, name="aaa-broken")  # sorts before NAME: its failure comes first
    client.set_registered_model_alias("aaa-broken", "production", "1")
    client.set_registered_model_alias(NAME, "canary", flaky_version)  # its check fails
    client.set_registered_model_alias(NAME, "production", failed)
    recorded = guard_all(_FlakyClient(client, flaky_version, "aaa-broken"), signer=SIGNER, memory=memory)  # type: ignore[arg-type]
    assert _alias(client) == good, "one failing alias stopped the check of @production"
    errors = [e for e in _entries(client) if e.decision == "error"]
    assert [e.alias for e in errors] == ["canary"] and "the registry dropped the connection" in errors[0].reason
    assert ("production", "refused") in [(e.alias, e.decision) for e in recorded]


# ----------------------------------------------------------------------------------- forged state


def test_a_forged_accepted_tag_does_not_let_a_failed_version_stay(client: MlflowClient, folder: Any,  # noqa: F811
                                                                  memory: GuardMemory) -> None:
    good, failed = _guarded_at_good(client, folder, memory)
    for forged in (failed, json.dumps({"alias": "production", "version": failed, "time": "9999999999"})):
        client.set_registered_model_tag(NAME, Tag.ACCEPTED_PREFIX + "production", forged)  # set first...
        client.set_registered_model_alias(NAME, "production", failed)  # ... then the move
        _pass(client, memory)
        assert _alias(client) == good, f"the forged accepted state {forged!r} was trusted"
    accepted = history.accepted_records(client.get_registered_model(NAME).tags, name=NAME, signer=SIGNER)
    assert accepted["production"].verified and accepted["production"].version == good


def test_a_forged_passed_validation_is_refused_when_the_policy_asks_for_attested(
    client: MlflowClient, folder: Any, memory: GuardMemory  # noqa: F811
) -> None:
    signed = variant(client, folder)
    attest_version(client, SIGNER, NAME, signed, client.get_model_version(NAME, signed).tags)
    failed = variant(client, folder, validation="failed")
    attest_version(client, SIGNER, NAME, failed, client.get_model_version(NAME, failed).tags)  # signed as failed
    unsigned = variant(client, folder)
    client.set_registered_model_tag(NAME, Tag.POLICY_PREFIX + "production.attested", "true")
    promote(NAME, signed, "production")  # a signed passed validation is accepted under attested=true
    client.set_model_version_tag(NAME, failed, Tag.VALIDATION, "passed")  # the forgery
    assert validation_state(SIGNER, NAME, failed, client.get_model_version(NAME, failed).tags) == "mismatch"
    for bad in (failed, unsigned):
        client.set_registered_model_alias(NAME, "production", bad)
        _pass(client, memory)
        assert _alias(client) == signed
        refusal = client.get_model_version(NAME, bad).tags[Tag.REFUSED_PREFIX + "production"]
        assert "not signed by the worker" in refusal
        assert ("do not match their signature" if bad == failed else "it has no tfexport.attestation") in refusal
    with pytest.raises(TfexportError, match="not signed by the worker"):
        promote(NAME, unsigned, "production")


def test_deleting_the_models_tfexport_tags_does_not_unguard_it(client: MlflowClient, folder: Any,  # noqa: F811
                                                               memory: GuardMemory) -> None:
    good, failed = _guarded_at_good(client, folder, memory)
    client.set_registered_model_tag(NAME, Tag.POLICY_PREFIX + "production.formats", "onnx")
    _pass(client, memory)
    for key in [k for k in client.get_registered_model(NAME).tags if k.startswith(Tag.PREFIX)]:
        client.delete_registered_model_tag(NAME, key)
    client.set_registered_model_alias(NAME, "production", failed)
    _pass(client, memory)
    assert _alias(client) == good, "the failed version was not taken off @production, back to the good one"
    decisions = [(e.decision, e.reason) for e in _entries(client)]
    assert any(d == "policy" and "tfexport.policy.production.formats removed (was 'onnx')" in r
               for d, r in decisions), decisions
    assert any(d == "refused" for d, _ in decisions)


def test_deleting_the_versions_format_tag_does_not_unguard_the_model(client: MlflowClient, folder: Any,  # noqa: F811
                                                                     memory: GuardMemory) -> None:
    good, failed = _guarded_at_good(client, folder, memory)
    client.delete_model_version_tag(NAME, failed, Tag.FORMAT)
    for key in [k for k in client.get_registered_model(NAME).tags if k.startswith(Tag.PREFIX)]:
        client.delete_registered_model_tag(NAME, key)
    client.set_registered_model_alias(NAME, "production", failed)
    _pass(client, memory)
    assert _alias(client) == good
    assert "not a tfexport version" in client.get_model_version(NAME, failed).tags[Tag.REFUSED_PREFIX + "production"]


def test_loosen_move_tighten_ends_with_the_move_undone_and_recorded(client: MlflowClient, folder: Any,  # noqa: F811
                                                                    memory: GuardMemory) -> None:
    good, failed = _guarded_at_good(client, folder, memory)
    client.set_registered_model_tag(NAME, Tag.POLICY_PREFIX + "guarded", "none")
    _pass(client, memory)
    client.set_registered_model_alias(NAME, "production", failed)
    _pass(client, memory)
    assert _alias(client) == failed  # not guarded now: the owner's policy allows it, and it is recorded
    client.delete_registered_model_tag(NAME, Tag.POLICY_PREFIX + "guarded")  # guarded again (the default)
    _pass(client, memory)
    assert _alias(client) == good, "the version accepted under the loosened policy stayed on @production"
    rows = [(e.decision, e.to_version) for e in _entries(client)]
    assert rows == [("accepted", good), ("policy", None), ("accepted", failed), ("policy", None),
                    ("refused", failed)], rows
    reasons = [e.reason for e in _entries(client) if e.decision == "policy"]
    assert "tfexport.policy.guarded added: 'none'" in reasons[0] and "guarded removed" in reasons[1]


# ----------------------------------------------------------------------------------- the history


def test_forged_history_entries_are_unverified_and_pruned_first(client: MlflowClient, folder: Any,  # noqa: F811
                                                                memory: GuardMemory) -> None:
    good, failed = _guarded_at_good(client, folder, memory)
    for i in range(55):
        forged = history.Entry(1.0 + i, "production", good, "1", "accepted", "forged").to_json()
        client.set_registered_model_tag(NAME, f"{Tag.HISTORY_PREFIX}99991231T000000.{i:03d}Z-ffff", forged)
    client.set_registered_model_alias(NAME, "production", failed)
    _pass(client, memory)
    kept = _entries(client)
    genuine = [(e.decision, e.to_version) for e in kept if e.verified]
    assert genuine == [("accepted", good), ("refused", failed)], genuine
    assert len(kept) == history.MAX_ENTRIES
    rows = [e.row()["decision"] for e in kept if not e.verified]
    assert rows and all(r.endswith("(unverified)") for r in rows)


def test_rollback_follows_signed_entries_only(client: MlflowClient, folder: Any) -> None:  # noqa: F811
    v1, v2, v3 = (variant(client, folder) for _ in range(3))
    promote(NAME, v1, "production")
    promote(NAME, v2, "production")
    # Two forged entries that would make v3 the step before v2 (v3 never held the alias).
    for i, (frm, to) in enumerate([(v1, v3), (v3, v2)]):
        text = history.Entry(2e9 + i, "production", frm, to, "accepted", "forged", via="cli").to_json()
        client.set_registered_model_tag(NAME, f"{Tag.HISTORY_PREFIX}99991231T00000{i}.000Z-ffff", text)
    assert rollback(NAME, "production") == (v2, v1)


# ----------------------------------------------------------------------------------- moves and deletions


def test_a_users_deletion_stands_unless_the_policy_says_required(client: MlflowClient, folder: Any,  # noqa: F811
                                                                 memory: GuardMemory) -> None:
    good, _ = _guarded_at_good(client, folder, memory)
    client.delete_registered_model_alias(NAME, "production")
    _pass(client, memory)
    assert _alias(client) is None and _entries(client)[-1].decision == "removed"
    client.set_registered_model_alias(NAME, "production", good)
    client.set_registered_model_tag(NAME, Tag.POLICY_PREFIX + "production.required", "true")
    _pass(client, memory)
    client.delete_registered_model_alias(NAME, "production")
    _pass(client, memory)
    assert _alias(client) == good, "a required alias deleted by a user was not put back"
    last = _entries(client)[-1]
    assert last.decision == "refused" and "required" in last.reason


class _UserAtTheSameMoment:
    """A real client whose first alias write (the guard's undo) is preceded by a user's alias change through the
    same registry: the user's write lands after the guard's last read of the alias and before its undo, the
    window MLflow's aliases (no compare-and-set) leave open. Everything else goes to the real client."""

    def __init__(self, registry: MlflowClient, change: Callable[[], None]) -> None:
        self._client, self._change = registry, change
        self.writes: List[tuple[str, Optional[str]]] = []

    def _user(self) -> None:
        change, self._change = self._change, lambda: None
        change()

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self._user()
        self.writes.append((alias, str(version)))
        self._client.set_registered_model_alias(name, alias, version)

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        self._user()
        self.writes.append((alias, None))
        self._client.delete_registered_model_alias(name, alias)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._client, attr)


@pytest.mark.parametrize("change", ["removes", "moves to a passed version", "moves to a failed version",
                                    "removes a required alias"])
def test_a_users_change_overwritten_by_an_undo_is_judged_again(client: MlflowClient, folder: Any,  # noqa: F811
                                                               memory: GuardMemory, change: str) -> None:
    """The user changes @production at the moment the guard undoes a refused move (after its last read): the
    undo overwrites it. The webhook of that change, which MLflow sends after the change was written, makes the
    guard judge it again: put back when the policy allows it, refused otherwise; never a failed version."""
    good, failed = _guarded_at_good(client, folder, memory)
    other = variant(client, folder, validation="failed" if "failed" in change else "passed")
    if "required" in change:
        client.set_registered_model_tag(NAME, Tag.POLICY_PREFIX + "production.required", "true")
        _pass(client, memory)
    user: Tuple[str, Optional[str]] = ("production", None if "removes" in change else other)

    def users_change() -> None:
        if user[1] is None:
            client.delete_registered_model_alias(NAME, "production")
        else:
            client.set_registered_model_alias(NAME, "production", user[1])

    racing = _UserAtTheSameMoment(client, users_change)
    guard = AliasGuard(racing, signer=SIGNER, memory=memory)
    try:
        client.set_registered_model_alias(NAME, "production", failed)
        guard.submit(NAME, "production", failed)  # the webhook of the refused move
        guard.join()
        assert _alias(client) == good  # the undo overwrote the user's change: all MLflow lets a client do
        before = len(_entries(client))
        # The deliveries that follow, in either order: the user's change, the guard's own undo.
        guard.submit(NAME, *user)
        guard.submit(NAME, "production", good)
        guard.join()
        recorded = [(e.decision, e.to_version) for e in _entries(client)[before:]]
        expected = {"removes": (None, [("reapplied", None), ("removed", None)]),
                    "moves to a passed version": (other, [("reapplied", other), ("accepted", other)]),
                    "moves to a failed version": (good, [("refused", other)]),
                    "removes a required alias": (good, [("refused", None)])}[change]
        assert (_alias(client), recorded) == expected
        failing = {failed} | ({other} if "failed" in change else set())
        assert not [w for w in racing.writes if w[1] in failing], racing.writes  # the guard never wrote one
        if "failed" in change:
            assert Tag.REFUSED_PREFIX + "production" in client.get_model_version(NAME, other).tags
        # The deliveries of the guard's own writes are not taken for a user's: nothing more happens.
        for alias, version in racing.writes[1:]:
            guard.submit(NAME, alias, version)
        guard.join()
        assert len(_entries(client)) == before + len(expected[1]) and _alias(client) == expected[0]
    finally:
        guard.stop(timeout=30)


def test_a_delivery_received_before_the_guards_last_read_is_not_reapplied(
        client: MlflowClient, folder: Any, memory: GuardMemory) -> None:  # noqa: F811
    """A move the guard had seen replaced (its delivery came before the guard's read) is not the user's last
    word: it is recorded as superseded, not put back, even when its delivery is handled after the undo."""
    good, failed = _guarded_at_good(client, folder, memory)
    newer = variant(client, folder)
    journal = WriteJournal()
    client.set_registered_model_alias(NAME, "production", newer)
    early = Told("production", newer)  # received now, handled only after the next pass
    client.set_registered_model_alias(NAME, "production", failed)
    assert [e.decision for e in guard_model(client, NAME, via="webhook", signer=SIGNER, memory=memory,
                                            told=[Told("production", failed)], journal=journal)] == ["refused"]
    recorded = guard_model(client, NAME, via="webhook", signer=SIGNER, memory=memory,
                           told=[early, Told("production", good)], journal=journal)
    assert _alias(client) == good
    assert [(e.decision, e.to_version) for e in recorded] == [("superseded", newer)]


@pytest.mark.integration
def test_the_refusal_is_recorded_before_the_revert(client: MlflowClient, folder: Any,  # noqa: F811
                                                   tracking_uri: str) -> None:
    """kill -9 of the worker between the refusal's record and the revert: the record is there."""
    good, failed = variant(client, folder), variant(client, folder, validation="failed")
    promote(NAME, good, "production")
    client.set_registered_model_alias(NAME, "production", failed)
    script = textwrap.dedent(f"""
        import os, signal
        from mlflow import MlflowClient
        from mlflow_tfexport.worker.guard import guard_all

        def die(*args, **kwargs):  # the worker killed (kill -9) the moment it starts to revert
            os.kill(os.getpid(), signal.SIGKILL)

        MlflowClient.set_registered_model_alias = die
        MlflowClient.delete_registered_model_alias = die
        guard_all(MlflowClient({tracking_uri!r}, {tracking_uri!r}))
    """)
    env = {**os.environ, "MLFLOW_TFEXPORT_GUARD_SECRET": SECRET}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert _alias(client) == failed  # killed before the revert
    assert [(e.decision, e.to_version) for e in _entries(client)][-1] == ("refused", failed)
    assert Tag.REFUSED_PREFIX + "production" in client.get_model_version(NAME, failed).tags
    guard_all(client, signer=SIGNER)  # the next pass (a restarted worker) finishes the job
    assert _alias(client) == good


def test_history_and_accepted_state_are_signed(client: MlflowClient, folder: Any) -> None:  # noqa: F811
    good = variant(client, folder)
    promote(NAME, good, "production")
    tags = client.get_registered_model(NAME).tags
    (entry,) = history.entries(tags, name=NAME, signer=SIGNER)
    assert entry.verified
    assert history.entries(tags, name=NAME, signer=Signer("another secret"))[0].verified is False
    assert history.entries(tags, name="another-model", signer=SIGNER)[0].verified is False  # copied elsewhere
    assert history.accepted(tags, "production", name=NAME, signer=SIGNER) == good
    assert history.accepted(tags, "production", name=NAME, signer=Signer("x")) is None


def test_poll_mode_needs_a_secret(tracking_uri: str, monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MLFLOW_TFEXPORT_GUARD_SECRET", raising=False)
    assert cli_main(["worker", "--poll", "--once", "--tracking-uri", tracking_uri]) == 2
    assert "MLFLOW_TFEXPORT_GUARD_SECRET" in capsys.readouterr().err
