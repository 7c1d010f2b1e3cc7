#!/usr/bin/env python
"""Screenshots of the MLflow registry UI showing a source version and its ONNX variant.

Starts a real ``mlflow server`` (SQLite + local artifacts, in a temporary
directory, bound to 127.0.0.1), logs a tiny random text-classification model
as version 1, exports it to ONNX (version 2, with its tags and the markdown
validation report as description), points ``@production`` at version 2 with
``mlflow-tfexport promote``, and takes screenshots with headless Chromium:

- ``registry-model.png``: the registered model page (``/#/models/<name>``),
- ``registry-version.png``: the ONNX version's page (``/#/models/<name>/versions/2``),
  where the description renders,
- ``registry-version-schema.png`` (and its text, ``registry-version-schema.txt``): the same page,
  1400x2400, with the schema's Inputs and Outputs rows opened (Chromium driven over its
  DevTools pipe); the model is logged the default way (one unnamed string input).

Usage::

    python scripts/screenshot_registry.py                 # writes docs/img/registry-*.png
    python scripts/screenshot_registry.py --out-dir /tmp/shots --keep-server

Needs Chromium (Debian: ``apt-get install chromium``; ``.ci/apt-packages.sh``) and
the package's export dependencies. Everything it starts is stopped on exit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
from typing import Any, Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "docs", "img")
MODEL_NAME = "sentiment"
WINDOW = (1400, 1000)
SCHEMA_PAGE_HEIGHT = 2400  # the version page down to its schema (inputs, outputs, params)
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
        # No background job workers (MLflow's huey consumers): the screenshots use none, and they cost seconds of CPU.
        env = child_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
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
            input_example=["I loved this film, the plot was great."],  # the default signature: one string input
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


class DevTools:
    """Chromium driven over ``--remote-debugging-pipe`` (the DevTools protocol on fds 3 and 4; no extra package)."""

    def __init__(self, chromium: str, profile: str) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def _fds() -> None:
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-pipe",
             f"--host-resolver-rules=MAP {UI_HOST} 127.0.0.1", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=_fds, start_new_session=True, close_fds=False,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._id = 0
        self.session: Optional[str] = None

    def call(self, method: str, **params: Any) -> Dict[str, Any]:
        self._id += 1
        message: Dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise SystemExit(f"chromium closed the DevTools pipe during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise SystemExit(f"DevTools {method}: {reply['error']}")
                return dict(reply.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def close(self) -> None:
        for fd in (self._to_chrome, self._from_chrome):
            with contextlib.suppress(OSError):
                os.close(fd)
        stop_group(self.proc)


#: Clicks the schema table's collapsed rows ("Inputs (2)", "Outputs (2)", "Params (2)") open.
_EXPAND = """(() => { let n = 0;
  const re = /^(Inputs|Outputs|Params|Parameters) \\(\\d+\\)$/;
  const hit = (el) => re.test((el.textContent || '').trim());
  for (const el of document.querySelectorAll('button, [role=button], span, div, td')) {
    if (hit(el) && ![...el.children].some(hit)) { el.click(); n++; }  // the innermost element only
  }
  return n; })()"""


def take_schema_page(chromium: str, url: str, name: str, out_dir: str, timeout_s: float = 90.0) -> List[str]:
    """The ONNX version's page with its schema rows opened: a screenshot and the page's text."""
    import base64

    ui = url.replace("127.0.0.1", UI_HOST) + f"/#/models/{name}/versions/2"
    png = os.path.join(out_dir, "registry-version-schema.png")
    text_file = os.path.join(out_dir, "registry-version-schema.txt")
    profile = tempfile.mkdtemp(prefix="tfexport-chromium-")
    tools = DevTools(chromium, profile)
    try:
        target = tools.call("Target.createTarget", url="about:blank")["targetId"]
        tools.session = tools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        tools.call("Emulation.setDeviceMetricsOverride", width=WINDOW[0], height=SCHEMA_PAGE_HEIGHT,
                   deviceScaleFactor=1, mobile=False)
        tools.call("Page.navigate", url=ui)
        deadline = time.monotonic() + timeout_s
        while not tools.evaluate("document.body && document.body.innerText.includes('Outputs (')"):
            if time.monotonic() > deadline:
                raise SystemExit(f"the schema section of {ui} did not appear in {timeout_s:.0f} s")
            time.sleep(0.5)
        opened = 0
        for _ in range(6):  # expanders may render late; a click toggles, so stop once the rows show
            opened += int(tools.evaluate(_EXPAND) or 0)
            time.sleep(1.0)
            if tools.evaluate("document.body.innerText.includes('score (required)')"):
                break
        time.sleep(1.0)
        text = str(tools.evaluate("document.body.innerText"))
        data = tools.call("Page.captureScreenshot", format="png")["data"]
    finally:
        tools.close()
        shutil.rmtree(profile, ignore_errors=True)
    with open(png, "wb") as f:
        f.write(base64.b64decode(data))
    with open(text_file, "w") as f:
        f.write(text)
    shrink(png)
    for path in (png, text_file):
        print(f"wrote {path} ({os.path.getsize(path) // 1024} KB)", flush=True)
    return [png, text_file]


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
        take_schema_page(chromium, url, args.name, args.out_dir)
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
