"""Third-party noise at our stages: onnxruntime's root-logger advice that does not apply to our graphs."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Tuple

#: onnxruntime.quantization logs this on the root logger for every graph not run through its own
#: pre-processing script; the graphs we quantise have their shapes inferred by us (``_with_shapes``).
ORT_PREPROCESS_ADVICE = "Please consider to run pre-processing before quantization"


class _Drop(logging.Filter):
    def __init__(self, prefixes: Tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


@contextlib.contextmanager
def without_root_messages(*prefixes: str) -> Iterator[None]:
    """Drop root-logger records whose message starts with one of ``prefixes`` while the block runs."""
    drop = _Drop(prefixes)
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
