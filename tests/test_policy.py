"""The promotion policy, the alias history and the alias guard, on a real SQLite registry.

Versions are created with ``MlflowClient.create_model_version`` and the tags an export writes, from a folder that
holds only an ``MLmodel`` file (the policy reads a version's tags and the label map of its MLmodel, nothing
else): a real export is not the point here (``test_promotion_http.py`` promotes a real exported variant).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

import pytest
import yaml
from helpers import wait_for, worker_in_thread
from mlflow import MlflowClient

from mlflow_tfexport.cli.main import main as cli_main
from mlflow_tfexport.constants import FLAVOR_NAME, Tag
from mlflow_tfexport.errors import TfexportError
from mlflow_tfexport.registry import history, policy, promote, rollback
from mlflow_tfexport.registry.policy import AliasRule, Policy, VersionFacts, evaluate, read_policy
from mlflow_tfexport.worker.guard import guard_alias, guard_all

NAME = "guarded"
LABELS = {0: "NEGATIVE", 1: "POSITIVE"}


def variant(client: MlflowClient, tmp: Any, fmt: str = "onnx", *, validation: Optional[str] = "passed",
            task: str = "text-classification", labels: Optional[Dict[int, str]] = None, name: str = NAME,
            mlmodel: bool = True, **extra: str) -> str:
    """A version tagged like an export (``fmt``, ``validation``, ``task``) whose MLmodel holds ``labels``."""
    folder = tmp / f"v-{len(os.listdir(tmp))}"
    folder.mkdir()
    block = {"format": fmt, "task": task, "id2label": labels or LABELS}
    if mlmodel:
        (folder / "MLmodel").write_text(yaml.safe_dump({"flavors": {FLAVOR_NAME: block}}))
    tags = {Tag.FORMAT: fmt, Tag.TASK: task, **extra}
    if validation is not None:
        tags[Tag.VALIDATION] = validation
    try:
        client.get_registered_model(name)
    except Exception:
        client.create_registered_model(name)
    return str(client.create_model_version(name, source=str(folder), tags=tags).version)


SECRET = "policy-test-secret"


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The secret the worker signs its records with, as an operator sets it (docs/trust-model.md)."""
    monkeypatch.setenv("MLFLOW_TFEXPORT_GUARD_SECRET", SECRET)
    monkeypatch.delenv("MLFLOW_TFEXPORT_WEBHOOK_SECRET", raising=False)


@pytest.fixture
def client(tracking_uri: str) -> MlflowClient:
    return MlflowClient()


@pytest.fixture
def folder(tmp_path: Any) -> Any:
    path = tmp_path / "versions"
    path.mkdir()
    return path


def _alias(client: MlflowClient, alias: str = "production", name: str = NAME) -> Optional[str]:
    found = (client.get_registered_model(name).aliases or {}).get(alias)
    return None if found is None else str(found)


# --------------------------------------------------------------------------- the policy as data


def test_default_policy_guards_production_and_needs_a_passed_validation() -> None:
    p = read_policy({})
    assert p.guarded == ("production",) and not p.explicit and not p.errors
    assert p.rule("production") == AliasRule(formats=None, validation=True, real_data=False, min_agreement=None,
                                             same_task=True)
    assert p.rule("staging") is None
    text = p.to_text()
    assert "defaults apply" in text and "production.validation = passed" in text and "guarded = production" in text


def test_policy_tags_are_read_one_setting_per_tag() -> None:
    p = read_policy({
        "tfexport.policy.guarded": "production, staging",
        "tfexport.policy.production.formats": "onnx,TorchScript",
        "tfexport.policy.production.real_data": "yes",
        "tfexport.policy.production.min_agreement": "0.99",
        "tfexport.policy.staging.validation": "any",
        "tfexport.policy.canary.formats": "onnx",  # not guarded: kept, without effect
    })
    assert p.guarded == ("production", "staging") and p.explicit and not p.errors
    assert p.rule("production") == AliasRule(frozenset({"onnx", "torchscript"}), True, True, 0.99, True)
    assert p.rule("staging") == AliasRule(validation=False)
    assert p.unused == ("tfexport.policy.canary.formats",)
    assert read_policy({"tfexport.policy.guarded": "none"}).guarded == ()
    assert read_policy({"tfexport.policy.guarded": ""}).guarded == ()


