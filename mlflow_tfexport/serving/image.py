"""The pyfunc of image models: decode, preprocess (``images``), run the format's runner, post-process.

Same runners as the text pyfunc; the task table names the post-processing.
Serving path: no torch, no transformers, Python 3.10.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.serving.base import PyfuncBase
from mlflow_tfexport.serving.conf import artifact_path
from mlflow_tfexport.serving.deadline import Deadline, check_deadline
from mlflow_tfexport.serving.frames import frame
from mlflow_tfexport.serving.images import PREPROCESSOR_FILE, ImagePreprocessor, parse_image_input
from mlflow_tfexport.serving.rules import postprocess_of
from mlflow_tfexport.serving.runtimes import Runner
from mlflow_tfexport.tasks import OutputKind


class ImagePyfunc(PyfuncBase):
    """``predict(images, params)`` with the same request and response for every format."""

    def __init__(self, path: str, conf: Mapping[str, Any], runner: Runner, model_config: Mapping[str, Any]) -> None:
        super().__init__(conf, runner, model_config)
        config_file = artifact_path(path, conf, FlavorKey.IMAGE_PROCESSOR_DIR, PREPROCESSOR_FILE)
        self.preprocessor = ImagePreprocessor.from_dir(os.path.dirname(config_file))
        self.input_names = tuple(conf[FlavorKey.INPUT_NAMES])

    def predict(self, model_input: Any, params: Optional[Dict[str, Any]] = None) -> Any:
        deadline = Deadline.from_env()
        p = self._params(params)
        images = parse_image_input(model_input, self.limits)
        batch_size = self._batch_size(p)
        post = postprocess_of(self.spec)
        rows: List[Any] = []
        for start in range(0, len(images), batch_size):
            check_deadline(deadline, start, len(images), "images")
            batch = self.preprocessor(images[start:start + batch_size], self.input_names)
            outputs = self.runner.run(batch.feeds)
            rows.extend(post(outputs, batch.sizes, self.id2label, self.conf.get(FlavorKey.PROBLEM_TYPE), p))
        return self._format(rows)

    def _format(self, rows: List[Any]) -> Any:
        if self.spec.output_kind == OutputKind.ARRAY:
            return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)
        if self.spec.output_kind == OutputKind.FRAME:
            return frame(rows, self.spec.output_columns)
        return rows
