"""The validation report: one check per output and input shape, as data, and its renderings.

The report is data: the CLI renders it (``to_text``), the registry stores it
(``to_json`` as an artifact, ``describe`` as the version's markdown
description), and a failure raises once listing every failing output
(``raise_for_failures``), with the advice that applies to the check that failed.

Two kinds of checks: tensor checks (``OutputCheck``: one output at one input shape,
max abs diff against ``atol``) and the task-level check on real data
(``AgreementCheck``: the served answers of the variant against the source's on
the user's rows, by the task's agreement metric). Without real rows the report
says "synthetic only" and why.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mlflow_tfexport.constants import Format, Tag
from mlflow_tfexport.errors import ValidationFailedError

# MLflow's UI renders markdown tables without cell padding (its sanitizer drops style attributes):
# an em space after each cell keeps the columns, their headers in particular, from running together.
UI_CELL_GAP = "&emsp;"
#: What the report says (and ``tfexport.data_origin`` records) when no real rows validated the variant.
SYNTHETIC_ONLY = "synthetic only"
#: The advice of a failing tensor check of an fp32 ONNX variant.
ATOL_ADVICE = "Raise atol if the difference is acceptable for this model, or try another opset/exporter."
#: The advice of a failing tensor check of an fp32 static-shape variant (no opset or exporter there).
STATIC_ADVICE = (
    "A static-shape variant is compared at real positions only, so this difference is on real tokens: the model's "
    "answer there changes with how far its input is padded (a bucket pads further than the batch's longest row), "
    "or the trace recorded a shape-dependent step. Raise atol if the difference is acceptable for this model, "
    "use buckets closer to your request lengths, or format='onnx' (dynamic axes, no padding to a bucket)."
)
#: A max abs diff above this is a wrong result, not rounding: raising atol would hide it.
REAL_MISMATCH = 0.1
#: The advice of a failing tensor-level check of a quantised variant: atol does not apply there.
QUANTIZED_ADVICE = (
    "Lower min_agreement (CLI: --min-agreement) if this agreement is acceptable for this model, or try another "
    "quantisation mode (quantize=, CLI: --quantize) or none; atol does not apply to a quantised variant."
)
#: How many differing rows a report shows.
SHOWN_EXAMPLES = 3


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


def number(value: float) -> str:
    """A measured value for people: a count as an integer, anything else to 3 significant digits."""
    return str(int(value)) if float(value).is_integer() and abs(value) >= 1 else f"{value:.3g}"


@dataclass
class AgreementCheck:
    """The task-level check on real data: the variant's served answers against the source's on the same rows.

    ``value`` is the task's agreement metric (``metric``, ``tasks.AgreementMetric``) over ``rows`` rows; the
    variant passes when it reaches ``threshold`` (the task's fp32 value, or ``min_agreement`` for a quantised
    variant, ``mode``). ``details`` holds what is recorded beside it (max score difference, mean cosine);
    ``examples`` describes a few of the ``differing`` rows; ``problem`` says why no value could be measured.
    """

    metric: str
    value: float
    threshold: float
    passed: bool
    rows: int
    origin: str
    digest: str
    mode: str = "fp32"
    details: Dict[str, float] = field(default_factory=dict)
    differing: int = 0
    examples: List[str] = field(default_factory=list)
    problem: str = ""
    advice: str = ""
    note: str = ""

    @property
    def mark(self) -> str:
        return "✓" if self.passed else "✗"

    def summary(self) -> str:
        """One line, e.g. ``label_agreement 1.0000 on 332 rows from file reviews.csv (fp32: >= 1 required;
        max_score_diff 2.1e-07)``."""
        if self.problem:
            return f"{self.metric} not measured on {self.rows} rows from {self.origin}: {self.problem}"
        details = "".join(f"; {k} {number(v)}" for k, v in self.details.items())
        return (f"{self.metric} {self.value:.4f} on {self.rows} rows from {self.origin} "
                f"({self.mode}: >= {self.threshold:g} required{details})")

    def failure(self) -> str:
        """What failed, with the first differing rows."""
        if self.problem:
            return f"real data: {self.summary()}"
        shown = "; ".join(self.examples[:SHOWN_EXAMPLES])
        return (f"real data: {self.metric} {self.value:.4f} < {self.threshold:g} required ({self.mode}) on "
                f"{self.rows} rows from {self.origin}; {self.differing} row(s) differ"
                + (f", e.g. {shown}" if shown else ""))

    def tags(self) -> Dict[str, str]:
        """The registry tags that record it."""
        return {
            Tag.DATA_ROWS: str(self.rows),
            Tag.DATA_DIGEST: self.digest,
            Tag.DATA_ORIGIN: self.origin,
            Tag.AGREEMENT_METRIC: self.metric,
            Tag.AGREEMENT: "n/a" if self.problem else f"{self.value:.4f}",
            Tag.AGREEMENT_THRESHOLD: f"{self.threshold:g}",
        }


@dataclass
class ValidationReport:
    """Every check of one validation; passes when there is at least one check and all passed."""

    atol: float
    checks: List[OutputCheck] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)
    tags: Dict[str, str] = field(default_factory=dict)  # registry tags the check adds (e.g. label agreement)
    agreement: Optional[AgreementCheck] = None  # the check on real data, when there were rows
    synthetic_reason: str = ""  # why there were none (no validation data and no input example...)

    @property
    def passed(self) -> bool:
        tensors = bool(self.checks) and all(c.passed for c in self.checks)
        return tensors and (self.agreement is None or self.agreement.passed)

    def real_data(self) -> str:
        """One line on the check on real data, or why there was none."""
        if self.agreement is not None:
            return f"{self.agreement.mark} real data: {self.agreement.summary()}"
        return f"{SYNTHETIC_ONLY}: {self.synthetic_reason or 'no validation data'}"

    @property
    def max_abs_diff(self) -> float:
        diffs = [c.max_abs_diff for c in self.checks if c.max_abs_diff is not None]
        return float(max(diffs)) if diffs else float("nan")

    @property
    def shapes(self) -> List[Tuple[int, int]]:
        return sorted({c.input_shape for c in self.checks})

    def gate(self) -> str:
        """The verdict and what decided it, in one line.

        fp32: ``passed: max abs diff 2.10e-06 <= atol 0.0001`` (and the check on real data, if any).
        Quantised: the agreement it was gated on (``passed: label_agreement 0.988 >= 0.98 on 332 rows``),
        never the fp32 atol its tensors exceed by design.
        """
        verdict = "passed" if self.passed else "failed"
        check = self.agreement
        real = None
        if check is not None:
            real = (f"{check.metric} not measured on {check.rows} rows: {check.problem}" if check.problem else
                    f"{check.metric} {check.value:.3f} {'>=' if check.passed else '<'} {check.threshold:g} "
                    f"on {check.rows} rows")
        if self.extra.get("quantized"):
            rates = self.extra.get("label_agreement") or {}
            threshold = float(self.extra.get("min_agreement", 0.0))
            worst = min(rates.values()) if rates else 0.0
            synthetic = (f"agreement {worst:.3f} {'>=' if worst >= threshold else '<'} {threshold:g} "
                         "on random tokens")
            return f"{verdict}: {real}; {synthetic}" if real else f"{verdict}: {synthetic}"
        worst_diff = self.max_abs_diff
        tensors = (f"max abs diff {worst_diff:.2e} {'<=' if worst_diff <= self.atol else '>'} atol {self.atol:g}"
                   if worst_diff == worst_diff else "no tensor check ran")
        return f"{verdict}: {tensors}; {real}" if real else f"{verdict}: {tensors}"

    def tensor_note(self) -> str:
        """The tensor difference as information, for a quantised variant (its gate is agreement, not atol)."""
        return (f"max abs diff {self.max_abs_diff:.2e} against the fp32 source (information: int8 rounding; "
                "the fp32 atol does not apply)")

    def failures(self) -> List[OutputCheck]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "passed": self.passed,
            "atol": self.atol,
            "max_abs_diff": self.max_abs_diff,
            "checks": [asdict(c) for c in self.checks],
            "agreement": asdict(self.agreement) if self.agreement is not None else None,
            "real_data": self.real_data(),
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
        lines.append(f"  {self.real_data()}")
        if self.agreement is not None and self.agreement.note:
            lines.append(f"    {self.agreement.note}")
        return "\n".join(lines)

    def to_markdown(self, gap: str = "") -> str:
        """A markdown table; ``gap`` (e.g. ``"&emsp;"``) is appended to every cell but the last column's."""

        def row(*cells: str) -> str:
            return "| " + " | ".join([c + gap for c in cells[:-1]] + [cells[-1]]) + " |"

        rows = [row("output", "input shape", "output shape", "max abs diff", "atol", "ok"), "|---|---|---|---|---|---|"]
        for c in self.checks:
            diff = "n/a" if c.max_abs_diff is None else f"{c.max_abs_diff:.2e}"
            rows.append(row(f"`{c.name}`", f"{c.input_shape[0]}x{c.input_shape[1]}", "x".join(map(str, c.shape)),
                            diff, "n/a" if self.extra.get("quantized") else f"{c.atol:g}", c.mark))
        return "\n".join(rows)


