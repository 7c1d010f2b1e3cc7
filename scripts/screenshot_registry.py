#!/usr/bin/env python
"""Screenshots of the MLflow registry UI showing a source version and its ONNX variant.

Starts a real ``mlflow server`` (SQLite + local artifacts, in a temporary
directory, bound to 127.0.0.1), logs a tiny random text-classification model
as version 1, exports it to ONNX (version 2, with its tags and the markdown
validation report as description), points ``@production`` at version 2 with
``mlflow-tfexport promote``, and takes two screenshots with headless Chromium:

- ``registry-model.png``: the registered model page (``/#/models/<name>``),
- ``registry-version.png``: the ONNX version's page (``/#/models/<name>/versions/2``),
  where the description renders.

Usage::

    python scripts/screenshot_registry.py                 # writes docs/img/registry-*.png
    python scripts/screenshot_registry.py --out-dir /tmp/shots --keep-server

Needs Chromium (Debian: ``apt-get install chromium``; ``.ci/apt-packages.sh``) and
the package's export dependencies. Everything it starts is stopped on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "docs", "img")
MODEL_NAME = "sentiment"
WINDOW = (1400, 1000)
STARTUP_TIMEOUT_S = 120.0
# The browser reaches the server (bound to 127.0.0.1 only) under a team-server-like name, mapped to
# 127.0.0.1 inside Chromium alone. That is also what a team sees: on localhost/127.0.0.1 MLflow's UI
# opens its local assistant side panel on the first page load, which would cover a quarter of the page.
UI_HOST = "mlflow.example.com"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Variables that would point a child process at another tracking server or at real cloud storage.
ENV_DROP = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID", "MLFLOW_S3_ENDPOINT_URL")


def find_chromium(explicit: Optional[str] = None) -> Optional[str]:
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else shutil.which(explicit)
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROP}
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    env.update(extra)
    return env


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a process started with ``start_new_session=True`` and every process it started."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(timeout=wait)
            if sig == signal.SIGTERM:
                time.sleep(0.2)  # workers still in the group get the SIGKILL round
        except subprocess.TimeoutExpired:
            continue
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def tail(path: str, n: int = 4000) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


def wait_for_health(url: str, proc: subprocess.Popen[bytes], log_path: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"mlflow server exited with {proc.returncode}:\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"mlflow server did not answer /health in {STARTUP_TIMEOUT_S:.0f} s:\n{tail(log_path)}")
        time.sleep(0.3)


def start_server(workdir: str) -> tuple[subprocess.Popen[bytes], str, str]:
    port = free_port()
    log_path = os.path.join(workdir, "server.log")
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{os.path.join(workdir, 'mlflow.db')}",
        "--artifacts-destination", os.path.join(workdir, "artifacts"),
        "--serve-artifacts",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--allowed-hosts", f"127.0.0.1:{port},localhost:{port},{UI_HOST}:{port}",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=workdir, env=child_env(), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_health(url, proc, log_path)
    except BaseException:
        stop_group(proc)
        raise
    return proc, url, log_path


def populate(url: str, name: str) -> None:
    """Version 1 (source), version 2 (ONNX, validated), @production -> 2; as a user would do it."""
    import mlflow

    sys.path.insert(0, os.path.join(REPO, "tests"))
    from tiny import tiny  # tiny random models, no downloads

    import mlflow_tfexport  # noqa: F401  (makes mlflow.tfexport resolvable)

    os.environ.update(child_env(MLFLOW_TRACKING_URI=url))
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    mlflow.set_experiment("sentiment-training")
    model, tok = tiny("text-classification")
    with mlflow.start_run(run_name="train"):
        mlflow.tfexport.log_model(  # type: ignore[attr-defined]
            model, tokenizer=tok, name="model", registered_model_name=name,
            input_example=["I loved this film, the plot was great."],
        )
    result = mlflow_tfexport.export(f"models:/{name}/1", format="onnx")
    print(f"registered {result.model_uri}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "mlflow_tfexport", "promote", name, str(result.model_version.version),
         "--alias", "production"],
        env=child_env(MLFLOW_TRACKING_URI=url), capture_output=True, text=True, timeout=120,
    )
    if done.returncode != 0:
        raise SystemExit(f"mlflow-tfexport promote failed:\n{done.stdout}\n{done.stderr}")
    print(done.stdout.strip(), flush=True)


def screenshot(chromium: str, url: str, png: str, profile: str, window: Sequence[int] = WINDOW,
               budget_ms: int = 15000) -> None:
    """One headless Chromium run: load ``url``, let the page settle for ``budget_ms`` of virtual time, save."""
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
        f"--window-size={window[0]},{window[1]}", f"--virtual-time-budget={budget_ms}",
        f"--host-resolver-rules=MAP {UI_HOST} 127.0.0.1", f"--screenshot={png}", url,
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"chromium did not finish the screenshot of {url} in 120 s") from None
    finally:
        stop_group(proc)  # chromium's helper processes
    if proc.returncode != 0 or not os.path.isfile(png):
        text = out.decode(errors="replace")[-3000:] if out else ""
        raise SystemExit(f"chromium failed ({proc.returncode}) on {url}:\n{text}")


def take_screenshots(chromium: str, url: str, name: str, out_dir: str) -> List[str]:
    """The registered model page and the ONNX version's page, each in a fresh browser profile."""
    ui = url.replace("127.0.0.1", UI_HOST)
    pngs = []
    for page, file in ((f"/#/models/{name}", "registry-model.png"),
                       (f"/#/models/{name}/versions/2", "registry-version.png")):
        png = os.path.join(out_dir, file)
        profile = tempfile.mkdtemp(prefix="tfexport-chromium-")
        try:
            screenshot(chromium, ui + page, png, profile)
        finally:
            shutil.rmtree(profile, ignore_errors=True)
        shrink(png)
        print(f"wrote {png} ({os.path.getsize(png) // 1024} KB)", flush=True)
        pngs.append(png)
    return pngs


def shrink(png: str) -> None:
    """Re-encode with a 256-colour palette when Pillow is there (UI screenshots lose nothing visible)."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(png) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(png, optimize=True)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--out-dir", default=DEFAULT_OUT, help="where the PNGs go (default: docs/img)")
    parser.add_argument("--name", default=MODEL_NAME, help="registered model name")
    parser.add_argument("--chromium", default=None, help="Chromium executable (default: found on PATH)")
    parser.add_argument("--keep-server", action="store_true", help="leave the server running until Ctrl-C")
    args = parser.parse_args(argv)

    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("error: Chromium not found; on Debian: apt-get install --no-install-recommends chromium",
              file=sys.stderr)
        return 2
    os.makedirs(args.out_dir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="tfexport-ui-")
    proc, url, log_path = start_server(workdir)
    try:
        print(f"mlflow server at {url} (log: {log_path})", flush=True)
        populate(url, args.name)
        take_screenshots(chromium, url, args.name, args.out_dir)
        if args.keep_server:
            print(f"serving the UI at {url}; Ctrl-C stops it", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                proc.wait()
    finally:
        stop_group(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
