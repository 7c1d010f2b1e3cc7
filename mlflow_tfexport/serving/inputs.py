"""Turn what a pyfunc receives (list, str, dict, DataFrame, ndarray) into text columns.

Accepts what ``mlflow models serve`` hands over for ``inputs``,
``dataframe_split`` and ``dataframe_records``. Anything that is not text is
rejected with ``BadInputError`` naming the row and the type received.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport.errors import BadInputError
from mlflow_tfexport.tasks import TaskSpec


def check_strings(values: Sequence[Any], column: str) -> List[str]:
    out: List[str] = []
    for i, value in enumerate(values):
        if isinstance(value, np.str_):
            value = str(value)
        if not isinstance(value, str):
            raise BadInputError(
                f"Column {column!r}, row {i}: expected text (a string), received "
                f"{type(value).__name__} {value!r:.60}. Send strings, e.g. "
                '{"inputs": ["great film", "dull plot"]}.'
            )
        out.append(value)
    return out


def _columns_from_mapping(data: Dict[str, Any], spec: TaskSpec) -> Dict[str, List[Any]]:
    columns: Dict[str, List[Any]] = {}
    for key, value in data.items():
        if isinstance(value, np.ndarray) and value.ndim == 0:
            # ``{"inputs": {"question": "q", ...}}`` reaches the pyfunc as 0-d arrays.
            columns[str(key)] = [value.item()]
        elif isinstance(value, (str, bytes)) or value is None or np.isscalar(value):
            columns[str(key)] = [value]
        else:
            columns[str(key)] = list(value)
    return columns


def _scalar(value: Any) -> Any:
    """The scoring server hands record values over as 0-d arrays: unwrap them."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    return value


def _columns(data: Any, spec: TaskSpec) -> Dict[str, List[Any]]:
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas ships with mlflow
        pd = None  # type: ignore[assignment]
    if pd is not None and isinstance(data, pd.DataFrame):
        return {str(c): data[c].tolist() for c in data.columns}
    if pd is not None and isinstance(data, pd.Series):
        return {str(data.name if data.name is not None else 0): data.tolist()}
    if isinstance(data, str):
        return {"0": [data]}
    if isinstance(data, dict):
        return _columns_from_mapping(data, spec)
    if isinstance(data, np.ndarray):
        if data.ndim == 0:
            data = data.reshape(1)
        if data.ndim == 2 and data.shape[1] == 1:
            data = data[:, 0]
        if data.ndim != 1:
            raise BadInputError(
                f"Expected a 1-D array of strings, received an array of shape {data.shape}."
            )
        return {"0": data.tolist()}
    if isinstance(data, (list, tuple)):
        if data and all(isinstance(row, dict) for row in data):
            keys: List[str] = []
            for row in data:
                keys.extend(k for k in row if k not in keys)
            return {str(k): [_scalar(row.get(k)) for row in data] for k in keys}
        return {"0": list(data)}
    raise BadInputError(
        f"Expected text: a string, a list of strings, a dict or a pandas DataFrame; "
        f"received {type(data).__name__}."
    )


def _unwrap_single_row(columns: Dict[str, List[Any]]) -> Dict[str, List[Any]]:
    """``{"question": [[q1, q2]]}`` (a dict of lists seen as one row) -> ``{"question": [q1, q2]}``."""
    if columns and all(
        len(v) == 1 and isinstance(v[0], (list, tuple, np.ndarray)) and np.ndim(v[0]) >= 1 for v in columns.values()
    ):
        return {k: list(v[0]) for k, v in columns.items()}
    return columns


def request_columns(data: Any, spec: TaskSpec) -> Dict[str, List[Any]]:
    """The columns of a request in any accepted form (list, dict, records, DataFrame, array), by name."""
    return _unwrap_single_row(_columns(data, spec))


def parse_text_input(data: Any, spec: TaskSpec) -> Tuple[List[str], Optional[List[str]]]:
    """Return ``(texts, pairs)``; ``pairs`` is the second text column or None."""
    if type(data) is list and len(spec.text_columns) == 1 and all(type(v) is str for v in data):
        return list(data), None  # the common case, a plain list of strings: nothing to convert
    columns = _unwrap_single_row(_columns(data, spec))
    if not columns:  # no rows and no columns (``dataframe_records: []``, ``{}``): an empty batch
        return [], ([] if len(spec.text_columns) > 1 else None)
    required = spec.text_columns
    first_name = required[0]
    if all(c in columns for c in required):
        first = columns[required[0]]
        second = columns[required[1]] if len(required) > 1 else None
    elif len(required) == 1 and len(columns) == 1:
        first_name, first = next(iter(columns.items()))
        second = None
    elif len(required) == 1 and len(columns) == 2 and "text_pair" in columns and spec.optional_columns:
        first_name, first = next((k, v) for k, v in columns.items() if k != "text_pair")
        second = None
    else:
        expected = " and ".join(repr(c) for c in required)
        optional = f" (optionally {', '.join(map(repr, spec.optional_columns))})" if spec.optional_columns else ""
        raise BadInputError(
            f"Task {spec.name!r} expects column(s) {expected}{optional}; received column(s) "
            f"{', '.join(repr(c) for c in columns) or 'none'}. Rename the column(s), or send "
            "a plain list of strings for a single-text task."
        )
    if second is None and "text_pair" in spec.optional_columns and "text_pair" in columns:
        second = columns["text_pair"]
    if second is not None and len(second) != len(first):
        raise BadInputError(
            f"Columns {first_name!r} and {required[1] if len(required) > 1 else 'text_pair'!r} have different "
            f"lengths ({len(first)} and {len(second)}); send one value of each per row."
        )
    texts = check_strings(first, first_name)
    pairs = None
    if second is not None:
        name = required[1] if len(required) > 1 else "text_pair"
        pairs = check_strings(second, name)
    return texts, pairs
