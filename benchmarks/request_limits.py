"""The attacks of issue 24 against real ``mlflow models serve`` processes: what each costs the server.

    python benchmarks/request_limits.py                 # every case, about 3 minutes on 2 loaded cores
    python benchmarks/request_limits.py --cases bomb    # one group: bomb, generation
    python benchmarks/request_limits.py --bombs 2       # fewer bombs (an unbounded server: 0.7 GB each)

Builds a tiny random ViT classifier (saved without an input example) and a
tiny random GPT-2 (source, ONNX with past, TorchScript 1x32), serves each with
``mlflow models serve --env-manager local`` on a loopback port, and sends:

- ``bomb``: 12 PNGs of 13000 x 13000 black pixels (about 0.5 MB each, 507 MB
  each decoded) in one ``dataframe_records`` request; then one small image as
  ``{"inputs": ["<base64>"]}`` (the model was saved without an input
  example). Prints the status, the seconds, the message and the server's
  peak resident memory (all its processes, sampled every 20 ms) above its
  memory before the request;
- ``generation``: with ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT=2`` and the
  request limits raised with ``MLFLOW_PYFUNC_INFERENCE_CONFIG`` (so that the
  work runs into the timeout instead of being refused), the worst cases of the
  issue scaled to the tiny model: 4,096 prompts x 32 beams with ``batch_size``
  1024; 1,024 prompts x 32 beams (source, TorchScript) in one chunk
  (``batch_size`` 1024); 10,000 stop strings in a 100 KB request. Prints the
  status, the seconds, the CPU seconds the server used while the request ran
  (before its 504) and in the 3 s after the 504 (the bar: below 0.6). Then the same requests with the default
  limits: the status (400) and the message.

Run it with ``PYTHONPATH`` on an older checkout to get the figures before a
change (the models are saved, and served, by the code on ``PYTHONPATH``).
Traffic goes only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import struct
import sys
import tempfile
import threading
import time
import zlib
from typing import Any, ContextManager, Dict, List, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import requests  # noqa: E402
from servers import ScoringServer, models_serve  # noqa: E402
from soak import cpu_seconds, rss_bytes, server_pids  # noqa: E402

BOMB_SIDE = 13000
BOMBS = 12
TIMEOUT_S = 2
#: The limits raised so far that the issue's requests run (into the timeout) instead of being refused.
RAISED = {"max_generation_tokens": 10**9, "max_stop_strings": 10**6, "max_stop_string_chars": 10**6,
          "max_stop_bytes": 10**9}
#: name -> (variant, request body): the issue's worst generation cases, scaled to a tiny GPT-2.
GENERATION_CASES: Dict[str, Any] = {
    "onnx 4096 prompts x 32 beams, batch_size 1024": (
        "onnx", {"inputs": ["the plot was"] * 4096, "params": {"num_beams": 32, "batch_size": 1024}}),
    "source 1024 prompts x 32 beams, batch_size 1024": (
        "source", {"inputs": ["the plot was"] * 1024, "params": {"num_beams": 32, "batch_size": 1024}}),
    "torchscript 1024 prompts x 32 beams, batch_size 1024": (
        "torchscript", {"inputs": ["the plot was"] * 1024, "params": {"num_beams": 32, "batch_size": 1024}}),
    "onnx 10,000 stop strings (100 KB), 256 prompts, batch_size 256": (
        "onnx", {"inputs": ["the plot was"] * 256,
                 "params": {"stop": [f"zz{i:07d}" for i in range(10_000)], "batch_size": 256}}),
    "source 10,000 stop strings (100 KB), 256 prompts, batch_size 256": (
        "source", {"inputs": ["the plot was"] * 256,
                   "params": {"stop": [f"zz{i:07d}" for i in range(10_000)], "batch_size": 256}}),
}


def png_bomb(side: int = BOMB_SIDE) -> bytes:
    """An RGB PNG of ``side`` x ``side`` black pixels, written row by row (its pixels are never held here)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * side)  # filter byte + RGB
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def small_png() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(out, "PNG")
    return out.getvalue()


def build_models(root: str, which: str = "all") -> Dict[str, str]:
    """Save the tiny models the cases serve (by the mlflow_tfexport on ``sys.path``): name -> directory."""
    import mlflow_tfexport

    paths: Dict[str, str] = {}
    if which in ("all", "bomb"):
        from test_vision import IC, VISION_BY_NAME, build

        model, processor = build(VISION_BY_NAME["ViT"], IC)
        paths["vit"] = os.path.join(root, "vit")
        mlflow_tfexport.save_model(model, paths["vit"], image_processor=processor)
    if which in ("all", "generation"):
        from tiny import tiny

        from mlflow_tfexport.export.api import export_to_directory

        model, tok = tiny("text-generation", "gpt2")
        for name in ("source", "onnx", "torchscript"):
            paths[name] = os.path.join(root, f"gpt2-{name}")
        mlflow_tfexport.save_model(model, paths["source"], tokenizer=tok)
        export_to_directory(paths["source"], paths["onnx"], "onnx")
        export_to_directory(paths["source"], paths["torchscript"], "torchscript", trace_shape="1x32")
    return paths