@pytest.mark.parametrize("tags, mentions", [
    ({"tfexport.policy.production.formats": "onnx,tflite"}, "unknown format 'tflite'"),
    ({"tfexport.policy.production.real_data": "maybe"}, "expected true or false, received 'maybe'"),
    ({"tfexport.policy.production.min_agreement": "1.5"}, "a number from 0 to 1"),
    ({"tfexport.policy.production.validation": "ok"}, "expected 'passed' or 'any'"),
    ({"tfexport.policy.production.formatz": "onnx"}, "unknown setting"),
    ({"tfexport.policy.guarded": "prod@1"}, "is not an alias name"),
])
def test_a_policy_tag_edited_wrong_in_the_ui_refuses_every_promotion(tags: Dict[str, str], mentions: str) -> None:
    p = read_policy(tags)
    assert any(mentions in e for e in p.errors), p.errors
    good = VersionFacts("2", {Tag.FORMAT: "onnx", Tag.VALIDATION: "passed", Tag.TASK: "text-classification"})
    decision = evaluate(p, "production", good, None)
    assert not decision.allowed and "policy cannot be read" in decision.reason and mentions in decision.reason


def _facts(version: str = "2", labels: Any = frozenset(LABELS.values()), **tags: str) -> VersionFacts:
    base = {Tag.FORMAT: "onnx", Tag.VALIDATION: "passed", Tag.TASK: "text-classification"}
    return VersionFacts(version, {**base, **{getattr(Tag, k.upper()): v for k, v in tags.items()}}, labels)


def test_evaluate_lists_every_reason() -> None:
    strict = Policy(("production",), {"production": AliasRule(frozenset({"torchscript"}), True, True, 0.99, True)},
                    explicit=True)
    replaced = _facts("1", task="text-classification")
    bad = _facts("3", validation="failed", task="token-classification", data_rows="0", agreement="0.5",
                 agreement_metric="label_agreement", agreement_threshold="1", data_origin="synthetic only")
    d = evaluate(strict, "production", bad, replaced)
    assert not d.allowed and d.previous == "1" and d.version == "3"
    assert len(d.reasons) == 5, d.reasons
    assert "its format is 'onnx'; the policy allows torchscript for @production" in d.reason
    assert "its validation is 'failed', not 'passed' (label_agreement 0.5, >= 1 required" in d.reason
    assert "not validated on real data" in d.reason and "below the policy's min_agreement 0.99" in d.reason
    assert "its task is 'token-classification', not 'text-classification' like version 1" in d.reason
    # A label set other than the replaced version's.
    d = evaluate(read_policy({}), "production", _facts("3", labels=frozenset({"A", "B"})), replaced)
    assert not d.allowed and "its labels ['A', 'B'] differ from ['NEGATIVE', 'POSITIVE'] of version 1" in d.reason
    # The source version is the reference: no validation to ask of it.
    assert evaluate(read_policy({}), "production", _facts("1", format="transformers", validation="x"), None).allowed
    # An alias that is not guarded takes anything.
    d = evaluate(read_policy({}), "staging", bad, replaced)
    assert d.allowed and not d.guarded and d.reason == "@staging is not guarded"
    # A version that is no tfexport version at all.
    d = evaluate(read_policy({}), "production", VersionFacts("4", {}), None)
    assert not d.allowed and "not a tfexport version" in d.reason


# --------------------------------------------------------------------------- promote, history, rollback


def test_promote_follows_the_policy_and_records_both_outcomes(client: MlflowClient, folder: Any) -> None:
    good = variant(client, folder)
    failed = variant(client, folder, validation="failed")
    torchscript = variant(client, folder, "torchscript")
    promote(NAME, good, "production")
    assert _alias(client) == good
    with pytest.raises(TfexportError, match=r"Refusing to point @production at models:/guarded/2: its validation "
                       r"is 'failed', not 'passed'"):
        promote(NAME, failed, "production")
    policy.set_policy(NAME, ["production.formats=onnx"])
    with pytest.raises(TfexportError, match="its format is 'torchscript'; the policy allows onnx"):
        promote(NAME, torchscript, "production")
    assert _alias(client) == good
    tags = client.get_registered_model(NAME).tags
    assert history.accepted(tags, "production") == good
    rows = [e.row() for e in history.entries(tags)]
    assert [(r["from"], r["to"], r["decision"], r["via"]) for r in rows] == [
        ("-", good, "accepted", "cli"), (good, failed, "refused", "cli"), (good, torchscript, "refused", "cli")
    ]
    assert rows[0]["by"] != "-"  # the OS user (or MLFLOW_TRACKING_USERNAME)


