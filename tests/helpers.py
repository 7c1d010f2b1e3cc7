"""Helpers shared by the test modules: sample texts and registry look-ups.

Fixtures (registries, tiny models) live in ``conftest.py``; real server processes in ``servers.py``;
tiny random models in ``tiny.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from typing import Any, Callable, Iterator, List, Optional

import mlflow
import pytest
from mlflow import MlflowClient

from mlflow_tfexport.constants import FLAVOR_NAME, MLMODEL_FILE
from mlflow_tfexport.registry import versions_of
from mlflow_tfexport.worker import serve

#: Short English sentences of different lengths, for predictions compared between variants.
TEXTS = [
    "I loved this film, the plot was great.",
    "I hated this movie, the story was dull.",
    "Paris is the capital of France.",
]


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def version_numbers(name: str, client: Optional[MlflowClient] = None) -> List[str]:
    """The version numbers of registered model ``name``, in order (none when it does not exist)."""
    return sorted((str(v.version) for v in versions_of(client or MlflowClient(), name)), key=int)


def versions(name: str, client: Optional[MlflowClient] = None) -> int:
    """How many versions registered model ``name`` has."""
    return len(version_numbers(name, client))


@contextlib.contextmanager
def sqlite_registry(root: Any, template: str) -> Iterator[str]:
    """A real SQLite registry in ``root`` (a copy of the session's empty database ``template``) as the tracking and
    registry URI, with ``root`` as the working folder until the block ends. Yields the URI."""
    shutil.copy(template, os.path.join(str(root), "mlflow.db"))
    uri = f"sqlite:///{root}/mlflow.db"
    previous = os.getcwd()
    os.chdir(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield uri
    finally:
        os.chdir(previous)


def wait_for(predicate: Callable[[], Any], what: str, timeout: float, poll_s: float = 0.2) -> Any:
    """``predicate()``'s first truthy value, polled every ``poll_s``; the test fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@contextlib.contextmanager
def worker_in_thread(**kwargs: Any) -> Iterator[Any]:
    """``mlflow_tfexport.worker.serve(port=0, **kwargs)`` (what ``mlflow-tfexport worker`` runs) on a thread.
    Yields its HTTP server once it listens; shuts it down after the block and checks that the thread ended."""
    servers: List[Any] = []
    ready = threading.Event()

    def on_ready(server: Any) -> None:
        servers.append(server)
        ready.set()

    thread = threading.Thread(target=serve, kwargs=dict(port=0, ready=on_ready, **kwargs), daemon=True)
    thread.start()
    try:
        assert ready.wait(30), "the worker did not start listening within 30 s"
        yield servers[0]
    finally:
        if servers:
            servers[0].shutdown()
        thread.join(30)
    assert not thread.is_alive()


def run_interleaved(threads: List[threading.Thread]) -> None:
    """Start ``threads`` and wait for them, switching between threads every 10 microseconds meanwhile, so
    that calls overlap (a shared setting or buffer is caught in the act); the interval is restored after."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)


def tampered_copy(model_dir: str, root: str, **fields: Any) -> str:
    """A copy of the saved model ``model_dir`` in a new folder under ``root`` whose MLmodel flavor block has
    ``fields`` (what a user with write access to a model folder could change)."""
    import yaml

    path = os.path.join(root, f"copy{len(os.listdir(root))}")
    shutil.copytree(model_dir, path)
    mlmodel = os.path.join(path, MLMODEL_FILE)
    with open(mlmodel) as f:
        doc = yaml.safe_load(f)
    doc["flavors"][FLAVOR_NAME].update(fields)
    with open(mlmodel, "w") as f:
        yaml.safe_dump(doc, f)
    return path
