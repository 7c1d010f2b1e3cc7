"""Validation data given by a user, loaded into one uniform form.

``export(..., validation_data=...)``, ``--validation-data PATH`` and
``mlflow-tfexport validate --data PATH`` all accept the same things, and
:func:`load_validation_data` turns each of them into a :class:`ValidationData`:
a DataFrame with exactly the task's request columns (``TaskSpec.text_columns``
plus the ``optional_columns`` the data has), every cell a string, with a stable
digest of its content and a note of where it came from.

Accepted forms of ``data``:

- ``None``: the source model's logged input example (``source_input_example``) is used, and the
  origin says ``"input example"``; with no input example either, the result is ``None`` (the caller
  reports "synthetic only").
- A list or tuple of strings (tasks with one text column: that column), or a list of dicts (records).
  A question-answering list of strings is refused: it needs a question and a context per row.
- A pandas DataFrame (or Series) with the task's request columns. Other columns (``label``...) are
  ignored and listed in :attr:`ValidationData.ignored_columns`. A task with one text column also takes
  a frame with a single column of another name, as the served model does.
- A path (``str`` or ``os.PathLike``) to a ``.csv`` (UTF-8, header row), ``.parquet``, ``.jsonl`` (one
  JSON object per line) or ``.txt`` (one text per line, blank lines skipped) file.
- An ``mlflow.data`` dataset (``mlflow.data.from_pandas(df)``, ``from_numpy``, Hugging Face datasets).
- A dict of columns (``{"question": [...], "context": [...]}``) or a 1-D NumPy array of strings.

At most ``max_rows`` rows are used (default :data:`DEFAULT_MAX_ROWS`): larger data is cut to its first
``max_rows`` rows and the origin says so (``"file big.csv, first 2000 of 9000 rows"``); the digest is
that of the rows used. Validation runs both models end to end on every row, so the bound keeps an export
from running for hours by accident; pass ``max_rows=None`` to use every row.

Image tasks take their ``image`` column (file paths, URLs or base64 strings) through unchanged.

Errors are :class:`mlflow_tfexport.errors.ExportError` naming what was received, what the task needs
and how to fix it. An input example that does not fit raises :class:`InputExampleError` (a subclass),
so a caller may fall back to synthetic-only validation and say why.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from mlflow_tfexport.errors import ExportError
from mlflow_tfexport.tasks import TaskSpec, get_task
from mlflow_tfexport.validation.files import FileRefused, ReadLimits, read_columns

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd
    from mlflow.data.pandas_dataset import PandasDataset

#: Rows used by default; larger data is cut to its first ``DEFAULT_MAX_ROWS`` rows.
DEFAULT_MAX_ROWS = 2000
#: File suffixes :func:`load_validation_data` reads (case-insensitive).
SUFFIXES: Tuple[str, ...] = (".csv", ".parquet", ".jsonl", ".txt")
#: Hex characters of the sha256 kept in :attr:`ValidationData.digest` (fits MLflow's dataset digest).
DIGEST_LENGTH = 16
#: Dataset name of data given in memory (list, DataFrame, dict, array).
DEFAULT_NAME = "validation-data"
#: Dataset name and origin of the source model's logged input example.
INPUT_EXAMPLE = "input example"

_ACCEPTED = (
    "a list of strings, a pandas DataFrame with the task's columns, a path to a .csv, .parquet, .jsonl or "
    ".txt file, or an mlflow.data dataset"
)


@dataclass(frozen=True)
class DataFile:
    """A data file read for someone else (the worker, for a registry user): within ``limits``, named by
    ``label`` in messages and by ``source`` in the dataset record, never by its path on this machine.

    Its errors say what was wrong (a bound, a line number, a missing column) without quoting the file's
    content (no header names, no cells).

    Attributes:
        path: The file on this machine (already checked to be one the reader may read).
        label: How messages and the dataset record name it, e.g. ``data.csv`` (its name in a data directory)
            or the URI the user gave; never a path of the reading machine.
        limits: The bounds of :class:`~mlflow_tfexport.validation.files.ReadLimits`.
        source: Recorded in the dataset's source (a code source tagged ``tfexport.request.data``) instead of
            ``label``, e.g. the artifact URI the user gave.
    """

    path: str
    label: str
    limits: ReadLimits = ReadLimits()
    source: Optional[str] = None


class InputExampleError(ExportError):
    """The source model's logged input example cannot serve as validation data.

    Raised only when ``data`` is ``None`` and the fallback to ``source_input_example`` fails; the
    caller may validate on synthetic inputs only and report this message.
    """


@dataclass(frozen=True, eq=False)
class ValidationData:
    """Validation rows in one uniform form, whatever form the user gave them in.

    Attributes:
        frame: The task's request columns (required columns first, in the task's order, then the
            optional ones present), every cell a ``str``, index ``0..rows-1``.
        rows: Number of rows in ``frame``.
        digest: The first :data:`DIGEST_LENGTH` hex characters of the sha256 of the canonical content
            (column names and cells, row by row): equal content gives an equal digest, whatever the
            input form.
        origin: Where the rows came from, for reports: ``"file reviews.csv"``, ``"DataFrame"``,
            ``"list"``, ``"mlflow.data dataset <name>"``, ``"input example"``; with
            ``", first N of M rows"`` when the data was cut to ``max_rows``.
        name: Dataset name for :meth:`to_mlflow_dataset` (a file's stem, a dataset's name,
            ``"validation-data"`` or ``"input example"``).
        total_rows: Rows the data had before it was cut to ``max_rows`` (equal to ``rows`` if not cut).
        ignored_columns: Columns of the data that are not request columns of the task (e.g. ``label``).
        source: What :meth:`to_mlflow_dataset` records as the dataset source: a file's absolute path,
            the source of an ``mlflow.data`` dataset, or ``None`` (the code that ran).
    """

    frame: pd.DataFrame
    rows: int
    digest: str
    origin: str
    name: str
    total_rows: int
    ignored_columns: Tuple[str, ...] = ()
    source: Any = None
    cut: bool = False

    @property
    def columns(self) -> Tuple[str, ...]:
        """The request columns, in order."""
        return tuple(str(c) for c in self.frame.columns)

    @property
    def truncated(self) -> bool:
        """Whether the data had more than ``max_rows`` rows and only the first ones are used."""
        return self.total_rows > self.rows or self.cut

    def column(self, name: str) -> List[str]:
        """The cells of request column ``name`` as a list of strings."""
        return [str(v) for v in self.frame[name].tolist()]

    def to_request(self) -> Union[List[str], pd.DataFrame]:
        """What the pyfunc takes for these rows: a list of strings for one column, else a DataFrame copy."""
        if len(self.frame.columns) == 1:
            return self.column(self.columns[0])
        return self.frame.copy()

    def describe(self) -> str:
        """One line for reports, e.g. ``"332 rows from file reviews.csv (digest 3f9a...)"``."""
        return f"{self.rows} row{'s' if self.rows != 1 else ''} from {self.origin} (digest {self.digest})"

    def to_mlflow_dataset(self) -> PandasDataset:
        """An ``mlflow.data`` dataset of ``frame`` for ``mlflow.log_input``, with this digest and name."""
        from mlflow.data.pandas_dataset import from_pandas

        with warnings.catch_warnings():
            # A local path matches more than one registered artifact source; MLflow picks the local one.
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            return from_pandas(self.frame, source=self.source, name=self.name, digest=self.digest)


def load_validation_data(
    data: Any,
    spec: Union[TaskSpec, str],
    *,
    source_input_example: Any = None,
    max_rows: Optional[int] = DEFAULT_MAX_ROWS,
    name: Optional[str] = None,
) -> Optional[ValidationData]:
    """Load validation data given in any accepted form (see the module docstring).

    Args:
        data: ``None``, a list/tuple of strings or of dicts, a pandas DataFrame or Series, a path to a
            ``.csv``/``.parquet``/``.jsonl``/``.txt`` file, an ``mlflow.data`` dataset, a dict of columns
            or a 1-D NumPy array of strings. A ``str`` is always a path: pass one text as ``[text]``.
        spec: The task (a :class:`~mlflow_tfexport.tasks.TaskSpec` or a task name).
        source_input_example: The input example logged with the source model, used when ``data`` is
            ``None``: a list, a string, a dict of columns or a DataFrame.
        max_rows: Rows used at most; larger data is cut to its first ``max_rows`` rows (and ``origin``
            says so). ``None``: no limit.
        name: Dataset name for :meth:`ValidationData.to_mlflow_dataset` (default: the file's stem, the
            dataset's name, ``"validation-data"`` or ``"input example"``).

    Returns:
        The rows in uniform form, or ``None`` when there is neither ``data`` nor an input example.

    Raises:
        ExportError: The data cannot be used: wrong type, unknown file suffix, unreadable file, missing
            columns, no rows, a cell that is not a non-empty string. The message names what was
            received, what was expected and how to fix it.
        InputExampleError: ``data`` is ``None`` and the input example cannot be used.
    """
    task = get_task(spec) if isinstance(spec, str) else spec
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
        raise ExportError(
            f"max_rows={max_rows!r}: expected a positive integer (or None for no limit), e.g. max_rows=500."
        )
    if data is None:
        if source_input_example is None:
            return None
        try:
            raw = _from_memory(source_input_example, task, INPUT_EXAMPLE)
            return _finish(raw, task, max_rows, name or INPUT_EXAMPLE)
        except ExportError as exc:
            raise InputExampleError(
                f"{exc} The source model's logged input example cannot validate the export; pass "
                "validation data explicitly (validation_data=... or --validation-data PATH)."
            ) from exc
    if isinstance(data, DataFile):
        raw = _read_data_file(data, task)
        return _finish(raw, task, data.limits.max_rows, name)
    limits = ReadLimits(max_rows=max_rows) if max_rows is not None else ReadLimits(max_rows=1 << 62)
    raw = _read_file(data, task, limits) if isinstance(data, (str, os.PathLike)) else _from_memory(data, task, None)
    return _finish(raw, task, max_rows, name)


@dataclass
class _Raw:
    """Columns as read, before they are checked: ``columns`` maps a name to its cells."""

    columns: Dict[str, List[Any]]
    origin: str
    name: str = DEFAULT_NAME
    source: Any = None
    more: bool = False  # rows were left unread (a file read up to the row cap)
    quiet: bool = False  # messages must not quote the data (column names, cells)


def _pd() -> Any:
    import pandas as pd

    return pd


def _describe_type(value: Any) -> str:
    kind = type(value)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _needs(task: TaskSpec) -> str:
    needed = " and ".join(repr(c) for c in task.text_columns + task.numeric_columns)
    optional = f" (optionally {', '.join(repr(c) for c in task.optional_columns)})" if task.optional_columns else ""
    return f"column{'s' if len(task.text_columns) > 1 else ''} {needed}{optional}"


def _frame_columns(frame: Any, origin: str) -> Dict[str, List[Any]]:
    names = [str(c) for c in frame.columns]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ExportError(
            f"Validation data ({origin}): column name(s) {', '.join(map(repr, twice))} appear more than once; "
            "expected one column per name. Rename or drop the duplicates."
        )
    return {name: frame.iloc[:, i].tolist() for i, name in enumerate(names)}


def _records(rows: Sequence[Mapping[str, Any]]) -> Dict[str, List[Any]]:
    named = [{str(k): v for k, v in row.items()} for row in rows]
    keys: List[str] = []
    for row in named:
        keys.extend(k for k in row if k not in keys)
    return {k: [row.get(k) for row in named] for k in keys}


def _bare(values: Sequence[Any], task: TaskSpec, origin: str) -> _Raw:
    """A plain sequence of values: the task's only text column."""
    if len(task.text_columns) + len(task.numeric_columns) > 1:
        raise ExportError(
            f"Validation data ({origin}): received {len(values)} value(s) without column names, but task "
            f"{task.name!r} needs {_needs(task)} in every row. Pass a DataFrame (or a .csv/.jsonl file) with "
            "those columns, e.g. "
            f"pandas.DataFrame({{{', '.join(f'{c!r}: [...]' for c in task.text_columns)}}}), or a list of dicts."
        )
    return _Raw({task.text_columns[0]: list(values)}, origin)


def _from_memory(data: Any, task: TaskSpec, origin: Optional[str]) -> _Raw:
    """Columns of data held in memory (a user's object, or the source's input example: ``origin``)."""

    def label(default: str) -> str:
        return origin or default

    if isinstance(data, str):  # an input example's one text (load_validation_data reads a str as a path)
        return _bare([data], task, label("str"))
    if isinstance(data, (list, tuple)):
        if data and all(isinstance(row, Mapping) for row in data):
            return _Raw(_records(data), label("list of records"))
        return _bare(list(data), task, label(type(data).__name__))
    if isinstance(data, Mapping):
        if set(data) and set(map(str, data)) <= {"inputs", "params"} and "inputs" in data:
            return _from_memory(data["inputs"], task, origin)  # {"inputs": ...} payloads
        columns: Dict[str, List[Any]] = {}
        for key, value in data.items():
            if isinstance(value, np.ndarray) and value.ndim == 0:
                value = value.item()
            many = isinstance(value, (list, tuple, np.ndarray)) or _is_series(value)
            columns[str(key)] = list(value) if many else [value]
        lengths = {k: len(v) for k, v in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ExportError(
                f"Validation data ({label('dict')}): the columns have different lengths "
                f"({', '.join(f'{k!r}: {n}' for k, n in lengths.items())}); give one value per row in every column."
            )
        return _Raw(columns, label("dict"))
    if isinstance(data, np.ndarray):
        values = data.reshape(-1) if data.ndim == 0 or (data.ndim == 2 and data.shape[1] == 1) else data
        if values.ndim != 1:
            raise ExportError(
                f"Validation data ({label('array')}): received an array of shape {data.shape}; expected a 1-D "
                f"array of strings, or {_ACCEPTED}."
            )
        return _bare(values.tolist(), task, label("array"))
    pd = _pd()
    if isinstance(data, pd.DataFrame):
        return _Raw(_frame_columns(data, label("DataFrame")), label("DataFrame"))
    if isinstance(data, pd.Series):
        return _bare(data.tolist(), task, label("Series"))
    dataset = _from_mlflow_dataset(data, task)
    if dataset is not None:
        if origin is not None:
            dataset.origin = origin
        return dataset
    raise ExportError(
        f"Validation data: received {_describe_type(data)}; expected {_ACCEPTED} (or None to use the source "
        f"model's input example)."
    )


def _is_series(value: Any) -> bool:
    pd = _pd()
    return isinstance(value, pd.Series)


def _from_mlflow_dataset(data: Any, task: TaskSpec) -> Optional[_Raw]:
    """Columns of an ``mlflow.data`` dataset, or ``None`` when ``data`` is not one."""
    try:
        from mlflow.data.dataset import Dataset
    except ImportError:  # pragma: no cover - mlflow is a dependency
        return None
    if not isinstance(data, Dataset):
        return None
    pd = _pd()
    name = str(getattr(data, "name", "") or "dataset")
    origin = f"mlflow.data dataset {name}"
    frame: Any = None
    df = getattr(data, "df", None)
    if isinstance(df, pd.DataFrame):  # PandasDataset
        frame = df
    elif callable(getattr(data, "to_pandas", None)):
        frame = data.to_pandas()  # type: ignore[attr-defined]
    elif callable(getattr(getattr(data, "ds", None), "to_pandas", None)):  # HuggingFaceDataset
        frame = data.ds.to_pandas()  # type: ignore[attr-defined]
    elif getattr(data, "features", None) is not None:  # NumpyDataset: an array or a dict of arrays
        raw = _from_memory(data.features, task, origin)  # type: ignore[attr-defined]
        raw.name, raw.source = name, data.source
        return raw
    if not isinstance(frame, pd.DataFrame):
        raise ExportError(
            f"Validation data ({origin}): a {_describe_type(data)} whose rows cannot be read as a pandas "
            "DataFrame. Pass the DataFrame itself, or a dataset from mlflow.data.from_pandas(df)."
        )
    return _Raw(_frame_columns(frame, origin), origin, name=name, source=data.source)


def _unreadable(path: Path, kind: str, reason: Any, expected: str) -> ExportError:
    return ExportError(
        f"Validation data file {str(path)!r} cannot be read as {kind}: {reason}. Expected {expected}; "
        "check the file (or save the data again, e.g. with pandas' to_csv, to_parquet or "
        "to_json(orient='records', lines=True))."
    )


def _read_file(data: Union[str, os.PathLike], task: TaskSpec, limits: ReadLimits) -> _Raw:
    path = Path(os.fspath(data)).expanduser()
    suffix = path.suffix.lower()
    if not path.exists():
        hint = (
            " To validate on texts, pass them as a list, e.g. validation_data=['great film', 'dull plot']."
            if suffix not in SUFFIXES
            else ""
        )
        raise ExportError(
            f"Validation data: no file {str(path)!r}. Expected a path to an existing {', '.join(SUFFIXES)} "
            f"file (a str is read as a path).{hint}"
        )
    if path.is_dir():
        raise ExportError(
            f"Validation data: {str(path)!r} is a directory; expected one {', '.join(SUFFIXES)} file. Name the "
            "file inside it."
        )
    if suffix not in SUFFIXES:
        raise ExportError(
            f"Validation data file {str(path)!r}: unknown suffix {suffix or '(none)'!r}; expected one of "
            f"{', '.join(SUFFIXES)}. Save it in one of those formats (e.g. df.to_csv(path, index=False)) or "
            "rename it if it already is one."
        )
    _check_txt(suffix, task, repr(str(path)))
    try:
        read = read_columns(path, suffix, task.text_columns + task.optional_columns, limits, repr(str(path)))
    except FileRefused as exc:
        raise _unreadable(path, _KINDS[suffix], str(exc).split(": ", 1)[-1].rstrip("."), _EXPECTED[suffix]) from None
    columns = _txt_column(read.columns, task) if suffix == ".txt" else read.columns
    return _Raw(columns, f"file {path.name}", name=path.stem or DEFAULT_NAME, source=str(path.resolve()),
                more=read.more)


def _read_data_file(data: DataFile, task: TaskSpec) -> _Raw:
    """A file read for a registry user: bounded, named by its label, errors that quote nothing of it."""
    from mlflow.data.code_dataset_source import CodeDatasetSource

    label = repr(data.label)
    suffix = Path(data.label).suffix.lower()
    if suffix not in SUFFIXES:
        raise FileRefused(
            f"Validation data {label}: unknown suffix {suffix[:16] or '(none)'!r}; expected one of "
            f"{', '.join(SUFFIXES)}."
        )
    _check_txt(suffix, task, label)
    read = read_columns(Path(data.path), suffix, task.text_columns + task.optional_columns, data.limits, label)
    columns = _txt_column(read.columns, task) if suffix == ".txt" else read.columns
    stem = Path(data.label).stem or DEFAULT_NAME
    source = CodeDatasetSource(tags={"tfexport.request.data": (data.source or data.label)[:500]})
    return _Raw(columns, f"file {Path(data.label).name[:200]}", name=stem[:100], source=source, more=read.more,
                quiet=True)


_KINDS = {".csv": "CSV", ".parquet": "Parquet", ".jsonl": "JSON lines", ".txt": "text"}
_EXPECTED = {
    ".csv": "a UTF-8 CSV file whose header row names the columns",
    ".parquet": "a Parquet file with one string column per request column",
    ".jsonl": 'one JSON object per line, e.g. {"text": "great film"}',
    ".txt": "a UTF-8 text file with one text per line",
}


def _check_txt(suffix: str, task: TaskSpec, label: str) -> None:
    if suffix == ".txt" and len(task.text_columns) > 1:
        raise ExportError(
            f"Validation data file {label}: a .txt file holds one text per line, but task {task.name!r} "
            f"needs {_needs(task)} in every row. Use a .csv, .parquet or .jsonl file with those columns."
        )


def _txt_column(columns: Dict[str, List[Any]], task: TaskSpec) -> Dict[str, List[Any]]:
    return {task.text_columns[0]: columns.get("", [])}


def _select(raw: _Raw, task: TaskSpec) -> Tuple[Dict[str, List[Any]], Tuple[str, ...]]:
    """The request columns (renamed to the task's names) and the names of the columns left out."""
    found = raw.columns
    required, optional = task.text_columns + task.numeric_columns, task.optional_columns
    if all(c in found for c in required):
        chosen = {c: c for c in required + tuple(c for c in optional if c in found)}
    elif len(required) == 1 and len(found) == 1:  # one column of another name: the served model takes it too
        chosen = {next(iter(found)): required[0]}
    elif raw.quiet:  # the column names are the file's content: count them, do not quote them
        missing = ", ".join(repr(c) for c in required if c not in found)
        raise ExportError(
            f"Validation data ({raw.origin}) for task {task.name!r} has {len(found)} column(s), without "
            f"{missing}; the task needs {_needs(task)}. Name the columns so in the file's header (or keys)."
        )
    else:
        have = f"column(s) {', '.join(repr(c) for c in found)}" if found else "no columns"
        absent = [c for c in required if c not in found]
        missing = ", ".join(repr(c) for c in absent)
        spare = [c for c in found if c not in required + optional] or ["..."]
        renames = ", ".join(f"{old!r}: {new!r}" for old, new in zip(spare, absent, strict=False))
        fix = (
            f"rename the column(s), e.g. df.rename(columns={{{renames}}}), or name them so in the file's header"
            if found
            else "give at least one row with those columns"
        )
        raise ExportError(
            f"Validation data ({raw.origin}) for task {task.name!r} has {have}; the task needs "
            f"{_needs(task)} (missing: {missing}). Fix: {fix}."
        )
    ignored = tuple(c for c in found if c not in chosen)
    return {new: found[old] for old, new in chosen.items()}, ignored


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    pd = _pd()
    return value is pd.NA or value is pd.NaT


def _check_cells(columns: Dict[str, List[Any]], task: TaskSpec, origin: str,
                 quiet: bool = False) -> Dict[str, List[Any]]:
    out: Dict[str, List[Any]] = {}
    for column, values in columns.items():
        required = column in task.text_columns
        cells: List[str] = []
        if column in task.numeric_columns:  # a user's export config feeds this column to the model as numbers
            out[column] = [_number_cell(value, column, row, origin, quiet) for row, value in enumerate(values)]
            continue
        for row, value in enumerate(values):
            if isinstance(value, np.str_):
                value = str(value)
            where = f"Validation data ({origin}), column {column!r}, row {row} (counting from 0)"
            if _missing(value):
                raise ExportError(
                    f"{where}: expected a string, received a missing value ({value!r}). Drop or fill such rows, "
                    f"e.g. df = df.dropna(subset=[{column!r}])."
                )
            if not isinstance(value, str):
                shown = "" if quiet else f" {value!r:.60}"
                raise ExportError(
                    f"{where}: expected a string, received {_describe_type(value)}{shown}. Every cell of a "
                    f"request column must be text: convert it (df[{column!r}] = df[{column!r}].astype(str)) or "
                    "drop the row."
                )
            if required and not value.strip():
                raise ExportError(
                    f"{where}: expected a non-empty text, received {'a blank one' if quiet else repr(value)}. "
                    "Remove blank rows, e.g. "
                    f"df = df[df[{column!r}].str.strip() != '']."
                )
            cells.append(value)
        out[column] = cells
    return out


def _number_cell(value: Any, column: str, row: int, origin: str, quiet: bool = False) -> Any:
    """A cell of a numeric request column: a finite number or a list of them, as plain Python values."""
    items = value.tolist() if isinstance(value, np.ndarray) else value
    flat = items if isinstance(items, (list, tuple)) else [items]
    if not flat or not all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                           and math.isfinite(float(v)) for v in flat):
        raise ExportError(
            f"Validation data ({origin}), column {column!r}, row {row} (counting from 0): expected a finite number "
            f"(or a list of numbers) for the model's numeric input, received {_describe_type(value)}"
            + ("." if quiet else f" {value!r:.60}.")
        )
    plain = [float(v) if isinstance(v, (float, np.floating)) else int(v) for v in flat]
    return plain if isinstance(items, (list, tuple)) else plain[0]


def digest_columns(columns: Mapping[str, Sequence[str]]) -> str:
    """The digest of request columns: sha256 of their names and cells, row by row, as canonical JSON.

    Args:
        columns: Column name -> cells (strings), in the frame's column order.

    Returns:
        The first :data:`DIGEST_LENGTH` hex characters of the sha256.
    """
    names = list(columns)
    rows = [list(row) for row in zip(*(columns[n] for n in names), strict=True)]
    canonical = json.dumps({"columns": names, "rows": rows}, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:DIGEST_LENGTH]


def _finish(raw: _Raw, task: TaskSpec, max_rows: Optional[int], name: Optional[str]) -> ValidationData:
    columns, ignored = _select(raw, task)
    total = len(next(iter(columns.values()))) if columns else 0
    if total == 0:
        raise ExportError(
            f"Validation data ({raw.origin}) has no rows; expected at least one row with {_needs(task)}. "
            "Give a non-empty list, frame or file (a .txt file's blank lines are skipped)."
        )
    origin = raw.origin
    if max_rows is not None and total > max_rows:
        columns = {c: v[:max_rows] for c, v in columns.items()}
        origin = f"{origin}, first {max_rows} of {total} rows"
    if raw.more:
        origin = f"{raw.origin}, first {min(total, max_rows or total)} rows (the rest not read)"
    cells = _check_cells(columns, task, raw.origin, raw.quiet)
    pd = _pd()
    frame = pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in cells.items()})
    rows = len(frame)
    return ValidationData(
        frame=frame,
        rows=rows,
        digest=digest_columns(cells),
        origin=origin,
        name=name or raw.name,
        total_rows=total,
        ignored_columns=ignored,
        source=raw.source,
        cut=raw.more,
    )
