"""The pyfunc of zero-shot image classification (CLIP): images scored against candidate labels.

A request carries images (as for every image model) and the candidate labels: the ``candidate_labels``
param (comma-separated) for the whole request, or a ``candidate_labels`` column (a list, or a
comma-separated string, per row). Each label becomes the text ``hypothesis_template.format(label)``
(``"This is a photo of {}."`` by default, as the transformers pipeline), is tokenized with the saved
``tokenizer.json``, and the model scores every image against every text. The response is, per image, the
candidates with their softmax scores, best first: ``[{"score": ..., "label": ...}, ...]``.

Serving path: no torch, no transformers, Python 3.10.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.errors import BadInputError
from mlflow_tfexport.serving.base import PyfuncBase
from mlflow_tfexport.serving.conf import artifact_path
from mlflow_tfexport.serving.deadline import Deadline, check_deadline
from mlflow_tfexport.serving.image_postprocess import zero_shot_image_classification
from mlflow_tfexport.serving.images import IMAGE_COLUMN, PREPROCESSOR_FILE, ImagePreprocessor, parse_image_input
from mlflow_tfexport.serving.limits import Limits
from mlflow_tfexport.serving.runtimes import Runner
from mlflow_tfexport.serving.text import make_encoder
from mlflow_tfexport.tasks import IMAGE_INPUTS

LABELS_COLUMN = "candidate_labels"
#: The most candidate labels one request may name (each is one more text through the text tower).
MAX_LABELS = 1000


def _labels(value: Any, where: str) -> Tuple[str, ...]:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise BadInputError(
            f"{where}: expected candidate labels as a list of strings or one comma-separated string, received "
            f"{type(value).__name__}. Send e.g. {{\"params\": {{\"candidate_labels\": \"cat,dog\"}}}}."
        )
    labels = tuple(v.strip() for v in value if v.strip())
    if not labels or len(labels) > MAX_LABELS:
        raise BadInputError(
            f"{where}: expected 1 to {MAX_LABELS} candidate labels, received {len(labels)}. Send e.g. "
            '{"params": {"candidate_labels": "cat,dog"}} or a candidate_labels column.'
        )
    return labels


def split_request(model_input: Any, param: str, limits: Optional[Limits] = None,
                  ) -> Tuple[List[np.ndarray], List[Tuple[str, ...]]]:
    """Images (each checked against ``limits`` before it is decoded) and, per image, its candidate labels (the
    column's, else the param's)."""
    column: Optional[List[Any]] = None
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas ships with mlflow
        pd = None  # type: ignore[assignment]
    if pd is not None and isinstance(model_input, pd.DataFrame) and LABELS_COLUMN in model_input.columns:
        column = model_input[LABELS_COLUMN].tolist()
        model_input = model_input.drop(columns=[LABELS_COLUMN])
    elif isinstance(model_input, dict) and LABELS_COLUMN in model_input:
        rest = {k: v for k, v in model_input.items() if k != LABELS_COLUMN}
        column = list(model_input[LABELS_COLUMN])
        model_input = rest.get(IMAGE_COLUMN, rest.get("inputs", rest))
    images = parse_image_input(model_input, limits)
    if column is not None:
        if len(column) != len(images):
            raise BadInputError(f"Received {len(images)} images and {len(column)} rows of candidate_labels; send one "
                                "row of labels per image.")
        return images, [_labels(v, f"Row {i} of candidate_labels") for i, v in enumerate(column)]
    if not param:
        raise BadInputError(
            "No candidate labels: zero-shot image classification scores each image against labels you send, as "
            'the candidate_labels param (e.g. {"params": {"candidate_labels": "cat,dog"}}) or a candidate_labels '
            "column beside the image column. A model logged without a candidate_labels column in its "
            "input_example has one unnamed image input, and MLflow drops other columns before the model sees them: "
            "send the param, or log the model with input_example={'image': [...], 'candidate_labels': [...]} "
            "(or input_schema=True) to take the column."
        )
    labels = _labels(param, "params candidate_labels")
    return images, [labels] * len(images)


class ZeroShotImagePyfunc(PyfuncBase):
    """``predict(images + candidate labels, params)`` with the same request and response for every format."""

    def __init__(self, path: str, conf: Mapping[str, Any], runner: Runner, model_config: Mapping[str, Any]) -> None:
        super().__init__(conf, runner, model_config)
        config_file = artifact_path(path, conf, FlavorKey.IMAGE_PROCESSOR_DIR, PREPROCESSOR_FILE)
        self.preprocessor = ImagePreprocessor.from_dir(os.path.dirname(config_file))
        names = list(conf[FlavorKey.INPUT_NAMES])
        self.image_inputs = tuple(n for n in names if n in IMAGE_INPUTS)
        text_conf = {**conf, FlavorKey.INPUT_NAMES: [n for n in names if n not in IMAGE_INPUTS]}
        self.encoder = make_encoder(path, text_conf, self.spec)

    def predict(self, model_input: Any, params: Optional[Dict[str, Any]] = None) -> Any:
        deadline = Deadline.from_env()
        p = self._params(params)
        images, labels = split_request(model_input, str(p["candidate_labels"]), self.limits)
        template = str(p["hypothesis_template"])
        if "{}" not in template:
            raise BadInputError(f"params hypothesis_template={template!r} has no '{{}}' for the label; e.g. "
                                "'This is a photo of {}.'")
        batch_size = self._batch_size(p)
        rows: List[Any] = []
        start = 0
        while start < len(images):
            check_deadline(deadline, start, len(images), "images")
            stop = start + 1  # a run of images sharing their labels, at most batch_size
            while stop < len(images) and stop - start < batch_size and labels[stop] == labels[start]:
                stop += 1
            rows.extend(self._score(images[start:stop], labels[start], template, bool(p["truncation"])))
            start = stop
        return rows

    def _score(self, images: Sequence[np.ndarray], labels: Sequence[str], template: str,
               truncation: bool) -> List[Any]:
        texts = [template.format(label) for label in labels]
        encoded = self.encoder.encode(texts, truncation=truncation)
        pixels = self.preprocessor(list(images), self.image_inputs)
        out = self.runner.run({**encoded.feeds, **pixels.feeds})
        return zero_shot_image_classification(out, labels)


#: MLflow's PyFuncModel.predict calls ``inspect.signature`` on this method for every request.
ZeroShotImagePyfunc.predict.__signature__ = inspect.signature(ZeroShotImagePyfunc.predict)  # type: ignore[attr-defined]