def tensor_advice(report: ValidationReport, failing: Sequence[OutputCheck]) -> str:
    """What applies to failing tensor checks: the quantised, the real-mismatch, the static or the ONNX advice."""
    if report.extra.get("quantized"):
        return QUANTIZED_ADVICE
    worst = max((c.max_abs_diff for c in failing if c.max_abs_diff is not None), default=0.0)
    fmt = report.extra.get("format")
    if worst > REAL_MISMATCH:
        static = fmt in (Format.TORCHSCRIPT, Format.NEURON)
        return (
            f"A max abs diff of {worst:.3g} is a real mismatch between the {fmt or 'exported'} model and the source, "
            "not a tolerance issue: do not raise atol. The exported model computes something else at these shapes "
            "(typically a step of the forward that depends on the input length and was fixed at the export's "
            + ("trace shape); try format='onnx'." if static else "shape); export at the lengths you serve, or use "
               "format='torchscript' with buckets at those lengths.")
        )
    return STATIC_ADVICE if fmt in (Format.TORCHSCRIPT, Format.NEURON) else ATOL_ADVICE


def failure_parts(report: ValidationReport) -> Tuple[str, str]:
    """(what failed: every failing output and the check on real data; the advice that applies to each)."""
    failing = report.failures()
    parts: List[str] = []
    advice: List[str] = []
    if failing or not report.checks:
        listing = "; ".join(f"{c.name} at {c.input_shape[0]}x{c.input_shape[1]}: {c.problem}" for c in failing)
        parts.append(f"{len(failing)} output(s): {listing}" if failing else "no tensor check ran")
        advice.append(tensor_advice(report, failing))
    agreement = report.agreement
    if agreement is not None and not agreement.passed:
        parts.append(agreement.failure())
        if agreement.advice:
            advice.append(agreement.advice)
    return "; and ".join(parts), " ".join(advice)


