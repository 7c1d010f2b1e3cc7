"""The pyfunc of a model exported through a user's export config (``serving/export_config.py``).

A request carries the config's text columns (tokenized) and its numeric columns; constants are added; each
model input is fed as the config says, and the outputs are post-processed by the config's task (e.g.
``text-classification``) or returned raw, one column per output. Everything it needs is the flavor block:
the config is data, none of the user's code is imported.
Serving path: no torch, no transformers, Python 3.10.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport.constants import TOKENIZER_FILE, FlavorKey
from mlflow_tfexport.errors import BadInputError
from mlflow_tfexport.serving.conf import artifact_path
from mlflow_tfexport.serving.deadline import Deadline, check_deadline
from mlflow_tfexport.serving.export_config import MAX_CONSTANT_VALUES, ExportConfig, Feed, InputSpec
from mlflow_tfexport.serving.frames import Columns, concat_columns
from mlflow_tfexport.serving.inputs import check_strings, request_columns
from mlflow_tfexport.serving.postprocess import Context
from mlflow_tfexport.serving.rules import postprocess_of
from mlflow_tfexport.serving.runtimes import Runner
from mlflow_tfexport.serving.text import TfexportPyfunc
from mlflow_tfexport.serving.tokenization import TOKENIZER_CONFIG_FILE, TextEncoder, split_rows
from mlflow_tfexport.tasks import TaskSpec


def custom_encoder(path: str, conf: Mapping[str, Any], spec: TaskSpec) -> TextEncoder:
    """The tokenizer of a custom model, producing the tokenizer outputs its config feeds from."""
    config: ExportConfig = _config(spec)
    keys = tuple(dict.fromkeys(i.source for i in config.tokenizer_inputs))
    return TextEncoder(
        artifact_path(path, conf, FlavorKey.TOKENIZER_DIR, TOKENIZER_FILE),
        input_names=keys,
        max_length=int(conf[FlavorKey.MAX_LENGTH]),
        pad_token_id=int(conf[FlavorKey.PAD_TOKEN_ID]),
        pair_strategy=spec.pair_strategy,
        config_file=artifact_path(path, conf, FlavorKey.TOKENIZER_DIR, TOKENIZER_CONFIG_FILE),
    )


def _config(spec: TaskSpec) -> ExportConfig:
    if not isinstance(spec.custom, ExportConfig):
        raise BadInputError(f"Task {spec.name!r} has no export config; it is served by the task table's pyfunc.")
    return spec.custom


def _numbers(values: Sequence[Any], spec: InputSpec) -> np.ndarray:
    """A numeric request column as one array (a row: a number or a list of numbers), else ``BadInputError``
    naming the column and row."""
    column = spec.source
    if not len(values):
        return np.zeros((0, *spec.row_shape), dtype=spec.numpy_dtype)
    for row, value in enumerate(values):
        items = value.tolist() if isinstance(value, np.ndarray) else value
        items = items if isinstance(items, (list, tuple)) else [items]
        bad = len(items) > MAX_CONSTANT_VALUES or not all(
            isinstance(v, numbers.Real) and (not isinstance(v, bool) or spec.numpy_dtype == "bool") for v in items)
        if bad:
            raise BadInputError(
                f"Column {column!r}, row {row}: expected a number (or a list of at most {MAX_CONSTANT_VALUES} "
                f"numbers) for model input {spec.name!r} ({spec.numpy_dtype}), received {value!r:.60}. Send "
                f'numbers, e.g. {{"dataframe_records": [{{"text": "...", "{column}": 1.5}}]}}.'
            )
    try:
        array = np.asarray([v.tolist() if isinstance(v, np.ndarray) else v for v in values], dtype=spec.numpy_dtype)
    except (TypeError, ValueError) as exc:
        raise BadInputError(
            f"Column {column!r}: the rows do not form one {spec.numpy_dtype} array ({exc}); every row must hold "
            "a number, or lists of the same length."
        ) from None
    if array.shape[1:] != spec.row_shape:
        expected = "a number" if not spec.row_shape else f"values of shape {list(spec.row_shape)}"
        raise BadInputError(
            f"Column {column!r}: each row must hold {expected} for model input {spec.name!r}; received rows of "
            f"shape {list(array.shape[1:])}."
        )
    return array


class CustomPyfunc(TfexportPyfunc):
    """``predict(data, params)`` for a model exported through a user's export config."""

    def __init__(self, path: str, conf: Mapping[str, Any], runner: Runner, model_config: Mapping[str, Any]) -> None:
        super().__init__(path, conf, runner, model_config)
        self.config: ExportConfig = _config(self.spec)

    def make_encoder(self, path: str, conf: Mapping[str, Any]) -> TextEncoder:
        return custom_encoder(path, conf, self.spec)

    def _columns(self, model_input: Any) -> Tuple[List[str], Optional[List[str]], Dict[str, np.ndarray]]:
        """The text column(s) and the numeric columns of a request, checked."""
        spec = self.spec
        wanted = (*spec.text_columns, *spec.numeric_columns)
        columns = request_columns(model_input, spec)
        if not all(c in columns for c in wanted):
            if len(wanted) == 1 and len(columns) == 1:  # a plain list of strings for a one-text-column model
                columns = {wanted[0]: next(iter(columns.values()))}
            else:
                raise BadInputError(
                    f"This model (export config, task {spec.name!r}) expects column(s) "
                    f"{', '.join(map(repr, wanted))}; received column(s) {', '.join(map(repr, columns)) or 'none'}. "
                    'Send one value of each per row, e.g. {"dataframe_records": [{'
                    + ", ".join(f'"{c}": ...' for c in wanted) + "}]}."
                )
        lengths = {c: len(columns[c]) for c in wanted}
        if len(set(lengths.values())) > 1:
            raise BadInputError(f"Columns have different lengths {lengths}; send one value of each per row.")
        texts = check_strings(columns[spec.text_columns[0]], spec.text_columns[0])
        pairs = check_strings(columns[spec.text_columns[1]], spec.text_columns[1]) \
            if len(spec.text_columns) > 1 else None
        numeric = {i.source: _numbers(columns[i.source], i) for i in self.config.column_inputs}
        return texts, pairs, numeric

    def _feeds(self, encoded: Dict[str, np.ndarray], numeric: Dict[str, np.ndarray],
               rows: int) -> Dict[str, np.ndarray]:
        feeds: Dict[str, np.ndarray] = {}
        for spec in self.config.inputs:
            if spec.feed == Feed.TOKENIZER:
                feeds[spec.name] = encoded[spec.source]
            elif spec.feed == Feed.COLUMN:
                feeds[spec.name] = numeric[spec.source]
            else:
                value = np.asarray(spec.value, dtype=spec.numpy_dtype)
                feeds[spec.name] = np.ascontiguousarray(np.broadcast_to(value, (rows,) + value.shape))
        return feeds

    def predict(self, model_input: Any, params: Optional[Dict[str, Any]] = None) -> Any:
        deadline = Deadline.from_env()
        p = self._params(params)
        texts, pairs, numeric = self._columns(model_input)
        post = postprocess_of(self.spec)  # a config's task post-processes (``check_config``)
        parts: List[Any] = []
        for start, stop in split_rows(len(texts), self._batch_size(p)):
            check_deadline(deadline, start, len(texts))
            chunk, chunk_pairs = texts[start:stop], None if pairs is None else pairs[start:stop]
            batch = self.encoder.encode(chunk, chunk_pairs, truncation=bool(p["truncation"]))
            feeds = self._feeds(batch.feeds, {k: v[start:stop] for k, v in numeric.items()}, stop - start)
            outputs = self.run_model(feeds)
            ctx = Context(encoder=self.encoder, id2label=self.id2label,
                          problem_type=self.conf.get(FlavorKey.PROBLEM_TYPE),
                          mask_token_id=self.conf.get(FlavorKey.MASK_TOKEN_ID), texts=chunk, pairs=chunk_pairs,
                          params=p, outputs=self.spec.outputs)
            parts.append(post(outputs, batch, ctx))
        if self.spec.output_columns:  # a task's post-processing: the task's response
            return self._format(parts)
        import pandas as pd

        names = self.config.output_names
        if not parts:
            return pd.DataFrame(columns=names)
        merged = concat_columns([part if isinstance(part, Columns) else Columns() for part in parts])
        return pd.DataFrame({name: pd.Series(merged[name]) for name in names})


#: As ``TfexportPyfunc``: MLflow calls ``inspect.signature`` on ``predict`` for every request.
CustomPyfunc.predict.__signature__ = inspect.signature(CustomPyfunc.predict)  # type: ignore[attr-defined]
