"""The validation report: one check per output and input shape, as data, and its renderings.

The report is data: the CLI renders it (``to_text``), the registry stores it
(``to_json`` as an artifact, ``describe`` as the version's markdown
description), and a failure raises once listing every failing output
(``raise_for_failures``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mlflow_tfexport.constants import Format
from mlflow_tfexport.errors import ValidationFailedError

# MLflow's UI renders markdown tables without cell padding (its sanitizer drops style attributes):
# an em space after each cell keeps the columns, their headers in particular, from running together.
UI_CELL_GAP = "&emsp;"


@dataclass
class OutputCheck:
    """One output at one input shape: reference and exported shapes, max abs diff, verdict."""

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
    """Every check of one validation; passes when there is at least one check and all passed."""

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


def describe(
    report: ValidationReport,
    *,
    fmt: str,
    source_uri: str,
    task: str,
    architecture: Optional[str],
    opset: Optional[int] = None,
    trace_shapes: Sequence[Tuple[int, int]] = (),
) -> str:
    """The registered version's description: what was exported from where, the verdict, the report table."""
    what = {Format.ONNX: f"ONNX (opset {opset}, dynamic batch and sequence)"}.get(
        fmt, f"{fmt} (trace shapes {', '.join(f'{b}x{s}' for b, s in trace_shapes)})"
    )
    return (
        # Plain first words: the registry's versions table previews the description's raw text.
        f"{what} export of `{source_uri}` ({task}, {architecture}).\n\n"
        f"Validated against the eager model on padded batches: **{'passed' if report.passed else 'failed'}**, "
        f"max abs diff {report.max_abs_diff:.2e} (atol {report.atol:g}).\n\n" + report.to_markdown(gap=UI_CELL_GAP)
    )
