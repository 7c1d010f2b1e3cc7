"""``scripts/screenshot_registry.py`` takes the registry UI screenshots against a real ``mlflow server``.

What the test can check: the script runs end to end (server, log, ONNX export, promote, headless
Chromium screenshots) and writes real, non-trivial PNGs of the requested size; on the version page,
with the schema rows opened, the page text shows the one string input of a model logged the default
way (``Inputs (1)``) and the outputs (``label``, ``score``) of the signature. (MLflow 3.17's version
page does not show the params schema; the run's MLmodel holds it.) What
it cannot: whether the description reads well; look at ``docs/img/registry-*.png`` for that.

Chromium must be installed (Debian: ``chromium``; ``.ci/apt-packages.sh`` installs it). Without it
the test fails under ``CI=true`` and is skipped elsewhere.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import zlib
from typing import Any, Tuple

import pytest

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "screenshot_registry.py")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def png_size(path: str) -> Tuple[int, int]:
    """(width, height) from the IHDR chunk, which a valid PNG has first."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert head[12:16] == b"IHDR", f"{path}: first chunk is {head[12:16]!r}, not IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def png_pixel_bytes(path: str) -> bytes:
    """The decompressed image data (filter bytes included): enough to tell a blank page from a real one."""
    with open(path, "rb") as f:
        data = f.read()
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    return zlib.decompress(idat)


def test_screenshot_script_writes_two_real_pngs(tmp_path: Any) -> None:
    if not any(shutil.which(name) for name in CHROMIUM_NAMES):
        reason = "Chromium not found (Debian package: chromium); the registry UI screenshot needs it"
        if _in_ci():
            pytest.fail(f"{reason} (CI=true: install it with .ci/apt-packages.sh)")
        pytest.skip(reason)
    out_dir = tmp_path / "img"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    done = subprocess.run(
        [sys.executable, SCRIPT, "--out-dir", str(out_dir), "--name", "ui-sentiment"],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=420,
    )
    assert done.returncode == 0, f"{done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    for name in ("registry-model.png", "registry-version.png"):
        png = out_dir / name
        assert png.is_file(), f"{name} missing; output:\n{done.stdout[-2000:]}"
        assert png_size(str(png)) == (1400, 1000)
        size = png.stat().st_size
        # docs/img/ keeps them < 500 KB (the script re-encodes with a palette when Pillow is there);
        # without Pillow, Chromium's own PNGs are bigger but still far from this sanity bound.
        assert 15_000 < size < 2_000_000, f"{name}: {size} bytes"
        # A blank or error page compresses to almost nothing and has only a handful of distinct bytes.
        pixels = png_pixel_bytes(str(png))
        assert len(set(pixels)) > 32, f"{name} looks blank"
        assert f"wrote {png}" in done.stdout
    # The version page with its schema rows opened (the model is logged the default way: one string input):
    # a taller screenshot and the page's text, which must name every input and output.
    schema_png = out_dir / "registry-version-schema.png"
    assert png_size(str(schema_png)) == (1400, 2400)
    assert len(set(png_pixel_bytes(str(schema_png)))) > 32, "registry-version-schema.png looks blank"
    text = (out_dir / "registry-version-schema.txt").read_text()
    schema = text[text.index("Schema"):]
    for line in ("Inputs (1)", "string", "Outputs (2)", "label (required)", "score (required)"):
        assert line in schema, f"{line!r} not on the version page:\n{schema[:1500]}"
    assert schema.index("Inputs (1)") < schema.index("string") < schema.index("Outputs (2)")


def _script() -> Any:
    """``scripts/screenshot_registry.py`` as a module: its server and Chromium helpers."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("screenshot_registry", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _page_text(script: Any, chromium: str, url: str, profile: str) -> str:
    """The page's DOM after its scripts ran (headless Chromium ``--dump-dom``), tags stripped."""
    import re

    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", f"--window-size={script.WINDOW[0]},{script.WINDOW[1]}",
           "--virtual-time-budget=15000", f"--host-resolver-rules=MAP {script.UI_HOST} 127.0.0.1", "--dump-dom", url]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        script.stop_group(proc)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", out.decode(errors="replace")))


def test_a_refused_promotion_shows_on_the_version_page(tmp_path: Any, tiny_model: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An alias set in the UI onto a failed variant: the guard moves it back, and the version page shows why."""
    import mlflow
    import requests
    from mlflow import MlflowClient

    import mlflow_tfexport
    from mlflow_tfexport.constants import Tag
    from mlflow_tfexport.registry import promote
    from mlflow_tfexport.worker import guard_all

    monkeypatch.setenv("MLFLOW_TFEXPORT_GUARD_SECRET", "screenshot-secret")  # signs promote's and the guard's records
    script = _script()
    chromium = script.find_chromium()
    if chromium is None:
        reason = "Chromium not found (Debian package: chromium); the registry UI page check needs it"
        if _in_ci():
            pytest.fail(f"{reason} (CI=true: install it with .ci/apt-packages.sh)")
        pytest.skip(reason)
    proc, url, _ = script.start_server(str(tmp_path))
    previous = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    try:
        mlflow.set_tracking_uri(url)
        mlflow.set_registry_uri(url)
        client = MlflowClient(url, url)
        model, tok = tiny_model("text-classification")
        with mlflow.start_run():
            mlflow_tfexport.log_model(model, tokenizer=tok, name="model", registered_model_name="ui-refused")
        promote("ui-refused", "1", "production", client)
        v1 = client.get_model_version("ui-refused", "1")
        failed = client.create_model_version(  # a variant whose validation failed, as the registry shows it
            "ui-refused", source=v1.source, run_id=v1.run_id, model_id=v1.model_id or v1.source.rpartition("/")[2],
            tags={Tag.FORMAT: "onnx", Tag.TASK: v1.tags[Tag.TASK], Tag.VALIDATION: "failed"},
        ).version
        r = requests.post(f"{url}/api/2.0/mlflow/registered-models/alias", timeout=30,
                          json={"name": "ui-refused", "alias": "production", "version": str(failed)})
        assert r.status_code == 200, r.text
        guard_all(client)  # what the worker runs on each poll (and on each alias webhook)
        assert {k: str(v) for k, v in client.get_registered_model("ui-refused").aliases.items()} == {"production": "1"}

        ui = url.replace("127.0.0.1", script.UI_HOST) + f"/#/models/ui-refused/versions/{failed}"
        profile = tmp_path / "profile"
        text = _page_text(script, chromium, ui, str(profile))
        assert f"{Tag.REFUSED_PREFIX}production" in text, text[-3000:]
        assert f"@production may not point at version {failed}: its validation is 'failed'" in text, text[-3000:]
        png = tmp_path / "registry-refused.png"
        script.screenshot(chromium, ui, str(png), str(tmp_path / "profile2"))
        assert png_size(str(png)) == (1400, 1000) and len(set(png_pixel_bytes(str(png)))) > 32
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
        script.stop_group(proc)