def test_rollback_goes_back_one_step_at_a_time_through_the_policy(client: MlflowClient, folder: Any) -> None:
    v1, v2, v3 = (variant(client, folder) for _ in range(3))
    for v in (v1, v2, v3):
        promote(NAME, v, "production")
    assert rollback(NAME, "production") == (v3, v2)
    assert rollback(NAME, "production") == (v2, v1)  # two steps back, not back and forth
    with pytest.raises(TfexportError, match="pointed nowhere before version 1"):
        rollback(NAME, "production")
    promote(NAME, v3, "production")  # a new step after the rollbacks: back from it goes to v1
    assert rollback(NAME, "production") == (v3, v1)


def test_a_refused_rollback_leaves_the_alias(client: MlflowClient, folder: Any) -> None:
    v1, v2 = variant(client, folder), variant(client, folder)
    promote(NAME, v1, "production")
    promote(NAME, v2, "production")
    client.set_model_version_tag(NAME, v1, Tag.VALIDATION, "failed")
    with pytest.raises(TfexportError, match=r"Refusing to point @production at models:/guarded/1: its validation"):
        rollback(NAME, "production")
    assert _alias(client) == v2
    last = history.entries(client.get_registered_model(NAME).tags)[-1]
    assert (last.decision, last.via, last.to_version) == ("refused", "rollback", v1)


