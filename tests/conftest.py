"""Shared fixtures: a fresh SQLite-backed MLflow registry per test and cached tiny models."""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import sys
from typing import Any, Callable, Dict, Iterator, List, Tuple

import mlflow
import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Idle OpenMP threads (torch's intra-op pool, libgomp) sleep at once instead of spinning. Two test workers on two
# cores each run torch on every core: spinning threads took the other worker's cores. Measured on
# test_static_seq2seq + test_vision with `-n 2`: 143 CPU-s and 77 s spinning, 79 CPU-s and 44 s passive. Set before
# torch is imported here (libgomp reads it when loaded); the servers and scripts the tests start inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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
    """``tiny_model(task, arch="bert")`` -> a tiny random ``(model, tokenizer)``, built once per session.

    Each call gets its own deep copy (a few ms; tied weights stay tied): a test that changes its model or
    tokenizer (an export that unties the LM head, a tokenizer setting) cannot change what a later test, on
    the same process in any order, is given.
    """
    from tiny import tiny

    cache: Dict[Tuple[str, str], Tuple[Any, Any]] = {}

    def get(task: str, arch: str = "bert") -> Tuple[Any, Any]:
        if (task, arch) not in cache:
            cache[(task, arch)] = tiny(task, arch)
        return copy.deepcopy(cache[(task, arch)])

    return get


# --------------------------------------------------------------------------- the fast tier (`make test-fast`)

#: ``make test-fast`` sets this: the tests that need no real export and no process of their own.
FAST_TIER = os.environ.get("TFEXPORT_TEST_TIER") == "fast"
INTEGRATION_HINT = (
    "runs in the fast tier (make test-fast) but {what}. Mark the test (or its module) "
    "@pytest.mark.integration, or keep the fast tier in-process."
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: exports a model or starts a process (server, CLI, interpreter): not in the fast tier"
    )
    config.addinivalue_line(
        "markers", "alone: its assertions are about time or CPU: `make test` runs these after the parallel run, "
        "serially, so that no other worker's tests share the cores with them"
    )
    # pytest-xdist registers it too; registered here for runs without xdist (the CI's side virtualenvs).
    config.addinivalue_line("markers", "xdist_group(name): tests that run on the same xdist worker")
    if FAST_TIER:
        _guard_fast_tier()


# --------------------------------------------------------------------------- parallel runs (`make test`: xdist)

#: A test module that sets this to True has no costly module-scoped fixture (each test builds its own model):
#: under ``pytest -n N --dist loadgroup`` its tests are spread over the workers one by one. Every other module
#: runs whole on one worker, so its module-scoped models, registries and servers are built once.
SPREAD = "SPREAD_OVER_WORKERS"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Under ``--dist loadgroup``, group each test with its module (xdist's ``loadfile``) unless the module opts
    out with ``SPREAD_OVER_WORKERS = True`` or the test names its own ``xdist_group``."""
    if not getattr(config.option, "loadgroup", False):  # set on the workers of a --dist loadgroup run
        return
    for item in items:
        module = getattr(item, "module", None)
        if item.get_closest_marker("xdist_group") or getattr(module, SPREAD, False):
            continue
        item.add_marker(pytest.mark.xdist_group(item.path.stem))
    # xdist hands out work units in collection order: the grouped modules (tens of seconds each) first, the spread
    # tests (a few seconds each) last, where they fill the gaps while the last groups finish. In collection order
    # the 164 architecture cells came first and a module group could start on a worker when the others had none
    # left.
    items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)


#: Set while a test item runs (its fixtures' setup and teardown included): the fast tier's guards are armed.
_ARMED = [False]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Any) -> Iterator[None]:
    _ARMED[0] = FAST_TIER
    try:
        yield
    finally:
        _ARMED[0] = False


def _refuse(what: str, original: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if _ARMED[0]:
            pytest.fail(INTEGRATION_HINT.format(what=what), pytrace=True)
        return original(*args, **kwargs)

    return guarded


#: Programs whose start makes a test an integration test: interpreters, servers, our CLI.
_PROGRAMS = ("python", "mlflow", "mlserver", "mlflow-tfexport", "initdb", "pg_ctl", "postgres", "chromium", "moto")


def _guard_fast_tier() -> None:
    """In the fast tier, a real export or a new interpreter or server fails the test at once, naming the marker
    it lacks: the tier stays fast as tests are added, without a list of test names to keep."""
    import subprocess

    import torch

    class GuardedPopen(subprocess.Popen):  # type: ignore[type-arg]
        def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
            argv = [args] if isinstance(args, (str, bytes, os.PathLike)) else list(args)
            program = os.path.basename(str(argv[0]).split()[0]) if argv else ""
            if _ARMED[0] and program.startswith(_PROGRAMS):
                pytest.fail(INTEGRATION_HINT.format(what=f"starts a process: {str(args)[:120]}"), pytrace=True)
            super().__init__(args, *rest, **kwargs)

    subprocess.Popen = GuardedPopen  # type: ignore[misc]
    torch.onnx.export = _refuse("exports to ONNX (torch.onnx.export)", torch.onnx.export)  # type: ignore[assignment]
    torch.jit.trace = _refuse("traces a TorchScript module (torch.jit.trace)", torch.jit.trace)  # type: ignore
    torch.export.export = _refuse("exports a graph (torch.export.export)", torch.export.export)  # type: ignore
