"""Exported vs reference outputs, tensor by tensor.

``validate`` runs the eager reference (twice, to prove it deterministic) and
the exported model's own serving runner on the same padded inputs, and
compares every output: name, shape, max abs diff vs atol. It never raises on
a mismatch: the report says so.

A static-shape variant (TorchScript, Neuron) runs every request padded up to
its bucket, so its values at padded positions come from a longer padding than
the reference's and mean nothing: nobody reads them (post-processing takes
real tokens only). For those, ``real_positions`` gives the outputs' axes
(``tasks.OutputSpec.axes``) and only positions whose attention mask is 1 are
compared along an output's batch and sequence axes.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport.errors import ExportError, TfexportError, cause
from mlflow_tfexport.tasks import BATCH, SEQUENCE
from mlflow_tfexport.validation.report import OutputCheck, ValidationReport

Feeds = Dict[str, np.ndarray]
RunFn = Callable[[Feeds], Dict[str, np.ndarray]]
#: Output name -> its axes (axis index -> ``BATCH``/``SEQUENCE``/...), as in ``tasks.OutputSpec.axes``.
OutputAxes = Mapping[str, Mapping[int, str]]


def real_values(value: np.ndarray, axes: Optional[Mapping[int, str]], mask: Optional[np.ndarray]) -> np.ndarray:
    """The values of ``value`` at real (unpadded) positions: its batch and sequence axes indexed by ``mask``
    (``attention_mask``, 1 at real tokens). Unchanged when there is no mask, the output has no sequence axis,
    or its shape does not match the mask."""
    if mask is None or not axes:
        return value
    batch = next((int(a) for a, n in axes.items() if n == BATCH), None)
    seq = next((int(a) for a, n in axes.items() if n == SEQUENCE), None)
    if batch is None or seq is None or max(batch, seq) >= value.ndim:
        return value
    moved = np.moveaxis(value, (batch, seq), (0, 1))
    if tuple(moved.shape[:2]) != tuple(mask.shape):
        return value
    selected: np.ndarray = moved[np.asarray(mask).astype(bool)]
    return selected


def compare(
    reference: Dict[str, np.ndarray],
    exported: Dict[str, np.ndarray],
    names: Sequence[str],
    atol: float,
    input_shape: Tuple[int, int],
    *,
    mask: Optional[np.ndarray] = None,
    axes: Optional[OutputAxes] = None,
) -> List[OutputCheck]:
    """One check per name: missing, shape mismatch, or max abs diff against ``atol``.

    With ``mask`` and ``axes`` (static-shape variants) only real positions are compared (``real_values``).
    """
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
        output_axes = (axes or {}).get(name)
        ref_real = real_values(ref, output_axes, mask)
        got_real = real_values(got, output_axes, mask)
        diff = (float(np.max(np.abs(got_real.astype(np.float64) - ref_real.astype(np.float64))))
                if ref_real.size else 0.0)
        ok = bool(np.isfinite(diff) and diff <= atol)
        checks.append(OutputCheck(name, tuple(ref.shape), tuple(got.shape), diff, atol, input_shape, ok,
                                  "" if ok else f"max abs diff {diff:.3g} > atol {atol:g}"))
    return checks


def feed_shape(feeds: Feeds) -> Tuple[int, int]:
    """``(batch, sequence)`` of text feeds; ``(batch, height)`` of image feeds (``pixel_values``)."""
    if "input_ids" in feeds:
        return int(feeds["input_ids"].shape[0]), int(feeds["input_ids"].shape[1])
    if "pixel_values" in feeds:
        pixels = feeds["pixel_values"]
        return int(pixels.shape[0]), int(pixels.shape[2])
    widest = max(feeds.values(), key=lambda v: np.ndim(v))  # a user's export config: its token inputs
    shape = np.shape(widest)
    return int(shape[0]), int(shape[1]) if len(shape) > 1 else 1


class ModelRunFailed(Exception):
    """Running one side of the comparison (``"source"`` or ``"exported"``) failed at an input shape; the export
    stage turns it into an ``ExportError`` naming the architecture, the format and what applies."""

    def __init__(self, side: str, shape: Tuple[int, int], exc: BaseException) -> None:
        super().__init__(f"{side} model at input {shape[0]}x{shape[1]}: {cause(exc)}")
        self.side = side
        self.shape = shape
        self.error = exc


def _run(fn: RunFn, feeds: Feeds, side: str) -> Dict[str, np.ndarray]:
    try:
        return fn(feeds)
    except TfexportError:
        raise
    except Exception as exc:
        raise ModelRunFailed(side, feed_shape(feeds), exc) from exc


def validate(
    reference: RunFn,
    exported: RunFn,
    inputs: Sequence[Feeds],
    output_names: Sequence[str],
    atol: float,
    *,
    real_positions: Optional[OutputAxes] = None,
    mask_input: str = "attention_mask",
) -> ValidationReport:
    """Compare ``exported`` with ``reference`` on every feed set; never raises on a mismatch.

    ``real_positions`` (the outputs' axes): compare only positions where the feeds' ``attention_mask`` is 1
    (``mask_input``: the input that carries it, when a user's export config names it otherwise).
    """
    report = ValidationReport(atol=atol)
    if real_positions is not None:
        report.extra["compared_positions"] = "real tokens only (padded positions of a static-shape variant skipped)"
    for feeds in inputs:
        first = _run(reference, feeds, "source")
        second = _run(reference, feeds, "source")
        for name in output_names:
            if not np.array_equal(first[name], second[name]):
                raise ExportError(
                    f"The reference model is not deterministic: output {name!r} differs between two "
                    "runs on the same input. Put the model in eval mode (model.eval()) before logging it."
                )
        mask = feeds.get(mask_input) if real_positions is not None else None
        report.checks.extend(compare(first, _run(exported, feeds, "exported"), output_names, atol, feed_shape(feeds),
                                     mask=mask, axes=real_positions))
    return report
