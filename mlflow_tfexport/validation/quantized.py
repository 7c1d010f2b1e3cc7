"""Task-level validation of a quantised ONNX model on synthetic feeds: agreement with the eager reference,
not an fp32 atol.

An int8 model cannot meet the fp32 tolerance, so on the padded batches of
random tokens every export is checked at, it is validated at task level: the
share of rows (or real tokens) where the exported model gives the reference's
answer is measured and recorded (``tfexport.label_agreement``). Random tokens
are far from any text a model sees, and int8 errors are larger on them than on
real text, so this check is a floor that catches a broken graph, not the gate
of the variant's accuracy: it requires :data:`SYNTHETIC_MIN_AGREEMENT`, or
``min_agreement`` when that is lower. The gate at ``min_agreement`` (default
the task's ``quantized_min_agreement``) is the check on real rows
(``validation/agreement.py``). What "the same answer" means here is the task's
``agreement`` rule (``tasks.TaskSpec.agreement``, an ``Agreement`` value):

- ``label``: the argmax class per row, or per real token when the output has a sequence axis
  (the sign of a single logit);
- ``span``: the argmax position per row over real tokens (question answering's start/end);
- ``cosine``: mean-pooled rows whose cosine similarity is >= :data:`FEATURE_COSINE` (embeddings).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport.constants import Tag
from mlflow_tfexport.errors import ExportError
from mlflow_tfexport.tasks import Agreement, OutputSpec
from mlflow_tfexport.validation.compare import Feeds, RunFn
from mlflow_tfexport.validation.report import OutputCheck, ValidationReport

#: The agreement the synthetic check requires (unless ``min_agreement`` is lower): a floor that a graph computing
#: something else (about 1/classes of the labels) does not reach, below what every int8 mode of MiniLM-L6 reaches
#: on random tokens (``benchmarks/quantization.py``: the fine-tuned classifier 0.973 to 1.0, the embedder 1.0 at
#: :data:`FEATURE_COSINE`).
SYNTHETIC_MIN_AGREEMENT = 0.8
#: Kept for callers of earlier releases: the default threshold of the synthetic check.
DEFAULT_MIN_AGREEMENT = SYNTHETIC_MIN_AGREEMENT
#: Cosine similarity at which a mean-pooled feature vector counts as agreeing with the reference, on random tokens.
#: Measured on the MiniLM-L6 embedder at the validation shapes (35 rows): the lowest cosine of a row is 0.835 for
#: int8-per-tensor, 0.983 for int8 (per channel), 0.999 for int8-blockwise and 0.827 for int8-static (on real text
#: they keep more). 0.99 refused every per-tensor and static variant and most per-channel ones.
FEATURE_COSINE = 0.8
RULES = (Agreement.LABEL, Agreement.SPAN, Agreement.COSINE)


def agreement(output: OutputSpec, rule: str, ref: np.ndarray, got: np.ndarray, mask: np.ndarray) -> Tuple[int, int]:
    """(agreeing, total) answers of one output on one batch, by the task's agreement ``rule``."""
    ref = ref.astype(np.float64)
    got = got.astype(np.float64)
    valid = mask.astype(bool)
    if rule == Agreement.COSINE:
        m = valid[..., None].astype(np.float64)
        a = (ref * m).sum(axis=1)
        b = (got * m).sum(axis=1)
        cos = (a * b).sum(-1) / np.clip(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12, None)
        return int((cos >= FEATURE_COSINE).sum()), int(len(cos))
    if rule == Agreement.SPAN:  # one position per row, padding excluded
        ref = np.where(valid, ref, -np.inf)
        got = np.where(valid, got, -np.inf)
        return int((ref.argmax(-1) == got.argmax(-1)).sum()), int(ref.shape[0])
    if rule not in RULES:
        raise ExportError(
            f"Output {output.name!r}: agreement rule {rule!r} is not known; the task table may use "
            f"{', '.join(RULES)}."
        )
    same = (ref[..., 0] > 0) == (got[..., 0] > 0) if ref.shape[-1] == 1 else ref.argmax(-1) == got.argmax(-1)
    if same.ndim == 2:  # per token: real tokens only
        return int(same[valid].sum()), int(valid.sum())
    return int(same.sum()), int(same.size)


