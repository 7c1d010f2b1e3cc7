"""Numpy post-processing of image tasks, one function per task (named by the task table).

The response follows ``mlflow.transformers``: ``image-classification`` gives
rows of ``label`` and ``score`` (``top_k`` per image), ``image-feature-extraction``
one feature vector per image, ``object-detection`` one list per image of
``{"score", "label", "box": {"xmin", "ymin", "xmax", "ymax"}}`` above
``threshold``. Serving path: no torch, no transformers, Python 3.10.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport.errors import BadInputError
from mlflow_tfexport.serving.postprocess import sigmoid, softmax


def _label(id2label: Mapping[int, str], index: int) -> str:
    return str(id2label.get(int(index), f"LABEL_{int(index)}"))


def image_classification(out: Dict[str, np.ndarray], sizes: Sequence[Tuple[int, int]], id2label: Mapping[int, str],
                         problem_type: Optional[str], params: Mapping[str, Any]) -> List[Dict[str, Any]]:
    logits = out["logits"].astype(np.float64)
    scores = sigmoid(logits) if problem_type == "multi_label_classification" or logits.shape[-1] == 1 \
        else softmax(logits)
    top_k = int(params.get("top_k", 1))
    if top_k < 1:
        raise BadInputError(f"params top_k must be >= 1, received {top_k}.")
    k = min(top_k, scores.shape[-1])
    order = np.argsort(-scores, axis=-1, kind="stable")[:, :k]
    return [{"label": _label(id2label, c), "score": float(scores[r, c])} for r in range(len(scores)) for c in order[r]]


def image_feature_extraction(out: Dict[str, np.ndarray], sizes: Sequence[Tuple[int, int]],
                             id2label: Mapping[int, str], problem_type: Optional[str],
                             params: Mapping[str, Any]) -> List[np.ndarray]:
    pooling = str(params.get("pooling", "pooler"))
    hidden = out["last_hidden_state"].astype(np.float32)
    if pooling == "pooler" and "pooler_output" in out:
        pooled = out["pooler_output"].astype(np.float32).reshape(hidden.shape[0], -1)
    elif pooling in ("pooler", "mean"):  # a model without a pooling layer: mean over tokens / positions
        pooled = hidden.mean(axis=1) if hidden.ndim == 3 else hidden.reshape(*hidden.shape[:2], -1).mean(axis=-1)
    elif pooling == "cls" and hidden.ndim == 3:
        pooled = hidden[:, 0]
    else:
        raise BadInputError(
            f"params pooling={pooling!r} is not supported for this model; use 'pooler', 'mean'"
            + (" or 'cls'." if hidden.ndim == 3 else ".")
        )
    if params.get("normalize", False):
        pooled = pooled / np.clip(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12, None)
    return list(pooled)


def object_detection(out: Dict[str, np.ndarray], sizes: Sequence[Tuple[int, int]], id2label: Mapping[int, str],
                     problem_type: Optional[str], params: Mapping[str, Any]) -> List[List[Dict[str, Any]]]:
    """DETR-style post-processing (``post_process_object_detection``): class softmax without the
    no-object class, boxes from centre/size to corners in the original image's pixels."""
    threshold = float(params.get("threshold", 0.5))
    probs = softmax(out["logits"].astype(np.float64))[..., :-1]
    labels, scores = probs.argmax(axis=-1), probs.max(axis=-1)
    boxes = out["pred_boxes"].astype(np.float64)
    rows = []
    for r, (height, width) in enumerate(sizes):
        cx, cy, w, h = boxes[r].T
        corners = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1) * [width, height, width, height]
        keep = np.flatnonzero(scores[r] > threshold)
        rows.append([
            {"score": float(scores[r, q]), "label": _label(id2label, labels[r, q]),
             "box": dict(zip(("xmin", "ymin", "xmax", "ymax"), (int(v) for v in corners[q]), strict=True))}
            for q in keep
        ])
    return rows


def zero_shot_image_classification(out: Dict[str, np.ndarray], labels: Sequence[str]) -> List[List[Dict[str, Any]]]:
    """Per image, every candidate label with its softmax score over the candidates, best first (as the
    transformers ``zero-shot-image-classification`` pipeline)."""
    scores = softmax(out["logits_per_image"].astype(np.float64))
    order = np.argsort(-scores, axis=-1, kind="stable")
    return [[{"score": float(scores[r, c]), "label": str(labels[c])} for c in order[r]] for r in range(len(scores))]
