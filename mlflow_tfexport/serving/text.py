"""The pyfunc of text models: parse, tokenize, run the format's runner in chunks, post-process.

``predict`` has the same request and response for every format; the task
table says how to post-process each chunk (or how to generate) and what shape
the response takes. Nothing here imports torch or transformers: only the
runner of a torch-based format does, when it is loaded. Python 3.10-compatible.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, Iterator, List, Mapping, Optional

import numpy as np

from mlflow_tfexport._compat import in_serving_environment
from mlflow_tfexport.constants import TOKENIZER_FILE, FlavorKey
from mlflow_tfexport.errors import BadInputError
from mlflow_tfexport.serving.base import PyfuncBase
from mlflow_tfexport.serving.conf import artifact_path, check_ranges
from mlflow_tfexport.serving.deadline import Deadline, check_deadline
from mlflow_tfexport.serving.frames import Columns, concat_columns, frame, frame_from_columns, records, rows_of
from mlflow_tfexport.serving.inputs import parse_text_input
from mlflow_tfexport.serving.postprocess import Context
from mlflow_tfexport.serving.rules import decoder_of, postprocess_of
from mlflow_tfexport.serving.runtimes import Runner
from mlflow_tfexport.serving.tokenization import TOKENIZER_CONFIG_FILE, TextEncoder, split_rows
from mlflow_tfexport.tasks import OutputKind, TaskSpec


def make_encoder(path: str, conf: Mapping[str, Any], spec: TaskSpec) -> TextEncoder:
    """The encoder of a saved text model (fields checked by ``serving.conf``; files inside the model). The
    flavor block's token ids and ``max_length`` are checked against the tokenizer and the model's config."""
    encoder = TextEncoder(
        artifact_path(path, conf, FlavorKey.TOKENIZER_DIR, TOKENIZER_FILE),
        input_names=conf[FlavorKey.INPUT_NAMES],
        max_length=int(conf[FlavorKey.MAX_LENGTH]),
        pad_token_id=int(conf[FlavorKey.PAD_TOKEN_ID]),
        pair_strategy=spec.pair_strategy,
        config_file=artifact_path(path, conf, FlavorKey.TOKENIZER_DIR, TOKENIZER_CONFIG_FILE),
    )
    check_ranges(path, conf, tokenizer_vocab=encoder.vocab_size, tokenizer_max_length=encoder.model_max_length)
    return encoder


class TfexportPyfunc(PyfuncBase):
    """``predict(data, params)`` with the same request and response for every format."""

    def __init__(self, path: str, conf: Mapping[str, Any], runner: Runner, model_config: Mapping[str, Any]) -> None:
        super().__init__(conf, runner, model_config)
        self.encoder = self.make_encoder(path, conf)

    def make_encoder(self, path: str, conf: Mapping[str, Any]) -> TextEncoder:
        return make_encoder(path, conf, self.spec)

    def predict(self, model_input: Any, params: Optional[Dict[str, Any]] = None) -> Any:
        deadline = Deadline.from_env()
        p = self._params(params)
        texts, pairs = parse_text_input(model_input, self.spec)
        if self.spec.generate is not None:
            return decoder_of(self.spec).generate(self.runner, self.encoder, self.conf, texts, p, deadline=deadline,
                                                  limits=self.limits)
        post = postprocess_of(self.spec)
        parts: List[Any] = []  # one per chunk: its rows, or its Columns
        for start, stop in split_rows(len(texts), self._batch_size(p)):
            check_deadline(deadline, start, len(texts))
            chunk = texts if (start, stop) == (0, len(texts)) else texts[start:stop]
            chunk_pairs = None if pairs is None else pairs[start:stop]
            batch = self.encoder.encode(chunk, chunk_pairs, truncation=bool(p["truncation"]))
            outputs = self.run_model(batch.feeds)
            ctx = Context(
                encoder=self.encoder,
                id2label=self.id2label,
                problem_type=self.conf.get(FlavorKey.PROBLEM_TYPE),
                mask_token_id=self.conf.get(FlavorKey.MASK_TOKEN_ID),
                texts=chunk,
                pairs=chunk_pairs,
                params=p,
            )
            parts.append(post(outputs, batch, ctx))
        return self._format(parts)

    def predict_stream(self, model_input: Any, params: Optional[Dict[str, Any]] = None) -> Iterator[str]:
        """One prompt's answer as text chunks while it is generated (``mlflow.pyfunc``'s ``predict_stream``,
        offered by the MLmodel of generation tasks: ``streamable``); the chunks join into ``predict``'s
        answer for that prompt."""
        if self.spec.generate is None:
            raise BadInputError(f"Task {self.spec.name!r} does not stream: call predict.")
        p = self._params(params)
        texts, _ = parse_text_input(model_input, self.spec)
        if len(texts) != 1:
            raise BadInputError(
                f"predict_stream takes one prompt, received {len(texts)}. Send one string, or call predict for "
                "several prompts."
            )
        return iter(decoder_of(self.spec).stream(self.runner, self.encoder, self.conf, texts[0], p,
                                                 limits=self.limits))

    def _format(self, parts: List[Any]) -> Any:
        if parts and all(isinstance(part, Columns) for part in parts):
            columns = concat_columns(parts)
            # Inside MLflow's serving environment (set after the model loads, so asked per call) the answer
            # is only written as JSON: the records MLflow writes for the DataFrame, without the round trip.
            if in_serving_environment():
                rows_out = records(columns, self.spec.output_columns)
                if rows_out is not None:
                    return rows_out
            return frame_from_columns(columns, self.spec.output_columns)
        rows: List[Any] = [row for part in parts for row in (rows_of(part) if isinstance(part, Columns) else part)]
        kind = self.spec.output_kind
        if kind == OutputKind.ARRAY:
            return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)
        if kind == OutputKind.FRAME:
            return frame(rows, self.spec.output_columns)
        return rows


#: MLflow's PyFuncModel.predict calls ``inspect.signature`` on this method for every request;
#: a precomputed signature makes that lookup about 3x cheaper.
TfexportPyfunc.predict.__signature__ = inspect.signature(TfexportPyfunc.predict)  # type: ignore[attr-defined]
