"""Registry look-ups against a real SQLite registry: names with any character MLflow allows, names that
could not be loaded back as ``models:/`` URIs, URI parsing, listing."""

from __future__ import annotations

from typing import Any

import mlflow
import pytest
from mlflow import MlflowClient

import mlflow_tfexport
from mlflow_tfexport.cli.main import main as cli_main
from mlflow_tfexport.constants import Tag
from mlflow_tfexport.errors import ExportError
from mlflow_tfexport.export import api as exporting
from mlflow_tfexport.registry import (
    ModelsUri,
    check_model_name,
    ensure_registered_model,
    find_by_export_key,
    parse_models_uri,
    variant_rows,
    versions_of,
)

#: Names MLflow accepts whose quoting in a search filter is not trivial.
NAMES = [
    "it's",
    'say "hi"',
    "both ' and \" quotes",
    "100%",
    "a_b",
    "back\\slash",
    "ends with a backslash\\",
    "x' or '1'='1",
    "quote and backslash '\\",
    "backslash quote \\'s",
    "new\nline -- and; more",
    "ünïcødé ✓ 名前",
]
KEY = "0123456789abcdef0123456789abcdef"


def _version(client: MlflowClient, name: str, key: str) -> str:
    """A new version of ``name`` (created if needed) with export key ``key``: no model, just the entry."""
    ensure_registered_model(client, name)
    return str(client.create_model_version(name, "file:///nowhere", tags={Tag.EXPORT_KEY: key}).version)


@pytest.mark.parametrize("name", NAMES)
def test_lookups_find_exactly_the_name(tracking_uri: str, name: str) -> None:
    client = MlflowClient()
    mine = _version(client, name, KEY)
    # Decoys: what a LIKE pattern or a mis-quoted filter would also match, with the same export key.
    for decoy in {name.replace("'", "X").replace('"', "X").replace("\\", "X"), name.upper(), name + "%"} - {name}:
        _version(client, decoy, KEY)
    other = _version(client, name, "f" * 32)
    assert [str(v.version) for v in find_by_export_key(client, name, KEY)] == [mine]
    assert [str(v.version) for v in versions_of(client, name)] == [mine, other]
    assert [r["version"] for r in variant_rows(name)] == [mine, other]


@pytest.mark.integration
def test_export_twice_under_a_name_with_a_quote_is_idempotent(tracking_uri: str, tiny_model: Any,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    model, tok = tiny_model("text-classification")
    with mlflow.start_run():
        mlflow.tfexport.log_model(model, tokenizer=tok, name="model", registered_model_name="src")
    first = mlflow_tfexport.export("models:/src/1", registered_model_name="it's")
    again = mlflow_tfexport.export("models:/src/1", registered_model_name="it's")
    assert first.created and not again.created
    assert str(again.model_version.version) == str(first.model_version.version) == "1"
    assert [str(v.version) for v in versions_of(MlflowClient(), "it's")] == ["1"]
    assert cli_main(["list", "it's"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert len(table) == 3 and table[2].split()[:2] == ["1", "onnx"]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("a@b", "read as an alias"),
        ("what?", "read as a URL query"),
        ("a/b", "MLflow refuses it"),
        ("a:b", "MLflow refuses it"),
        ("", "non-empty string"),
        ("   ", "non-empty string"),
        ("..", "relative path"),
        ("..hidden", "relative path"),
    ],
)
def test_names_that_cannot_be_loaded_back_are_refused_before_any_work(
    tracking_uri: str, tiny_model: Any, monkeypatch: pytest.MonkeyPatch, name: str, reason: str
) -> None:
    model, tok = tiny_model("text-classification")
    with mlflow.start_run():
        mlflow.tfexport.log_model(model, tokenizer=tok, name="model", registered_model_name="src")

    def no_work(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the export started although the name was refused")

    monkeypatch.setattr(exporting, "resolve_source", no_work)
    with pytest.raises(ExportError, match=reason) as info:
        mlflow_tfexport.export("models:/src/1", registered_model_name=name)
    assert repr(name) in str(info.value)
    assert [m.name for m in MlflowClient().search_registered_models()] == ["src"]


def test_check_model_name_suggests_a_loadable_name() -> None:
    with pytest.raises(ExportError, match=r"e\.g\. 'team-sentiment'"):
        check_model_name("team@sentiment")
    check_model_name("it's 100% ünïcødé")  # any other character is fine


@pytest.mark.parametrize(
    ("uri", "parsed"),
    [
        ("models:/sentiment/2", ModelsUri("sentiment", "2")),
        ("models:/sentiment@production", ModelsUri("sentiment", alias="production")),
        ("models:/it's 100%/3", ModelsUri("it's 100%", "3")),
        ("models:/m-0123456789", None),
        ("models:/sentiment/latest", None),
        ("runs:/abc/model", None),
        ("/tmp/model", None),
    ],
)
def test_parse_models_uri(uri: str, parsed: Any) -> None:
    assert parse_models_uri(uri) == parsed
