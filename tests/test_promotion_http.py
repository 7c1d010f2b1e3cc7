"""Aliases moved in the registry UI are guarded: a real ``mlflow server`` delivers ``model_version_alias.*``
webhooks to the worker, and aliases are set through the REST call the UI makes
(``POST /api/2.0/mlflow/registered-models/alias``).

One server for the module (``test_worker``'s fixture); the promoted good variant is a real ONNX export of a tiny
model, the refused ones are versions of the same logged model with the tags of a failed or other-format export.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest
import requests
from helpers import wait_for
from mlflow import MlflowClient
from test_worker import SECRET, _log_source, mlflow_server, remote  # noqa: F401  (fixtures)

import mlflow_tfexport
import mlflow_tfexport.registry.history as history
from mlflow_tfexport import worker as wk
from mlflow_tfexport.cli.main import main as cli_main
from mlflow_tfexport.constants import Tag
from mlflow_tfexport.registry.attest import Signer, validation_state

pytestmark = pytest.mark.slow

BACK_WITHIN_S = 30.0  # "comes back within seconds": the bound a test waits, not a measured target
ALIAS_API = "/api/2.0/mlflow/registered-models/alias"


class Guarded:
    def __init__(self, client: MlflowClient, url: str, guard: wk.AliasGuard, worker_url: str) -> None:
        self.client, self.url, self.guard, self.worker_url = client, url, guard, worker_url


@pytest.fixture
def guarded(remote: str) -> Iterator[Guarded]:  # noqa: F811
    """The worker on loopback, registered for its three events on the module's server."""
    client = MlflowClient(remote, remote)
    jobs = wk.ExportWorker(client).start()
    guard = wk.AliasGuard(client).start()
    server = wk.make_server(wk.WebhookReceiver(jobs, wk.SignatureVerifier(SECRET), guard), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    worker_url = f"http://127.0.0.1:{server.server_address[1]}/webhook"
    hook = client.create_webhook(name=f"tfexport-guard-{uuid.uuid4().hex[:8]}", url=worker_url,
                                 events=list(wk.EVENTS), secret=SECRET)
    try:
        time.sleep(1.5)  # the server caches its webhook list for MLFLOW_WEBHOOK_CACHE_TTL (1 s here)
        yield Guarded(client, remote, guard, worker_url)
    finally:
        client.delete_webhook(hook.webhook_id)
        time.sleep(1.5)
        server.shutdown()
        server.server_close()
        guard.stop(timeout=30)
        jobs.stop(timeout=30)


def _set_alias_as_the_ui_does(url: str, name: str, alias: str, version: str) -> None:
    r = requests.post(url + ALIAS_API, json={"name": name, "alias": alias, "version": version}, timeout=30)
    assert r.status_code == 200, r.text


def _alias(client: MlflowClient, name: str, alias: str = "production") -> Optional[str]:
    found = (client.get_registered_model(name).aliases or {}).get(alias)
    return None if found is None else str(found)


def _wait_for(predicate: Callable[[], Any], what: str, timeout: float = BACK_WITHIN_S) -> Any:
    return wait_for(predicate, what, timeout)


def _entries(client: MlflowClient, name: str) -> List[history.Entry]:
    return history.entries(client.get_registered_model(name).tags or {})


def _copy_of(client: MlflowClient, name: str, version: str, **changed: str) -> str:
    """Another version of the same logged model, with the tags of ``version`` changed (a failed or other-format
    variant as the registry shows it)."""
    mv = client.get_model_version(name, version)
    tags = {**mv.tags, **{getattr(Tag, k.upper()): v for k, v in changed.items()}}
    return str(client.create_model_version(name, source=mv.source, tags=tags, run_id=mv.run_id,
                                           model_id=mv.model_id or mv.source.rpartition("/")[2]).version)


def _settled(guard: wk.AliasGuard) -> None:
    """Let the webhooks still in flight (the guard's own undo) arrive and be handled."""
    time.sleep(2.0)
    guard.join()


def test_promotions_in_the_ui_are_guarded_and_recorded(guarded: Guarded, tiny_model: Any,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    client, url = guarded.client, guarded.url
    name = _log_source(tiny_model, "ui-guarded")
    good = str(mlflow_tfexport.export(f"models:/{name}/1", format="onnx").model_version.version)
    assert client.get_model_version(name, good).tags[Tag.VALIDATION] == "passed"
    # Exported with the worker's secret in the environment: its validation is signed (attested=true accepts it).
    assert validation_state(Signer(SECRET), name, good, client.get_model_version(name, good).tags) == "signed"

    # A good promotion stays, and is recorded.
    _set_alias_as_the_ui_does(url, name, "production", good)
    (entry,) = _wait_for(lambda: _entries(client, name), "the promotion to be accepted and recorded")
    assert (entry.decision, entry.from_version, entry.to_version, entry.via) == ("accepted", None, good, "webhook")

    # Onto a variant whose validation failed: back to the previous version within seconds, the refusal on it.
    failed = _copy_of(client, name, good, validation="failed", agreement_metric="label_agreement", agreement="0.5",
                      agreement_threshold="1", data_rows="332", data_origin="file reviews.csv")
    started = time.monotonic()
    _set_alias_as_the_ui_does(url, name, "production", failed)
    refusal = _wait_for(lambda: _alias(client, name) == good and client.get_model_version(name, failed).tags.get(
        Tag.REFUSED_PREFIX + "production"), "the refused promotion to be undone")
    assert history.accepted(client.get_registered_model(name).tags, "production") == good
    with capsys.disabled():  # the figure the README quotes (pytest -s shows it)
        print(f"\nrefused promotion undone {time.monotonic() - started:.2f} s after the UI's REST call")
    assert f"@production may not point at version {failed}: its validation is 'failed', not 'passed' " \
           "(label_agreement 0.5, >= 1 required, on 332 rows from file reviews.csv)" in refusal
    assert f"@production moved back to version {good}" in refusal
    _settled(guarded.guard)  # the undo's own webhook: recognised, not refused again, no loop
    assert _alias(client, name) == good
    entries = _entries(client, name)
    assert [(e.decision, e.from_version, e.to_version) for e in entries] == [
        ("accepted", None, good), ("refused", good, failed)
    ]
    assert entries[-1].undone == f"@production moved back to version {good}" and entries[-1].by is None

    # Onto a format the policy does not allow for production.
    assert cli_main(["policy", name, "--set", "production.formats=onnx"]) == 0
    torchscript = _copy_of(client, name, good, format="torchscript")
    _set_alias_as_the_ui_does(url, name, "production", torchscript)
    refusal = _wait_for(lambda: client.get_model_version(name, torchscript).tags.get(Tag.REFUSED_PREFIX + "production"),
                        "the wrong-format promotion to be refused")
    assert "its format is 'torchscript'; the policy allows onnx for @production" in refusal
    _wait_for(lambda: _alias(client, name) == good, "the alias to come back")

    # Removing the alias is recorded; history and rollback from the command line.
    r = requests.delete(url + ALIAS_API, json={"name": name, "alias": "production"}, timeout=30)
    assert r.status_code == 200, r.text
    _wait_for(lambda: _entries(client, name)[-1].decision == "removed", "the removal to be recorded")
    _settled(guarded.guard)
    capsys.readouterr()
    assert cli_main(["history", name]) == 0
    out = capsys.readouterr().out
    decisions = [line.split()[6] for line in out.splitlines()[2:]]
    assert decisions == ["accepted", "refused", "policy", "refused", "removed"], out  # the policy change too
    assert cli_main(["policy", name, "--set", "production.formats="]) == 0  # back to any format
    assert cli_main(["promote", name, "1"]) == 0  # the source version, by the CLI, through the same policy
    assert cli_main(["promote", name, good]) == 0
    _settled(guarded.guard)  # their webhooks find the promotions accepted already: nothing recorded twice
    assert cli_main(["rollback", name]) == 0
    assert f"version {good} -> version 1" in capsys.readouterr().out
    _settled(guarded.guard)
    assert _alias(client, name) == "1"
    assert [(e.decision, e.via) for e in _entries(client, name) if e.decision != "policy"][-3:] == [
        ("accepted", "cli"), ("accepted", "cli"), ("accepted", "rollback")
    ]


def test_a_refused_first_promotion_removes_the_alias(guarded: Guarded, tiny_model: Any) -> None:
    client = guarded.client
    name = _log_source(tiny_model, "ui-first")
    failed = _copy_of(client, name, "1", format="onnx", validation="failed")
    _set_alias_as_the_ui_does(guarded.url, name, "production", failed)
    refusal = _wait_for(lambda: client.get_model_version(name, failed).tags.get(Tag.REFUSED_PREFIX + "production"),
                        "the refusal")
    assert "@production removed (it pointed nowhere before)" in refusal
    _wait_for(lambda: _alias(client, name) is None, "the alias to be removed (after the refusal is recorded)")
    _settled(guarded.guard)
    assert [e.decision for e in _entries(client, name)] == ["refused"]


def _alias_delivery(name: str, version: str) -> bytes:
    return json.dumps({"entity": "model_version_alias", "action": "created", "timestamp": "2026-01-01T00:00:00",
                       "data": {"name": name, "alias": "production", "version": version}}).encode()


def test_forged_alias_webhooks_are_refused(guarded: Guarded, tiny_model: Any) -> None:
    client = guarded.client
    name = _log_source(tiny_model, "ui-forged")
    body = _alias_delivery(name, "1")
    forged = wk.signed_headers("not-the-secret", body, delivery_id=uuid.uuid4().hex)
    r = requests.post(guarded.worker_url, data=body, headers=forged, timeout=30)
    assert r.status_code == 403 and "forged delivery" in r.json()["error"]
    r = requests.post(guarded.worker_url, data=body, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 401 and "unsigned delivery" in r.json()["error"]
    signed = wk.signed_headers(SECRET, body, delivery_id=uuid.uuid4().hex)
    r = requests.post(guarded.worker_url, data=body, headers=signed, timeout=30)
    assert r.status_code in (200, 202) and r.json()["status"] in ("queued", "already queued")
    bad = json.dumps({"entity": "model_version_alias", "action": "created", "data": {"name": name}}).encode()
    r = requests.post(guarded.worker_url, data=bad, timeout=30,
                      headers=wk.signed_headers(SECRET, bad, delivery_id=uuid.uuid4().hex))
    assert r.status_code == 400 and "data.alias is missing" in r.json()["error"]
    guarded.guard.join()
    # The signed one found nothing changed (no alias was set); the move it told of is recorded as superseded.
    assert [(e.decision, e.to_version) for e in _entries(client, name)] == [("superseded", "1")]
    assert _alias(client, name) is None


def test_poll_mode_guards_aliases_too(remote: str, tiny_model: Any) -> None:  # noqa: F811
    client = MlflowClient(remote, remote)
    name = _log_source(tiny_model, "poll-guarded")
    good = _copy_of(client, name, "1", format="onnx", validation="passed")
    failed = _copy_of(client, name, "1", format="onnx", validation="failed")
    _set_alias_as_the_ui_does(remote, name, "production", good)
    assert cli_main(["worker", "--poll", "--once", "--tracking-uri", remote]) == 0
    assert history.accepted(client.get_registered_model(name).tags, "production") == good
    _set_alias_as_the_ui_does(remote, name, "production", failed)
    assert cli_main(["worker", "--poll", "--once", "--tracking-uri", remote]) == 0
    assert _alias(client, name) == good
    refusal = client.get_model_version(name, failed).tags[Tag.REFUSED_PREFIX + "production"]
    assert "its validation is 'failed'" in refusal
    assert cli_main(["worker", "--poll", "--once", "--tracking-uri", remote]) == 0  # nothing more to do
    assert [(e.decision, e.via) for e in _entries(client, name)] == [("accepted", "poll"), ("refused", "poll")]


# ----------------------------------------------------------------------------------- issue 23: untrusted tags


def _settle(client: MlflowClient, name: str, guard: wk.AliasGuard, *, quiet_s: float = 3.0) -> None:
    """Wait until no webhook is in flight and the history stops growing."""
    seen = -1
    while True:
        _settled(guard)
        count = len(_entries(client, name))
        if count == seen:
            return
        seen = count
        time.sleep(quiet_s)


def _good_on_production(guarded: Guarded, tiny_model: Any, name: str) -> Tuple[MlflowClient, str, str, str]:
    """A logged source ``name`` with a passed and a failed ONNX copy; the passed one moved to ``@production`` as
    the UI does, and its promotion recorded (the accepted one). Returns (client, name, good, failed)."""
    client = guarded.client
    name = _log_source(tiny_model, name)
    good = _copy_of(client, name, "1", format="onnx", validation="passed")
    failed = _copy_of(client, name, "1", format="onnx", validation="failed")
    _set_alias_as_the_ui_does(guarded.url, name, "production", good)
    _wait_for(lambda: _entries(client, name), "the first promotion to be recorded")
    return client, name, good, failed


def test_a_240_character_alias_over_webhooks_breaks_nothing(guarded: Guarded, tiny_model: Any) -> None:
    client, name, good, failed = _good_on_production(guarded, tiny_model, "ui-long-alias")
    _set_alias_as_the_ui_does(guarded.url, name, "a" * 240, "1")  # unguarded: accepted and recorded
    _set_alias_as_the_ui_does(guarded.url, name, "production", failed)
    _wait_for(lambda: client.get_model_version(name, failed).tags.get(Tag.REFUSED_PREFIX + "production"),
              "the failed promotion to be refused")
    _settle(client, name, guarded.guard)
    assert _alias(client, name) == good
    assert ("a" * 240, "accepted") in [(e.alias, e.decision) for e in _entries(client, name)]


def test_moves_a_fraction_of_a_second_apart_are_all_recorded(guarded: Guarded, tiny_model: Any) -> None:
    client = guarded.client
    name = _log_source(tiny_model, "ui-quick-moves")
    good = _copy_of(client, name, "1", format="onnx", validation="passed")
    failed = _copy_of(client, name, "1", format="onnx", validation="failed")
    newer = _copy_of(client, name, "1", format="onnx", validation="passed")  # before any move: no webhook in flight
    _set_alias_as_the_ui_does(guarded.url, name, "production", good)
    _wait_for(lambda: _entries(client, name), "the first promotion to be recorded")
    _set_alias_as_the_ui_does(guarded.url, name, "production", failed)
    time.sleep(0.15)
    _set_alias_as_the_ui_does(guarded.url, name, "production", newer)  # a legitimate move right after
    _wait_for(lambda: newer in [e.to_version for e in _entries(client, name)], "the second move to be recorded")
    _settle(client, name, guarded.guard)
    assert _alias(client, name) == newer, "the legitimate move was lost"
    recorded = {e.to_version: e.decision for e in _entries(client, name)}
    assert recorded.get(failed) in ("refused", "superseded"), recorded  # recorded, with its version
    assert recorded[newer] == "accepted"


def test_a_deletion_right_after_a_refused_move_is_not_undone(guarded: Guarded, tiny_model: Any) -> None:
    client, name, good, failed = _good_on_production(guarded, tiny_model, "ui-quick-delete")
    _set_alias_as_the_ui_does(guarded.url, name, "production", failed)
    time.sleep(0.15)
    r = requests.delete(guarded.url + ALIAS_API, json={"name": name, "alias": "production"}, timeout=30)
    assert r.status_code == 200, r.text
    _wait_for(lambda: failed in [e.to_version for e in _entries(client, name)], "the failed move to be recorded")
    _settle(client, name, guarded.guard)
    assert _alias(client, name) is None, "the user's deletion was undone"
    decisions = [e.decision for e in _entries(client, name)]
    assert decisions[0] == "accepted" and ("removed" in decisions or "superseded" in decisions), decisions