def raise_for_failures(report: ValidationReport, what: str) -> None:
    """Raise once, listing every failing output and the check on real data, if the report did not pass."""
    if report.passed:
        return
    failed, advice = failure_parts(report)
    raise ValidationFailedError(
        f"Validation of {what} failed for {failed}. Nothing was registered. {advice}".rstrip(), report=report
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
        f"Validated against the eager model on padded batches: **{report.gate()}**"
        + (f"; {report.tensor_note()}" if report.extra.get("quantized") else "")
        + ".\n\n" + report.to_markdown(gap=UI_CELL_GAP)
        + "\n\n" + describe_real_data(report)
    )


def describe_real_data(report: ValidationReport) -> str:
    """The description's "real data" section: the task-level check on the user's rows, or why there was none."""
    check = report.agreement
    if check is None:
        return (f"**Real data**: none ({SYNTHETIC_ONLY}: {report.synthetic_reason or 'no validation data'}). "
                "Pass validation_data= (CLI: --validation-data PATH) to compare the answers on your own rows.")
    lines = [
        f"**Real data** ({check.mark}): {check.rows} rows from {check.origin} (digest `{check.digest}`), "
        f"served end to end by the source and by this variant.",
        "",
        f"- {check.metric}: **{check.value:.4f}**"
        + (f" (not measured: {check.problem})" if check.problem else "")
        + f", {check.mode} requires >= {check.threshold:g}",
    ]
    lines += [f"- {name}: {number(value)}" for name, value in check.details.items()]
    if check.differing:
        lines.append(f"- rows that differ: {check.differing}" + (
            "; e.g. " + "; ".join(check.examples[:SHOWN_EXAMPLES]) if check.examples else ""))
    if check.note:
        lines.append(f"- {check.note}")
    return "\n".join(lines)
