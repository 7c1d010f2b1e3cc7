"""Real server processes for tests: ``mlflow models serve`` and friends, always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ContextManager, Dict, Iterator, List, Mapping, Optional, Sequence, TypeVar

import requests

STARTUP_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a process and everything it started (its own process group)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: str, n: int = 4000) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


@contextlib.contextmanager
def running(
    cmd: Sequence[str], *, ready_url: str, log_path: str, env: Optional[Dict[str, str]] = None,
    cwd: Optional[str] = None, timeout: float = STARTUP_TIMEOUT_S,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``cmd`` in its own session, wait until ``ready_url`` answers 200, stop it on exit."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            list(cmd), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[:4]} exited with {proc.returncode}:\n{tail(log_path)}")
            try:
                if requests.get(ready_url, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd[:4]} did not answer {ready_url} in {timeout:.0f} s:\n{tail(log_path)}")
            time.sleep(0.5)
        yield proc
    finally:
        stop(proc)


T = TypeVar("T")


@contextlib.contextmanager
def all_at_once(contexts: Mapping[str, ContextManager[T]]) -> Iterator[Dict[str, T]]:
    """Enter several server contexts in threads, so that their starts (each mostly one core importing) overlap;
    exit every one that started, also when another failed to."""
    with contextlib.ExitStack() as stack:
        with ThreadPoolExecutor(max_workers=max(1, len(contexts))) as pool:
            futures = {name: pool.submit(context.__enter__) for name, context in contexts.items()}
        entered: Dict[str, T] = {}
        errors: List[BaseException] = []
        for name, future in futures.items():
            error = future.exception()
            if error is None:
                entered[name] = future.result()
                stack.push(contexts[name].__exit__)
            else:
                errors.append(error)
        if errors:
            raise errors[0]
        yield entered


class ScoringServer:
    """A running ``mlflow models serve`` process."""

    def __init__(self, url: str, log_path: str, pid: Optional[int] = None) -> None:
        self.url = url
        self.log_path = log_path
        #: The server's process id, and its session id: the server's process tree (workers) shares it.
        self.pid = pid

    def invoke(self, payload: Dict[str, Any]) -> requests.Response:
        return requests.post(f"{self.url}/invocations", json=payload, timeout=60)

    def log(self) -> str:
        return tail(self.log_path)


@contextlib.contextmanager
def models_serve(
    model_uri: str, tracking_uri: str, workdir: str, *, env_manager: str = "local",
    extra_env: Optional[Dict[str, str]] = None, timeout: float = STARTUP_TIMEOUT_S, workers: int = 1,
) -> Iterator[ScoringServer]:
    """``mlflow models serve -m MODEL_URI --workers N`` on a free loopback port."""
    port = free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_REGISTRY_URI=tracking_uri, **(extra_env or {}))
    env.pop("MLFLOW_RUN_ID", None)
    cmd: List[str] = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", env_manager,
        "-p", str(port), "--host", "127.0.0.1", "--workers", str(workers),
    ]
    url = f"http://127.0.0.1:{port}"
    log_path = os.path.join(workdir, f"serve-{port}.log")
    with running(cmd, ready_url=f"{url}/ping", log_path=log_path, env=env, cwd=workdir, timeout=timeout) as proc:
        yield ScoringServer(url, log_path, proc.pid)
