"""Shared fixtures: a fresh SQLite-backed MLflow registry per test and cached tiny models."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from typing import Any, Callable, Dict, Iterator, Tuple

import mlflow
import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@pytest.fixture(scope="session")
def _empty_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An SQLite file with MLflow's schema and nothing else, created once.

    Creating the schema (the migrations) takes seconds; copying the file takes milliseconds.
    """
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}", registry_uri=f"sqlite:///{path}")
    client.search_experiments()
    client.search_registered_models()
    return str(path)


@contextlib.contextmanager
def registry_in(root: Any, template: str) -> Iterator[str]:
    """A fresh SQLite tracking + registry store in ``root`` (also the working directory), copied from the
    schema-only ``template``; the working directory, the URIs and the environment are restored afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            mp.delenv(var, raising=False)
        shutil.copyfile(template, os.path.join(root, "mlflow.db"))
        uri = f"sqlite:///{root}/mlflow.db"
        previous_tracking = mlflow.get_tracking_uri()
        previous_registry = mlflow.get_registry_uri()
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield uri
        finally:
            while mlflow.active_run() is not None:
                mlflow.end_run()
            mlflow.set_tracking_uri(previous_tracking)
            mlflow.set_registry_uri(previous_registry)


@pytest.fixture
def tracking_uri(tmp_path: Any, _empty_mlflow_db: str) -> Iterator[str]:
    """A fresh registry per test in ``tmp_path`` (artifacts, ``mlruns/``, land there too)."""
    with registry_in(tmp_path, _empty_mlflow_db) as uri:
        yield uri


@pytest.fixture(scope="module")
def module_registry(tmp_path_factory: pytest.TempPathFactory, _empty_mlflow_db: str) -> Iterator[str]:
    """One registry shared by a test module (for modules that export once and check many things)."""
    with registry_in(tmp_path_factory.mktemp("registry"), _empty_mlflow_db) as uri:
        yield uri


@pytest.fixture(scope="session")
def tiny_model() -> Callable[..., Tuple[Any, Any]]:
    """``tiny_model(task, arch="bert")`` -> a cached tiny random ``(model, tokenizer)``.

    The same objects are returned for the same arguments: do not modify them in a test.
    """
    from tiny import tiny

    cache: Dict[Tuple[str, str], Tuple[Any, Any]] = {}

    def get(task: str, arch: str = "bert") -> Tuple[Any, Any]:
        if (task, arch) not in cache:
            cache[(task, arch)] = tiny(task, arch)
        return cache[(task, arch)]

    return get
