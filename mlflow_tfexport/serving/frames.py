"""The response of table-shaped tasks: a pandas DataFrame built from a batch's output columns.

Inside MLflow's serving environment (the scoring server, ``mlflow models
predict``), where the answer is only written as JSON, ``records`` gives the
rows that MLflow's ``predictions_to_json`` would write for that frame,
without building it.

``pd.DataFrame(rows)`` infers types and builds an index per call, which
dominates a small batch; the task table says each column's type, so the frame
is assembled column by column with public pandas APIs (``pd.array`` for
strings, ``create_dataframe_from_blocks`` where pandas has it). Nothing is
cached per request: every frame is new, so a caller changing one never
changes the next. Serving path: Python 3.10, no torch, no transformers.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

OutputColumns = Tuple[Tuple[str, str], ...]


class Columns(Dict[str, Any]):
    """A batch's output as columns (name -> list, or 1-D array for numbers), in the task's output column order."""


#: Keyed by a task's output columns (a constant of the task table, never a request's value): at most a few
#: hundred bytes per entry, 16 entries.
@lru_cache(maxsize=16)
def _frame_parts(output_columns: OutputColumns) -> Tuple[Any, Any, Optional[Any]]:
    """(column index, pandas' inferred string dtype, the block constructor or None) for these columns."""
    import pandas as pd

    probe = pd.DataFrame({"s": ["a"]})["s"].dtype  # the string dtype pandas infers (str on pandas 3)
    try:  # pandas >= 3: a public constructor from ready-made blocks, no inference, no consolidation
        from pandas.api.internals import create_dataframe_from_blocks as from_blocks
    except ImportError:
        from_blocks = None
    return pd.Index([c for c, _ in output_columns]), probe, from_blocks


def rows_of(columns: Columns) -> List[Dict[str, Any]]:
    names = list(columns)
    values = [v.tolist() if isinstance(v, np.ndarray) else v for v in columns.values()]
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


def concat_columns(parts: Sequence[Columns]) -> Columns:
    if len(parts) == 1:
        return parts[0]
    out = Columns()
    for name, first in parts[0].items():
        chunks = [part[name] for part in parts]
        out[name] = np.concatenate(chunks) if isinstance(first, np.ndarray) else [v for c in chunks for v in c]
    return out


def records(columns: Columns, output_columns: OutputColumns) -> Optional[List[Dict[str, Any]]]:
    """``frame_from_columns(columns, output_columns).to_dict(orient="records")`` without the frame: what
    MLflow's ``predictions_to_json`` writes for that frame, value for value (doubles as Python floats of the
    float64 value, longs as ints); None where a column holds values of other types (take the frame)."""
    values: List[List[Any]] = []
    for name, kind in output_columns:
        column = columns[name]
        if kind == "double":
            values.append(np.asarray(column, dtype=np.float64).tolist())
        elif kind == "long":
            values.append(np.asarray(column, dtype=np.int64).tolist())
        elif kind == "string" and all(type(v) is str for v in column):
            values.append(list(column))
        else:
            return None
    names = [name for name, _ in output_columns]
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


def frame(rows: List[Dict[str, Any]], output_columns: OutputColumns) -> Any:
    """``pd.DataFrame(rows)``, built column by column from the task's typed output columns.

    Rows with other keys (e.g. fill-mask's extra fields) take the general constructor.
    """
    import pandas as pd

    names = tuple(name for name, _ in output_columns)
    if not rows:
        return pd.DataFrame(columns=list(names))
    if tuple(rows[0]) != names:
        return pd.DataFrame(rows)
    return frame_from_columns(Columns((n, [row[n] for row in rows]) for n in names), output_columns)


def frame_from_columns(columns: Columns, output_columns: OutputColumns) -> Any:
    """The DataFrame ``pd.DataFrame(rows)`` would give for these columns (same columns, dtypes, values)."""
    import pandas as pd

    index, str_dtype, from_blocks = _frame_parts(output_columns)
    arrays: List[Any] = []
    for name, kind in output_columns:
        values = columns[name]
        if kind == "double":
            arrays.append(np.asarray(values, dtype=np.float64))
        elif kind == "long":
            arrays.append(np.asarray(values, dtype=np.int64))
        elif kind == "string" and all(type(v) is str for v in values):
            arrays.append(np.array(values, dtype=object) if str_dtype == np.dtype(object)
                          else pd.array(list(values), dtype=str_dtype))
        else:  # mixed or unexpected values: let pandas infer
            return pd.DataFrame(rows_of(columns))
    rows_index = pd.RangeIndex(len(arrays[0]))
    if from_blocks is not None:
        blocks = [(a.reshape(1, -1) if isinstance(a, np.ndarray) else a, np.array([i])) for i, a in enumerate(arrays)]
        return from_blocks(blocks, index=rows_index, columns=index.copy())  # a caller may rename its columns
    return pd.DataFrame(dict(zip(index, arrays, strict=True)), index=rows_index, columns=index, copy=False)
