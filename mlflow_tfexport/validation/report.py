"""Exported vs reference outputs, returned as data.

``validate`` runs the eager reference (twice, to prove it deterministic) and
the exported model's own serving runner on the same padded inputs, and
compares every output: name, shape, max abs diff vs atol. The report is data:
the CLI renders it, the registry stores it (JSON artifact, markdown
description), and a failure raises once listing every failing output.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport.errors import ExportError, ValidationFailedError

Feeds = Dict[str, np.ndarray]
RunFn = Callable[[Feeds], Dict[str, np.ndarray]]


@dataclass
class OutputCheck:
    name: str
    shape: Tuple[int, ...]  # reference shape
    exported_shape: Optional[Tuple[int, ...]]
    max_abs_diff: Optional[float]
    atol: float
    input_shape: Tuple[int, int]
    passed: bool
    problem: str = ""

    @property
    def mark(self) -> str:
        return "✓" if self.passed else "✗"


@dataclass
class ValidationReport:
    atol: float
    checks: List[OutputCheck] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)
    tags: Dict[str, str] = field(default_factory=dict)  # registry tags the check adds (e.g. label agreement)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def max_abs_diff(self) -> float:
        diffs = [c.max_abs_diff for c in self.checks if c.max_abs_diff is not None]
        return float(max(diffs)) if diffs else float("nan")

    @property
    def shapes(self) -> List[Tuple[int, int]]:
        return sorted({c.input_shape for c in self.checks})

    def failures(self) -> List[OutputCheck]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "passed": self.passed,
            "atol": self.atol,
            "max_abs_diff": self.max_abs_diff,
            "checks": [asdict(c) for c in self.checks],
            **self.extra,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        lines = []
        for c in self.checks:
            diff = "n/a" if c.max_abs_diff is None else f"{c.max_abs_diff:.3g}"
            shape = "x".join(map(str, c.shape))
            detail = f" — {c.problem}" if c.problem else ""
            lines.append(
                f"  {c.mark} {c.name} at input {c.input_shape[0]}x{c.input_shape[1]}: shape {shape}, "
                f"max abs diff {diff} (atol {c.atol:g}){detail}"
            )
        return "\n".join(lines)

    def to_markdown(self, gap: str = "") -> str:
        """A markdown table; ``gap`` (e.g. ``"&emsp;"``) is appended to every cell but the last column's."""

        def row(*cells: str) -> str:
            return "| " + " | ".join([c + gap for c in cells[:-1]] + [cells[-1]]) + " |"

        rows = [row("output", "input shape", "output shape", "max abs diff", "atol", "ok"), "|---|---|---|---|---|---|"]
        for c in self.checks:
            diff = "n/a" if c.max_abs_diff is None else f"{c.max_abs_diff:.2e}"
            rows.append(row(f"`{c.name}`", f"{c.input_shape[0]}x{c.input_shape[1]}", "x".join(map(str, c.shape)),
                            diff, f"{c.atol:g}", c.mark))
        return "\n".join(rows)


def compare(
    reference: Dict[str, np.ndarray],
    exported: Dict[str, np.ndarray],
    names: Sequence[str],
    atol: float,
    input_shape: Tuple[int, int],
) -> List[OutputCheck]:
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


def raise_for_failures(report: ValidationReport, what: str) -> None:
    """Raise once, listing every failing output, if the report did not pass."""
    if report.passed:
        return
    failing = report.failures()
    listing = "; ".join(
        f"{c.name} at {c.input_shape[0]}x{c.input_shape[1]}: {c.problem}" for c in failing
    )
    raise ValidationFailedError(
        f"Validation of {what} failed for {len(failing)} output(s): {listing}. Nothing was registered. "
        "Raise atol if the difference is acceptable for this model, or try another opset/exporter.",
        report=report,
    )