def validate_quantized(
    reference: RunFn,
    exported: RunFn,
    inputs: Sequence[Feeds],
    outputs: Sequence[OutputSpec],
    rule: str,
    atol: float,
    min_agreement: Optional[float],
    mode: str = "int8",
) -> ValidationReport:
    """Task-level validation: agreement (by the task's ``rule``) per output, over all feeds, >=
    :data:`SYNTHETIC_MIN_AGREEMENT` (or ``min_agreement``, if lower); the max abs diff is measured and recorded,
    not gated."""
    threshold = synthetic_threshold(min_agreement)
    report = ValidationReport(atol=atol)
    totals: Dict[str, List[int]] = {o.name: [0, 0] for o in outputs}
    # per feed and output: (input shape, output shape, max abs diff, agreeing, total)
    records: List[Tuple[OutputSpec, Tuple[int, int], Tuple[int, ...], float, int, int]] = []
    shape_checks: List[OutputCheck] = []
    for feeds in inputs:
        ids = feeds["input_ids"]
        input_shape = (int(ids.shape[0]), int(ids.shape[1]))
        mask = feeds.get("attention_mask", np.ones_like(ids))
        ref, got = reference(feeds), exported(feeds)
        for spec in outputs:
            r = ref[spec.name]
            if spec.name not in got or tuple(got[spec.name].shape) != tuple(r.shape):
                problem = (
                    f"missing from exported outputs {sorted(got)}" if spec.name not in got
                    else f"shape {tuple(got[spec.name].shape)} != reference {tuple(r.shape)}"
                )
                exported_shape = tuple(got[spec.name].shape) if spec.name in got else None
                shape_checks.append(
                    OutputCheck(spec.name, tuple(r.shape), exported_shape, None, atol, input_shape, False, problem)
                )
                continue
            g = got[spec.name]
            diff = float(np.max(np.abs(g.astype(np.float64) - r.astype(np.float64)))) if r.size else 0.0
            agree, total = label_agreement(spec, rule, r, g, mask)
            totals[spec.name][0] += agree
            totals[spec.name][1] += total
            records.append((spec, input_shape, tuple(r.shape), diff, agree, total))
    rates = {name: (a / t if t else 0.0) for name, (a, t) in totals.items()}
    for spec, input_shape, shape, diff, agree, total in records:
        rate = rates[spec.name]
        ok = bool(totals[spec.name][1]) and rate >= threshold and bool(np.isfinite(diff))
        report.checks.append(OutputCheck(
            spec.name, shape, shape, diff, atol, input_shape, ok,
            f"{mode} {_WORDS.get(rule, 'label')} agreement {agree}/{total} here, {rate:.3f} overall "
            f"({'>=' if ok else '<'} min {threshold:g} on random tokens; task-level check, the fp32 atol does "
            "not apply)",
        ))
    report.checks.extend(shape_checks)
    worst = min(rates.values()) if rates else 0.0
    report.extra.update({"quantized": mode, "label_agreement": rates, "min_agreement": threshold})
    report.tags.update({
        Tag.QUANTIZED: mode,
        Tag.LABEL_AGREEMENT: f"{worst:.4f}",
        Tag.MIN_AGREEMENT: f"{threshold:g}",
    })
    return report


_WORDS = {Agreement.LABEL: "label", Agreement.SPAN: "span", Agreement.COSINE: f"cosine >= {FEATURE_COSINE:g}"}


def synthetic_threshold(min_agreement: Optional[float]) -> float:
    """What the synthetic check requires: :data:`SYNTHETIC_MIN_AGREEMENT`, or ``min_agreement`` if lower."""
    if min_agreement is None:
        return SYNTHETIC_MIN_AGREEMENT
    return min(SYNTHETIC_MIN_AGREEMENT, float(min_agreement))


#: Indirection so a test can force a disagreement.
label_agreement = agreement