def test_history_keeps_the_most_recent_entries(client: MlflowClient, folder: Any,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(history, "MAX_ENTRIES", 3)
    versions = [variant(client, folder) for _ in range(5)]
    for v in versions:
        promote(NAME, v, "production")
    recorded = history.entries(client.get_registered_model(NAME).tags)
    assert [e.to_version for e in recorded] == versions[-3:]
    # An entry stays under MLflow's registered model tag column (VARCHAR(5000)) whatever the reason says.
    long = history.Entry(1.0, "production", "1", "2", "refused", "x" * 20000)
    assert len(long.to_json()) <= history.MAX_ENTRY_CHARS < 5000
    assert json.loads(long.to_json())["reason"].endswith("...")


# --------------------------------------------------------------------------- the alias guard (no server)


def test_guard_undoes_a_refused_alias_and_recognises_its_own_undo(client: MlflowClient, folder: Any) -> None:
    good = variant(client, folder)
    promote(NAME, good, "production")
    failed = variant(client, folder, validation="failed")
    client.set_registered_model_alias(NAME, "production", failed)  # what the UI does
    entry = guard_alias(client, NAME, "production", via="poll")
    assert entry is not None and entry.decision == "refused"
    assert entry.undone == f"@production moved back to version {good}"
    assert _alias(client) == good
    refusal = client.get_model_version(NAME, failed).tags[Tag.REFUSED_PREFIX + "production"]
    assert f"@production may not point at version {failed}: its validation is 'failed'" in refusal
    assert f"moved back to version {good}" in refusal
    # The undo's own event (the alias set back to the accepted version): recognised, nothing refused again.
    assert guard_alias(client, NAME, "production", via="webhook") is None
    # A good promotion stays, is recorded, and clears an earlier refusal of that version once it passes.
    client.set_model_version_tag(NAME, failed, Tag.VALIDATION, "passed")
    client.set_registered_model_alias(NAME, "production", failed)
    entry = guard_alias(client, NAME, "production", via="poll")
    assert entry is not None and entry.decision == "accepted" and _alias(client) == failed
    assert Tag.REFUSED_PREFIX + "production" not in client.get_model_version(NAME, failed).tags
    # Removing the alias is recorded; aliases that are not guarded are recorded as accepted.
    client.delete_registered_model_alias(NAME, "production")
    client.set_registered_model_alias(NAME, "canary", failed)
    recorded = guard_all(client)
    assert sorted((e.alias, e.decision) for e in recorded) == [("canary", "accepted"), ("production", "removed")]
    assert guard_all(client) == []


def test_guard_removes_a_refused_alias_that_pointed_nowhere_and_leaves_other_models(
    client: MlflowClient, folder: Any
) -> None:
    wrong = variant(client, folder, task="token-classification", validation="failed")
    client.set_registered_model_alias(NAME, "production", wrong)
    entry = guard_alias(client, NAME, "production", via="poll")
    assert entry is not None and entry.undone == "@production removed (it pointed nowhere before)"
    assert _alias(client) is None
    # A model of another flavor (no tfexport tag anywhere) is not this package's to guard.
    client.create_registered_model("other")
    plain = client.create_model_version("other", source=str(folder)).version
    client.set_registered_model_alias("other", "production", plain)
    assert guard_all(client) == [] and _alias(client, name="other") == str(plain)


def test_task_and_labels_must_match_the_replaced_version(client: MlflowClient, folder: Any) -> None:
    first = variant(client, folder)
    promote(NAME, first, "production")
    other_labels = variant(client, folder, labels={0: "neg", 1: "neu", 2: "pos"})
    with pytest.raises(TfexportError, match=r"its labels \['neg', 'neu', 'pos'\] differ"):
        promote(NAME, other_labels, "production")
    # A version whose MLmodel cannot be read: refused with the reason, not a crash.
    unreadable = variant(client, folder, mlmodel=False)
    with pytest.raises(TfexportError, match=rf"the label sets could not be compared \(version {unreadable}: "):
        promote(NAME, unreadable, "production")
    policy.set_policy(NAME, ["production.same_task=false"])
    promote(NAME, other_labels, "production")
    assert _alias(client) == other_labels


# --------------------------------------------------------------------------- the CLI


def test_cli_policy_history_rollback(client: MlflowClient, folder: Any, capsys: pytest.CaptureFixture[str]) -> None:
    v1, v2 = variant(client, folder), variant(client, folder, "torchscript")
    assert cli_main(["policy", NAME]) == 0
    out = capsys.readouterr().out
    assert "Promotion policy of guarded:" in out and "production.formats = any" in out
    assert cli_main(["policy", NAME, "--set", "guarded=production,staging", "--set", "staging.formats=onnx",
                     "--set", "production.min_agreement=0.98"]) == 0
    out = capsys.readouterr().out
    assert "guarded = production,staging" in out and "staging.formats = onnx" in out
    tags = client.get_registered_model(NAME).tags
    assert tags["tfexport.policy.staging.formats"] == "onnx"
    assert tags["tfexport.policy.production.min_agreement"] == "0.98"
    # Wrong values: a clear error, nothing written.
    assert cli_main(["policy", NAME, "--set", "staging.formats=tflite", "--set", "production.real_data=true"]) == 1
    assert "unknown format 'tflite'" in capsys.readouterr().err
    assert "tfexport.policy.production.real_data" not in client.get_registered_model(NAME).tags
    assert cli_main(["policy", NAME, "--set", "canary.formats=onnx"]) == 1
    assert "canary is not a guarded alias" in capsys.readouterr().err
    assert cli_main(["policy", NAME, "--set", "production.colour=red"]) == 1
    assert "unknown setting 'production.colour'" in capsys.readouterr().err
    # An empty value restores the default.
    assert cli_main(["policy", NAME, "--set", "production.min_agreement="]) == 0
    assert "production.min_agreement = none" in capsys.readouterr().out

    assert cli_main(["promote", NAME, v1, "--alias", "staging"]) == 0
    assert cli_main(["promote", NAME, v2, "--alias", "staging"]) == 1
    assert "its format is 'torchscript'; the policy allows onnx for @staging" in capsys.readouterr().err
    assert cli_main(["promote", NAME, v1]) == 0
    assert cli_main(["promote", NAME, v2]) == 0
    capsys.readouterr()
    assert cli_main(["history", NAME, "--alias", "production"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["time", "alias", "from", "to", "decision", "by", "via", "reason"]
    assert len(out.splitlines()) == 4 and "accepted" in out
    assert cli_main(["rollback", NAME, "--alias", "production"]) == 0
    assert f"models:/{NAME}@production: version {v2} -> version {v1}" in capsys.readouterr().out
    assert _alias(client) == v1
    assert cli_main(["rollback", NAME]) == 1
    assert "pointed nowhere before version 1" in capsys.readouterr().err
    assert cli_main(["history", "nobody-here"]) == 1


def test_the_webhook_worker_checks_aliases_moved_while_it_was_down(client: MlflowClient, folder: Any) -> None:


    good, failed = variant(client, folder), variant(client, folder, validation="failed")
    promote(NAME, good, "production")
    client.set_registered_model_alias(NAME, "production", failed)  # while no worker ran
    with worker_in_thread(secret="s"):
        def recorded() -> list:
            return [e for e in history.entries(client.get_registered_model(NAME).tags) if e.via == "start"]

        entries = wait_for(recorded, "the start-up check's history entry", timeout=30)  # written before the undo
        wait_for(lambda: _alias(client) == good, "the undo", timeout=30)
        assert Tag.REFUSED_PREFIX + "production" in client.get_model_version(NAME, failed).tags
        assert [e.decision for e in entries] == ["refused"]
