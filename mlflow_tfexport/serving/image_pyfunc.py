"""The pyfunc of image models: decode, preprocess (``images``), run the format's runner, post-process.

Same runners as the text pyfunc; the response follows ``mlflow.transformers``:
``image-classification`` returns a DataFrame with ``label`` and ``score``
(``top_k`` rows per image, 1 by default), ``image-feature-extraction`` an
array with one feature vector per image, ``object-detection`` one list per
image of ``{"score", "label", "box": {"xmin", "ymin", "xmax", "ymax"}}`` above
``threshold`` (the transformers pipeline's shape). Serving path: no torch, no
transformers, Python 3.10.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.errors import BadInputError
from mlflow_tfexport.serving.images import ImagePreprocessor, parse_image_input
from mlflow_tfexport.serving.postprocess import sigmoid, softmax
from mlflow_tfexport.serving.pyfunc import PyfuncBase
from mlflow_tfexport.serving.runtimes import Runner


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


POSTPROCESS: Dict[str, Callable[..., List[Any]]] = {
    "image-classification": image_classification,
    "image-feature-extraction": image_feature_extraction,
    "object-detection": object_detection,
}


class ImagePyfunc(PyfuncBase):
    """``predict(images, params)`` with the same request and response for every format."""

    def __init__(self, path: str, conf: Mapping[str, Any], runner: Runner, model_config: Mapping[str, Any]) -> None:
        super().__init__(conf, runner, model_config)
        self.preprocessor = ImagePreprocessor.from_dir(os.path.join(path, conf[FlavorKey.IMAGE_PROCESSOR_DIR]))
        self.input_names = tuple(conf[FlavorKey.INPUT_NAMES])

    def predict(self, model_input: Any, params: Optional[Dict[str, Any]] = None) -> Any:
        p = self._params(params)
        images = parse_image_input(model_input)
        batch_size = self._batch_size(p)
        post = POSTPROCESS[self.spec.name]
        rows: List[Any] = []
        for start in range(0, len(images), batch_size):
            batch = self.preprocessor(images[start:start + batch_size], self.input_names)
            outputs = self.runner.run(batch.feeds)
            rows.extend(post(outputs, batch.sizes, self.id2label, self.conf.get(FlavorKey.PROBLEM_TYPE), p))
        return self._format(rows)

    def _format(self, rows: List[Any]) -> Any:
        if self.spec.name == "image-feature-extraction":
            return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)
        if self.spec.output_columns:
            import pandas as pd

            return pd.DataFrame(rows, columns=[c for c, _ in self.spec.output_columns])
        return rows
