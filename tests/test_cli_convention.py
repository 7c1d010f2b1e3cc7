"""One CLI convention: every command takes --tracking-uri/--registry-uri, creates no store, has help; --version."""

from __future__ import annotations

import argparse
import os
from typing import Any, Dict, Iterator, List

import pytest
from mlflow import MlflowClient

from mlflow_tfexport import __version__
from mlflow_tfexport.cli.main import build_parser, main


def _subcommands(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public walk of its subparsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_positional_and_option_has_help() -> None:
    parser = build_parser()
    missing: List[str] = []
    for name, sub in [("mlflow-tfexport", parser), *_subcommands(parser).items()]:
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{name} {c}" for c, p in action.choices.items() if not (p.description or
                            any(a.dest == c and a.help for a in action._choices_actions))]
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"arguments without help text: {missing}"


def test_every_command_takes_the_store_uris() -> None:
    for name, sub in _subcommands(build_parser()).items():
        options = {o for a in sub._actions for o in a.option_strings}
        assert {"--tracking-uri", "--registry-uri"} <= options, name


def test_version(capsys: Any) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"mlflow-tfexport {__version__}"


@pytest.fixture(autouse=True)
def _store_uris_restored() -> Iterator[None]:
    """The CLI points MLflow at the store it was given (process-wide): put back what the session had."""
    import mlflow

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


@pytest.mark.parametrize("argv", [["list", "sentiment"], ["history", "sentiment"], ["promote", "sentiment", "1"],
                                  ["policy", "sentiment"], ["rollback", "sentiment"]])
def test_a_missing_store_is_an_error_and_nothing_is_created(tmp_path: Any, monkeypatch: Any, capsys: Any,
                                                            argv: List[str]) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    import mlflow

    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(None)  # MLflow's default: sqlite:///mlflow.db in the working directory
    mlflow.set_registry_uri(None)  # type: ignore[arg-type]
    try:
        assert main(argv) == 1
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    err = capsys.readouterr().err
    assert "No MLflow store at tracking URI sqlite:" in err and str(tmp_path / "mlflow.db") in err, err
    assert "--tracking-uri" in err
    assert os.listdir(tmp_path) == []  # no mlflow.db, no mlruns/


def test_a_missing_store_named_by_flag_or_environment(tmp_path: Any, monkeypatch: Any, capsys: Any) -> None:
    missing = f"sqlite:///{tmp_path}/elsewhere.db"
    assert main(["list", "sentiment", "--tracking-uri", missing]) == 1
    assert f"tracking URI {missing}" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{tmp_path}/registry.db")
    assert main(["list", "sentiment", "--tracking-uri", f"file://{tmp_path}/mlruns"]) == 1
    assert "tracking URI file://" in capsys.readouterr().err  # checked first
    assert os.listdir(tmp_path) == []


def test_the_flags_point_every_command_at_the_store(tracking_uri: str, tmp_path: Any, monkeypatch: Any,
                                                   capsys: Any) -> None:
    MlflowClient().create_registered_model("sentiment")
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)  # the wrong folder: the flag finds the store
    assert main(["list", "sentiment", "--tracking-uri", tracking_uri]) == 0
    assert "(no versions)" in capsys.readouterr().out
    assert main(["history", "sentiment", "--tracking-uri", tracking_uri, "--registry-uri", tracking_uri]) == 0
    # A name the store does not hold: the error says which store was searched.
    assert main(["list", "nope", "--tracking-uri", tracking_uri]) == 1
    err = capsys.readouterr().err
    assert "nope" in err and f"looked up in the tracking URI {tracking_uri}" in err, err
    assert os.listdir(other) == []


def test_export_stage_lines_say_how_long_each_stage_took(capsys: Any) -> None:
    from mlflow_tfexport.cli.main import StageLines

    lines = StageLines()
    lines("load", "models:/s/1")
    lines("export", "onnx")
    lines("validate", "atol 0.0001; 332 rows from file reviews.csv")
    lines("validate", "332 rows through the source model...")
    lines("log", "model")
    lines.done()
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "[1/5] load: models:/s/1"
    assert err[1].startswith("[2/5] export: onnx   (load took ") and err[1].endswith(" s)")
    assert err[2].startswith("[3/5] validate: atol 0.0001; 332 rows") and "(export took " in err[2]
    assert err[3] == "      332 rows through the source model..."
    assert err[4].startswith("[4/5] log: model   (validate took ")
    assert err[5].startswith("      done   (log took ")