class PeakRss:
    """The peak resident memory of ``pids`` while the block runs (sampled every 20 ms)."""

    def __init__(self, pids: List[int]) -> None:
        self.pids, self.peak, self._stop = pids, rss_bytes(pids), threading.Event()
        self.before = self.peak
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_bytes(self.pids))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.before) / 2**20


def post(server: ScoringServer, body: Dict[str, Any], timeout: float = 600) -> requests.Response:
    return requests.post(f"{server.url}/invocations", json=body, timeout=timeout)


def message(response: requests.Response, chars: int = 400) -> str:
    """The error message of an answer (the scoring server puts the request's data before it: dropped)."""
    try:
        text = str(response.json().get("message", ""))
    except ValueError:
        text = response.text
    return text.split("\nError: ", 1)[-1][:chars]


def bomb_case(server: ScoringServer, bombs: int = BOMBS) -> Dict[str, Any]:
    """``bombs`` bombs in one request: status, seconds, message, peak RSS growth of the server; then a small
    image."""
    pids = server_pids(server.url)
    body = {"dataframe_records": [{"image": base64.b64encode(png_bomb()).decode()}] * bombs}  # a form old releases take
    with PeakRss(pids) as rss:
        started = time.monotonic()
        response = post(server, body)
        seconds = time.monotonic() - started
    small = post(server, {"inputs": [base64.b64encode(small_png()).decode()]})
    return {"status": response.status_code, "seconds": seconds, "message": message(response),
            "rss_before_mb": rss.before / 2**20, "rss_growth_mb": rss.growth_mb,
            "small_image_status": small.status_code, "small_image_message": message(small)}


def timeout_case(server: ScoringServer, body: Dict[str, Any], window_s: float = 3.0) -> Dict[str, Any]:
    """A request past the server's timeout: status, seconds, CPU seconds of the server in ``window_s`` after."""
    pids = server_pids(server.url)
    # a warm server: a TorchScript module's first runs compile it (seconds that no deadline interrupts)
    post(server, {"inputs": ["the plot"], "params": {"max_new_tokens": 2, "num_beams": 2}})
    started, cpu_started = time.monotonic(), cpu_seconds(pids)
    response = post(server, body)
    seconds = time.monotonic() - started
    before = cpu_seconds(pids)
    time.sleep(window_s)
    return {"status": response.status_code, "seconds": seconds, "cpu_during_s": before - cpu_started,
            "cpu_after_s": cpu_seconds(pids) - before, "message": message(response)}


def serving(path: str, workdir: str, extra_env: Optional[Dict[str, str]] = None) -> ContextManager[ScoringServer]:
    return models_serve(path, f"sqlite:///{workdir}/mlflow.db", workdir, extra_env=extra_env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", choices=("all", "bomb", "generation"), default="all")
    parser.add_argument("--bombs", type=int, default=BOMBS,
                        help="bombs in the request (each costs an unbounded server about 0.7 GB)")
    args = parser.parse_args()
    import mlflow_tfexport

    print(f"mlflow_tfexport from {os.path.dirname(mlflow_tfexport.__file__)}")
    with tempfile.TemporaryDirectory() as root:
        paths = build_models(root, args.cases)
        if "vit" in paths:
            with serving(paths["vit"], root) as server:
                print(f"{args.bombs} bombs:", json.dumps(bomb_case(server, args.bombs)))
        if "onnx" in paths:
            raised = {"MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": str(TIMEOUT_S),
                      "MLFLOW_PYFUNC_INFERENCE_CONFIG": json.dumps(RAISED)}
            for name, (variant, body) in GENERATION_CASES.items():  # a server each: an old one works on
                with serving(paths[variant], root, raised) as server:
                    print(f"{name} (limits raised, timeout {TIMEOUT_S} s):", json.dumps(timeout_case(server, body)))
            try:
                import mlflow_tfexport.serving.limits  # noqa: F401
            except ImportError:  # a release without limits: every case above runs the same with its defaults
                return 0
            for variant in ("source", "onnx", "torchscript"):
                with serving(paths[variant], root, {"MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": str(TIMEOUT_S)}) as srv:
                    for name, (v, body) in GENERATION_CASES.items():
                        if v == variant:
                            print(f"{name} (default limits):", json.dumps(timeout_case(srv, body, 0.0)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
