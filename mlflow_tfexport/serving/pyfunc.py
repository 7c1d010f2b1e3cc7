"""The one pyfunc loader for every variant (source, ONNX, TorchScript, Neuron).

``mlflow.pyfunc.load_model`` calls ``_load_pyfunc``; the returned object
tokenizes with ``tokenizers``, runs the format's runner in batches and
post-processes in numpy. Nothing here imports torch or transformers: only the
runner of a torch-based format does, when it is loaded. Python 3.10-compatible.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.errors import BadInputError
from mlflow_tfexport.serving.conf import read_flavor_conf
from mlflow_tfexport.serving.inputs import parse_text_input
from mlflow_tfexport.serving.postprocess import POSTPROCESS, Columns, Context
from mlflow_tfexport.serving.runtimes import Runner, load_runner
from mlflow_tfexport.serving.runtimes.base import greedy_generate
from mlflow_tfexport.serving.tokenization import TextEncoder, split_rows
from mlflow_tfexport.tasks import TaskSpec, get_task

DEFAULT_BATCH_SIZE = 32


def make_encoder(path: str, conf: Mapping[str, Any], spec: TaskSpec) -> TextEncoder:
    return TextEncoder(
        os.path.join(path, conf[FlavorKey.TOKENIZER_DIR], "tokenizer.json"),
        input_names=conf[FlavorKey.INPUT_NAMES],
        max_length=int(conf[FlavorKey.MAX_LENGTH]),
        pad_token_id=int(conf[FlavorKey.PAD_TOKEN_ID]),
        pair_strategy="only_second" if spec.name == "question-answering" else "longest_first",
    )


class PyfuncBase:
    """What every tfexport pyfunc shares: the task, the runner, labels, batch size and ``params`` checks."""

    def __init__(self, conf: Mapping[str, Any], runner: Runner, model_config: Mapping[str, Any]) -> None:
        self.conf = dict(conf)
        self.spec = get_task(conf[FlavorKey.TASK])
        self.runner = runner
        self.id2label = {int(k): v for k, v in (conf.get(FlavorKey.ID2LABEL) or {}).items()}
        self.batch_size = int(model_config.get("batch_size", DEFAULT_BATCH_SIZE))
        self._defaults = self.spec.param_defaults()

    def get_raw_model(self) -> Runner:
        """The format's runner (``.session`` for ONNX, ``.model`` for the source, ``.module`` for traces)."""
        return self.runner

    def _params(self, params: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
        merged = dict(self._defaults)
        for key, value in (params or {}).items():
            if key not in merged:
                raise BadInputError(
                    f"Unknown param {key!r} for task {self.spec.name!r}; accepted params: "
                    f"{', '.join(sorted(merged))}."
                )
            if value is not None:
                merged[key] = value
        return merged

    def _batch_size(self, p: Mapping[str, Any]) -> int:
        return int(p.get("batch_size") or 0) or self.batch_size


class TfexportPyfunc(PyfuncBase):
    """``predict(data, params)`` with the same request and response for every format."""

    def __init__(self, path: str, conf: Mapping[str, Any], runner: Runner, model_config: Mapping[str, Any]) -> None:
        super().__init__(conf, runner, model_config)
        self.encoder = make_encoder(path, conf, self.spec)

    def predict(self, model_input: Any, params: Optional[Dict[str, Any]] = None) -> Any:
        p = self._params(params)
        texts, pairs = parse_text_input(model_input, self.spec)
        if self.spec.generative:
            return self._generate(texts, p)
        parts: List[Any] = []  # one per chunk: its rows, or its Columns
        for start, stop in split_rows(len(texts), self._batch_size(p)):
            chunk = texts if (start, stop) == (0, len(texts)) else texts[start:stop]
            chunk_pairs = None if pairs is None else pairs[start:stop]
            batch = self.encoder.encode(chunk, chunk_pairs, truncation=bool(p["truncation"]))
            outputs = self.runner.run(batch.feeds)
            ctx = Context(
                encoder=self.encoder,
                id2label=self.id2label,
                problem_type=self.conf.get(FlavorKey.PROBLEM_TYPE),
                mask_token_id=self.conf.get(FlavorKey.MASK_TOKEN_ID),
                texts=chunk,
                pairs=chunk_pairs,
                params=p,
            )
            parts.append(POSTPROCESS[self.spec.name](outputs, batch, ctx))
        return self._format(parts)

    def _format(self, parts: List[Any]) -> Any:
        import pandas as pd

        if parts and all(isinstance(part, Columns) for part in parts):
            return _frame_from_columns(pd, _concat_columns(parts), self.spec.output_columns)
        rows: List[Any] = [row for part in parts for row in (_rows(part) if isinstance(part, Columns) else part)]
        if self.spec.name == "feature-extraction":
            if not rows:
                return np.zeros((0, 0), dtype=np.float32)
            return np.stack(rows)
        if self.spec.name == "token-classification":
            return rows
        columns = [c for c, _ in self.spec.output_columns]
        if not rows:
            return pd.DataFrame(columns=columns)
        return _frame(pd, rows, self.spec.output_columns)

    def _generate(self, texts: List[str], p: Mapping[str, Any]) -> List[str]:
        if self.spec.name == "text2text-generation":
            from mlflow_tfexport.serving.generation import text2text

            return text2text(self.runner, self.encoder, self.conf, texts, p)
        eos = self.conf.get(FlavorKey.EOS_TOKEN_ID)
        max_new = int(p["max_new_tokens"])
        if max_new < 0:
            raise BadInputError(f"params max_new_tokens must be >= 0, received {max_new}.")
        room = self.encoder.max_length - max_new
        if texts and room < 1:
            raise BadInputError(
                f"params max_new_tokens={max_new} leaves no room for the prompt within the model's "
                f"maximum of {self.encoder.max_length} tokens; ask for at most {self.encoder.max_length - 1}."
            )
        native = getattr(self.runner, "generate", None)
        results = []
        for text in texts:
            # Prompt and new tokens must fit in the model's positions: a long prompt keeps its end.
            batch = self.encoder.encode(
                [text], truncation=bool(p["truncation"]), max_length=room, truncation_side="left"
            )
            prompt = batch.feeds["input_ids"][0].tolist()
            if max_new == 0:
                new: List[int] = []
            elif native is not None:
                new = native(prompt, max_new_tokens=max_new, eos_token_id=eos)
            else:
                new = greedy_generate(self.runner, prompt, max_new_tokens=max_new, eos_token_id=eos)
            full = self.encoder.decode(prompt + list(new))
            prompt_len = len(self.encoder.decode(prompt))
            results.append(text + full[prompt_len:])
        return results


#: MLflow's PyFuncModel.predict calls ``inspect.signature`` on this method for every request;
#: a precomputed signature makes that lookup about 3x cheaper.
TfexportPyfunc.predict.__signature__ = inspect.signature(TfexportPyfunc.predict)  # type: ignore[attr-defined]

_FRAME_CACHE: Dict[Tuple[Tuple[str, str], ...], Any] = {}
#: String columns of small batches (a classifier's labels repeat): building a pyarrow-backed string array
#: costs ~0.1-0.2 ms right after an inference, copying a cached one ~0.02 ms. Bounded; copies are returned.
_STRINGS_CACHE: Dict[Tuple[str, ...], Any] = {}
_STRINGS_CACHE_ROWS = 4
_STRINGS_CACHE_SIZE = 4096


_ROW_INDEXES: Dict[int, Any] = {}


def _row_index(pd: Any, n: int) -> Any:
    """``pd.RangeIndex(n)``, shared between frames of small batches (pandas shares index objects between
    frames too; index values are immutable). A caller renaming its frame's index gets a new one next time."""
    index = _ROW_INDEXES.get(n)
    if index is None or index.name is not None:
        index = pd.RangeIndex(n)
        if n <= _STRINGS_CACHE_ROWS:
            _ROW_INDEXES[n] = index
    return index


def _strings(values: List[str], dtype: Any) -> Any:
    """pandas' inferred string array of ``values`` (a fresh object each call: callers may modify it)."""
    key = tuple(values) if len(values) <= _STRINGS_CACHE_ROWS else None
    cached = _STRINGS_CACHE.get(key) if key is not None else None
    if cached is not None:
        return cached.copy()  # a new array over the same immutable buffers
    array = dtype.construct_array_type()._from_sequence(values, dtype=dtype)
    if key is not None and len(_STRINGS_CACHE) < _STRINGS_CACHE_SIZE:
        _STRINGS_CACHE[key] = array.copy()
    return array


def _frame_parts(pd: Any, output_columns: Tuple[Tuple[str, str], ...]) -> Tuple[Any, Any, Any]:
    """(column index, pandas' inferred string dtype, the block constructor or None), cached per task."""
    cached = _FRAME_CACHE.get(output_columns)
    if cached is None:
        probe = pd.DataFrame({"s": ["a"]})["s"].dtype  # the string dtype pandas infers (str on pandas 3)
        try:  # pandas >= 3: a public constructor from ready-made blocks, no inference, no consolidation
            from pandas.api.internals import create_dataframe_from_blocks as from_blocks
        except ImportError:
            from_blocks = None
        cached = _FRAME_CACHE[output_columns] = (pd.Index([c for c, _ in output_columns]), probe, from_blocks)
    return cached  # type: ignore[no-any-return]


def _rows(columns: Columns) -> List[Dict[str, Any]]:
    names = list(columns)
    values = [v.tolist() if isinstance(v, np.ndarray) else v for v in columns.values()]
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


def _concat_columns(parts: List[Columns]) -> Columns:
    if len(parts) == 1:
        return parts[0]
    out = Columns()
    for name, first in parts[0].items():
        chunks = [part[name] for part in parts]
        out[name] = np.concatenate(chunks) if isinstance(first, np.ndarray) else [v for c in chunks for v in c]
    return out


def _frame(pd: Any, rows: List[Dict[str, Any]], output_columns: Tuple[Tuple[str, str], ...]) -> Any:
    """``pd.DataFrame(rows)``, built column by column from the task's typed output columns.

    Rows with other keys (e.g. fill-mask's extra fields) take the general constructor.
    """
    names = tuple(name for name, _ in output_columns)
    if tuple(rows[0]) != names:
        return pd.DataFrame(rows)
    return _frame_from_columns(pd, Columns((n, [row[n] for row in rows]) for n in names), output_columns)


def _frame_from_columns(pd: Any, columns: Columns, output_columns: Tuple[Tuple[str, str], ...]) -> Any:
    """The DataFrame ``pd.DataFrame(rows)`` would give for these columns (same columns, dtypes, values), at a
    fraction of its cost, which dominates a small batch (pandas infers types and builds indexes per call)."""
    index, str_dtype, from_blocks = _frame_parts(pd, output_columns)
    arrays: List[Any] = []
    try:
        for name, kind in output_columns:
            values = columns[name]
            if kind == "double":
                arrays.append(np.asarray(values, dtype=np.float64))
            elif kind == "long":
                arrays.append(np.asarray(values, dtype=np.int64))
            elif kind == "string" and all(type(v) is str for v in values):
                if str_dtype is np.dtype(object):
                    arrays.append(np.array(values, dtype=object))
                else:
                    arrays.append(_strings(values if isinstance(values, list) else list(values), str_dtype))
            else:
                return pd.DataFrame(_rows(columns))
        rows_index = _row_index(pd, len(arrays[0]))
        if from_blocks is not None:
            blocks = [(a.reshape(1, -1) if isinstance(a, np.ndarray) else a, np.array([i]))
                      for i, a in enumerate(arrays)]
            return from_blocks(blocks, index=rows_index, columns=index)
        return pd.DataFrame._from_arrays(arrays, columns=index, index=rows_index, verify_integrity=False)
    except Exception:  # a pandas without these internals: the general constructor
        return pd.DataFrame(_rows(columns))


def _load_pyfunc(path: str, model_config: Optional[Dict[str, Any]] = None) -> Any:
    """Entry point named by ``loader_module`` in every tfexport MLmodel."""
    conf = read_flavor_conf(path)
    config = dict(model_config or {})
    runner = load_runner(path, conf, config)
    if get_task(conf[FlavorKey.TASK]).input_kind == "image":
        from mlflow_tfexport.serving.image_pyfunc import ImagePyfunc

        return ImagePyfunc(path, conf, runner, config)
    return TfexportPyfunc(path, conf, runner, config)
