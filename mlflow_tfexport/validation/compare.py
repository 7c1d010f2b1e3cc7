"""Exported vs reference outputs, tensor by tensor.

``validate`` runs the eager reference (twice, to prove it deterministic) and
the exported model's own serving runner on the same padded inputs, and
compares every output: name, shape, max abs diff vs atol. It never raises on
a mismatch: the report says so.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np

from mlflow_tfexport.errors import ExportError
from mlflow_tfexport.validation.report import OutputCheck, ValidationReport

Feeds = Dict[str, np.ndarray]
RunFn = Callable[[Feeds], Dict[str, np.ndarray]]


def compare(
    reference: Dict[str, np.ndarray],
    exported: Dict[str, np.ndarray],
    names: Sequence[str],
    atol: float,
    input_shape: Tuple[int, int],
) -> List[OutputCheck]:
    """One check per name: missing, shape mismatch, or max abs diff against ``atol``."""
    checks = []
    for name in names:
        ref = reference[name]
        if name not in exported:
            checks.append(OutputCheck(name, tuple(ref.shape), None, None, atol, input_shape, False,
                                      f"missing from exported outputs {sorted(exported)}"))
            continue
        got = exported[name]
        if tuple(got.shape) != tuple(ref.shape):
            checks.append(OutputCheck(name, tuple(ref.shape), tuple(got.shape), None, atol, input_shape, False,
                                      f"shape {tuple(got.shape)} != reference {tuple(ref.shape)}"))
            continue
        diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
        ok = bool(np.isfinite(diff) and diff <= atol)
        checks.append(OutputCheck(name, tuple(ref.shape), tuple(got.shape), diff, atol, input_shape, ok,
                                  "" if ok else f"max abs diff {diff:.3g} > atol {atol:g}"))
    return checks


def feed_shape(feeds: Feeds) -> Tuple[int, int]:
    """``(batch, sequence)`` of text feeds; ``(batch, height)`` of image feeds (``pixel_values``)."""
    if "input_ids" in feeds:
        return int(feeds["input_ids"].shape[0]), int(feeds["input_ids"].shape[1])
    pixels = feeds["pixel_values"]
    return int(pixels.shape[0]), int(pixels.shape[2])


def validate(
    reference: RunFn,
    exported: RunFn,
    inputs: Sequence[Feeds],
    output_names: Sequence[str],
    atol: float,
) -> ValidationReport:
    """Compare ``exported`` with ``reference`` on every feed set; never raises on a mismatch."""
    report = ValidationReport(atol=atol)
    for feeds in inputs:
        first = reference(feeds)
        second = reference(feeds)
        for name in output_names:
            if not np.array_equal(first[name], second[name]):
                raise ExportError(
                    f"The reference model is not deterministic: output {name!r} differs between two "
                    "runs on the same input. Put the model in eval mode (model.eval()) before logging it."
                )
        report.checks.extend(compare(first, exported(feeds), output_names, atol, feed_shape(feeds)))
    return report
