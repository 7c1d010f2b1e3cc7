"""Reading a validation data file within bounds: streamed, stopped at the row cap, nothing parsed unbounded.

:class:`ReadLimits` holds every bound; :func:`read_columns` reads a ``.csv``, ``.parquet``, ``.jsonl`` or
``.txt`` file into columns of at most ``max_rows`` rows, never holding more than about ``max_rows`` rows of at
most ``max_line_bytes`` each in memory:

- text formats are read line by line (``readline`` with a length limit): a line longer than
  ``max_line_bytes`` (e.g. a 55 MB one-line file, or a sparse file of NUL bytes) is refused when that many bytes
  have been read, and reading stops after ``max_rows`` rows, so a 10M-row file costs what its first rows cost;
- at most ``max_bytes`` bytes of a file are read;
- JSON lines nested deeper than ``max_depth`` are refused before ``json.loads`` sees them;
- Parquet is read row group by row group, only the task's columns, and a file whose row groups needed for
  ``max_rows`` rows would decompress to more than ``max_decompressed_bytes`` (by the file's metadata) is
  refused before any page is decompressed.

Errors are :class:`FileRefused` (an ``ExportError``): they name the bound, the line or row, and never
quote the file's content.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Sequence

from mlflow_tfexport.errors import ExportError, MissingDependencyError

DEFAULT_MAX_BYTES = 256 << 20
DEFAULT_MAX_LINE_BYTES = 1 << 20
DEFAULT_MAX_DEPTH = 32
DEFAULT_MAX_DECOMPRESSED_BYTES = 64 << 20
DEFAULT_DOWNLOAD_TIMEOUT_S = 120.0


class FileRefused(ExportError):
    """A data file outside the bounds of :class:`ReadLimits`, or one that cannot be parsed."""


@dataclass(frozen=True)
class ReadLimits:
    """Bounds on reading one validation data file (every one a worker option, see ``docs/worker-data.md``).

    Attributes:
        max_rows: Rows read at most; reading stops there (the origin says more rows were left unread).
        max_bytes: Bytes of a file read (or downloaded) at most.
        max_line_bytes: Bytes of one line (a CSV record line, a JSON line, a text line) at most.
        max_depth: Nesting of ``[`` / ``{`` in one JSON line at most.
        max_decompressed_bytes: Uncompressed bytes of the Parquet row groups read (the task's columns) at most.
        download_timeout_s: Wall time of one download at most (used by the worker's fetch).
    """

    max_rows: int = 2000
    max_bytes: int = DEFAULT_MAX_BYTES
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH
    max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED_BYTES
    download_timeout_s: float = DEFAULT_DOWNLOAD_TIMEOUT_S

    def __post_init__(self) -> None:
        for name in ("max_rows", "max_bytes", "max_line_bytes", "max_depth", "max_decompressed_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ReadLimits.{name}={value!r}: expected a positive integer")
        if not (isinstance(self.download_timeout_s, (int, float)) and self.download_timeout_s > 0):
            raise ValueError(f"ReadLimits.download_timeout_s={self.download_timeout_s!r}: expected seconds > 0")


@dataclass
class Columns:
    """What a file gave: columns of at most ``max_rows`` rows, and whether rows were left unread."""

    columns: Dict[str, List[Any]]
    more: bool = False


def _refused(label: str, kind: str, what: str) -> FileRefused:
    return FileRefused(f"Validation data file {label} cannot be read as {kind}: {what}.")


class _Lines:
    """The lines of a binary file, each at most ``max_line_bytes``, at most ``max_bytes`` in all."""

    def __init__(self, f: IO[bytes], limits: ReadLimits, label: str, kind: str) -> None:
        self._f, self._limits, self._label, self._kind = f, limits, label, kind
        self.number = 0
        self.read = 0

    def __iter__(self) -> Iterator[str]:
        limit = self._limits.max_line_bytes
        while True:
            raw = self._f.readline(limit + 1)
            if not raw:
                return
            self.number += 1
            self.read += len(raw)
            if len(raw) > limit or (len(raw) == limit + 1 and not raw.endswith(b"\n")):
                raise _refused(self._label, self._kind, f"line {self.number} is longer than {limit} bytes "
                               "(max_line_bytes); split it, or raise --data-max-line-bytes")
            if self.read > self._limits.max_bytes:
                raise _refused(self._label, self._kind, f"more than {self._limits.max_bytes} bytes read "
                               "(max_bytes) before the rows needed were found")
            if self.number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _refused(self._label, self._kind, f"line {self.number} is not UTF-8 (byte {exc.start})") from None


def read_columns(path: Path, suffix: str, columns_wanted: Sequence[str], limits: ReadLimits, label: str) -> Columns:
    """The columns of a data file, read within ``limits``. ``label`` names the file in errors (never its content).

    ``columns_wanted`` are the task's columns (Parquet reads only those, when present).
    """
    if suffix == ".parquet":
        return _parquet(path, columns_wanted, limits, label)
    readers = {".csv": _csv, ".jsonl": _jsonl, ".txt": _txt}
    try:
        with open(path, "rb") as f:
            return readers[suffix](f, limits, label)
    except OSError as exc:
        raise _refused(label, suffix.lstrip("."), f"the file cannot be opened ({type(exc).__name__})") from None


def _csv(f: IO[bytes], limits: ReadLimits, label: str) -> Columns:
    lines = _Lines(f, limits, label, "CSV")
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return Columns({})
        names = [str(n) for n in header]
        rows: List[List[str]] = []
        more = False
        for row in reader:
            if not row:
                continue
            if len(rows) == limits.max_rows:
                more = True
                break
            if len(row) > len(names):
                raise _refused(label, "CSV", f"record {len(rows) + 1} has {len(row)} fields, the header names "
                               f"{len(names)}; quote fields that hold commas")
            rows.append(row)
    except csv.Error as exc:
        raise _refused(label, "CSV", f"line {lines.number}: {exc}") from None
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise _refused(label, "CSV", f"{len(twice)} column name(s) appear more than once in the header row")
    cols: Dict[str, List[Any]] = {n: [] for n in names}
    for row in rows:
        for i, n in enumerate(names):
            cols[n].append(row[i] if i < len(row) else None)
    return Columns(cols, more)


def _depth_ok(line: str, max_depth: int) -> bool:
    """Whether the brackets of a JSON text nest at most ``max_depth`` deep (strings skipped)."""
    if line.count("[") + line.count("{") <= max_depth:  # the common case, at C speed
        return True
    depth = 0
    in_string = escaped = False
    for ch in line:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > max_depth:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def _jsonl(f: IO[bytes], limits: ReadLimits, label: str) -> Columns:
    lines = _Lines(f, limits, label, "JSON lines")
    records: List[Dict[str, Any]] = []
    more = False
    for line in lines:
        if not line.strip():
            continue
        if len(records) == limits.max_rows:
            more = True
            break
        if not _depth_ok(line, limits.max_depth):
            raise _refused(label, "JSON lines", f"line {lines.number} nests deeper than {limits.max_depth} "
                           "(max_depth); expected one flat JSON object per line")
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as exc:
            where = f" at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            raise _refused(label, "JSON lines", f"line {lines.number} is not JSON{where}") from None
        if not isinstance(row, dict):
            raise _refused(label, "JSON lines", f"line {lines.number} is a JSON {type(row).__name__}, expected "
                           'an object such as {"text": "great film"}')
        records.append({str(k): v for k, v in row.items()})
    keys: List[str] = []
    for row in records:
        keys.extend(k for k in row if k not in keys)
    return Columns({k: [row.get(k) for row in records] for k in keys}, more)


def _txt(f: IO[bytes], limits: ReadLimits, label: str) -> Columns:
    texts: List[str] = []
    more = False
    for line in _Lines(f, limits, label, "text"):
        text = line.rstrip("\n").rstrip("\r")
        if not text.strip():
            continue
        if len(texts) == limits.max_rows:
            more = True
            break
        texts.append(text)
    return Columns({"": texts}, more)  # the caller names the one column


def _parquet(path: Path, wanted: Sequence[str], limits: ReadLimits, label: str) -> Columns:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingDependencyError(
            f"Reading validation data file {label} (Parquet) needs pyarrow: pip install pyarrow ({exc}). "
            "Or save the data as .csv or .jsonl."
        ) from exc
    try:
        size = os.path.getsize(path)
        if size > limits.max_bytes:
            raise _refused(label, "Parquet", f"the file has {size} bytes, over {limits.max_bytes} (max_bytes)")
        pf = pq.ParquetFile(str(path))
        meta = pf.metadata
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        chosen = [n for n in names if n in wanted] or (names if len(names) == 1 else [])
        if not chosen:  # the caller reports the missing columns
            return Columns({n: [] for n in dict.fromkeys(names)})
        index = [names.index(n) for n in chosen]
        groups: List[int] = []
        rows = uncompressed = 0
        for g in range(meta.num_row_groups):
            if rows >= limits.max_rows:
                break
            group = meta.row_group(g)
            uncompressed += sum(group.column(i).total_uncompressed_size for i in index)
            if uncompressed > limits.max_decompressed_bytes:
                raise _refused(label, "Parquet", f"the first {rows + group.num_rows} rows decompress to more than "
                               f"{limits.max_decompressed_bytes} bytes (max_decompressed_bytes)")
            groups.append(g)
            rows += group.num_rows
        if not groups:
            return Columns({n: [] for n in chosen})
        table = pf.read_row_groups(groups, columns=chosen)
    except FileRefused:
        raise
    except (ValueError, OSError, IndexError) as exc:  # pyarrow's ArrowInvalid / ArrowIOError derive from these
        raise _refused(label, "Parquet", f"not a readable Parquet file ({type(exc).__name__})") from None
    more = table.num_rows > limits.max_rows or rows < meta.num_rows
    table = table.slice(0, limits.max_rows)
    return Columns({n: table.column(n).to_pylist() for n in chosen}, more)

