"""Task-level agreement on real data: the source and the variant answer the same rows end to end.

Both models run as they are served (the pyfunc: strings in, the served response
out) on the user's rows, and the task's agreement metric compares the answers.
The task table names the metric (``TaskSpec.agreement_metric``) and the value an
fp32 variant must reach (``TaskSpec.fp32_agreement``) or a quantised one by
default (``TaskSpec.quantized_min_agreement``, overridden by ``min_agreement``);
this module holds the metric functions, keyed by that name (:data:`METRICS`):

- ``label_agreement``: share of rows with the same label; the max score difference (rows with the same
  label) is recorded beside it (text and image classification);
- ``token_agreement``: share of tokens labelled alike, over the tokens either model gives a label
  (token classification, its ``entities`` output);
- ``span_agreement``: share of rows with the same answer text and character offsets (question answering);
- ``top1_agreement``: share of rows whose best token for the mask is the same (fill-mask);
- ``min_cosine``: the lowest cosine similarity of a row's two embeddings; the mean is recorded
  (feature extraction, text and image);
- ``exact_match``: share of rows whose greedy output is the same text (generation);
- ``detection_agreement``: share of detections matched by one of the same label with a box IoU >= 0.5
  (object detection); the mean IoU of the matched boxes is recorded.

Every metric is a value in [0, 1] checked as ``value >= threshold``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import Model

from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.errors import ExportError, TfexportError
from mlflow_tfexport.export.options import QUANTIZE_MODES
from mlflow_tfexport.serving.export_config import task_of
from mlflow_tfexport.serving.pyfunc import pyfunc_class
from mlflow_tfexport.serving.runtimes import Runner
from mlflow_tfexport.tasks import AgreementMetric, TaskSpec
from mlflow_tfexport.validation.data import InputExampleError, ValidationData, load_validation_data
from mlflow_tfexport.validation.report import AgreementCheck

#: ``AgreementCheck.mode`` of a variant that is not quantised.
FP32 = "fp32"
#: Box IoU at which two detections of the same label are the same detection.
DETECTION_IOU = 0.5
#: Characters of a row's text shown in a report.
SHOWN_TEXT = 48


@dataclass
class Measured:
    """What a metric function returns: the value, what is recorded beside it, and the rows that differ
    (row index -> how their answers differ)."""

    value: float
    details: Dict[str, float] = field(default_factory=dict)
    differing: List[Tuple[int, str]] = field(default_factory=list)


#: ``(source answers, variant answers, threshold) -> Measured``.
MetricFn = Callable[[Any, Any, float], Measured]


@dataclass(frozen=True)
class Metric:
    """One agreement metric: its function and the ``params`` both models are asked with."""

    name: str
    compare: MetricFn
    params: Mapping[str, Any] = field(default_factory=dict)


class _RowCountMismatch(Exception):
    pass


def _records(out: Any, rows: int) -> List[Dict[str, Any]]:
    """A DataFrame response (or a list of dicts) as one dict per row."""
    records: List[Dict[str, Any]] = out.to_dict("records") if hasattr(out, "to_dict") else list(out)
    if len(records) != rows:
        raise _RowCountMismatch(f"{len(records)} answer rows for {rows} input rows")
    return records


def _rows(out: Any, rows: int) -> List[Any]:
    values = list(out)
    if len(values) != rows:
        raise _RowCountMismatch(f"{len(values)} answer rows for {rows} input rows")
    return values


def _rate(same: Sequence[bool]) -> float:
    return float(np.mean(same)) if len(same) else 1.0


def _score_diff(pairs: Sequence[Tuple[Any, Any]]) -> Dict[str, float]:
    diffs = [abs(float(a) - float(b)) for a, b in pairs]
    finite = [d if math.isfinite(d) else math.inf for d in diffs]
    return {"max_score_diff": max(finite) if finite else 0.0}


def _top(row: Any) -> Any:
    """A row's answer: a classifier's record, or the first (highest-scored) entry of a ranked list (zero-shot)."""
    return (row[0] if row else {"label": None, "score": math.nan}) if isinstance(row, (list, tuple)) else row


def label_agreement(source: Any, variant: Any, threshold: float) -> Measured:
    """Same label per row (a ranked list's top label); the largest score difference among rows with the same
    label."""
    rows = len(source)
    a, b = [_top(r) for r in _records(source, rows)], [_top(r) for r in _records(variant, rows)]
    same = [str(x["label"]) == str(y["label"]) for x, y in zip(a, b, strict=True)]
    differing = [(i, f"source {x['label']!r} ({float(x['score']):.3g}), variant {y['label']!r} "
                     f"({float(y['score']):.3g})") for i, (x, y, s) in enumerate(zip(a, b, same, strict=True)) if not s]
    details = _score_diff([(x["score"], y["score"]) for x, y, s in zip(a, b, same, strict=True) if s])
    return Measured(_rate(same), details, differing)


def token_agreement(source: Any, variant: Any, threshold: float) -> Measured:
    """Per token: the same entity label, over the tokens either side labels (``output=entities``)."""
    rows = len(source)
    agree = total = 0
    differing = []
    for i, (x, y) in enumerate(zip(_rows(source, rows), _rows(variant, rows), strict=True)):
        left = {int(e["index"]): str(e["entity"]) for e in x}
        right = {int(e["index"]): str(e["entity"]) for e in y}
        union = set(left) | set(right)
        same = sum(1 for t in union if left.get(t) == right.get(t))
        agree += same
        total += len(union)
        if same < len(union):
            first = min(t for t in union if left.get(t) != right.get(t))
            differing.append((i, f"token {first}: source {left.get(first, 'O')!r}, variant {right.get(first, 'O')!r}"))
    return Measured(agree / total if total else 1.0, {"tokens": float(total)}, differing)


def span_agreement(source: Any, variant: Any, threshold: float) -> Measured:
    """Same answer text and character offsets per row; the largest score difference among those."""
    rows = len(source)
    a, b = _records(source, rows), _records(variant, rows)
    same = [(x["answer"], int(x["start"]), int(x["end"])) == (y["answer"], int(y["start"]), int(y["end"]))
            for x, y in zip(a, b, strict=True)]
    differing = [(i, f"source {x['answer']!r} [{x['start']}:{x['end']}], variant {y['answer']!r} "
                     f"[{y['start']}:{y['end']}]") for i, (x, y, s) in enumerate(zip(a, b, same, strict=True)) if not s]
    details = _score_diff([(x["score"], y["score"]) for x, y, s in zip(a, b, same, strict=True) if s])
    return Measured(_rate(same), details, differing)


def top1_agreement(source: Any, variant: Any, threshold: float) -> Measured:
    """The same best token for the mask per row; the largest score difference among those."""
    rows = len(source)
    a, b = _records(source, rows), _records(variant, rows)
    key = "token" if a and "token" in a[0] else "token_str"
    same = [x[key] == y[key] for x, y in zip(a, b, strict=True)]
    differing = [(i, f"source {x['token_str']!r}, variant {y['token_str']!r}")
                 for i, (x, y, s) in enumerate(zip(a, b, same, strict=True)) if not s]
    details = _score_diff([(x["score"], y["score"]) for x, y, s in zip(a, b, same, strict=True) if s])
    return Measured(_rate(same), details, differing)


def cosine(source: Any, variant: Any, threshold: float) -> Measured:
    """The lowest cosine similarity of a row's two embeddings (the mean is recorded); rows below
    ``threshold`` differ. Two zero vectors agree."""
    a = np.asarray(source, dtype=np.float64)
    b = np.asarray(variant, dtype=np.float64)
    if a.shape != b.shape:
        raise _RowCountMismatch(f"embeddings of shape {b.shape}, the source's are {a.shape}")
    a = a.reshape(len(a), -1)
    b = b.reshape(len(b), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = (a * b).sum(axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    cos = np.where(both_zero, 1.0, dots / np.clip(norms, 1e-300, None))
    cos = np.where(np.isfinite(cos), cos, -1.0)
    if not len(cos):
        return Measured(1.0, {"mean_cosine": 1.0})
    differing = [(int(i), f"cosine {cos[i]:.6f}") for i in np.flatnonzero(cos < threshold)]
    return Measured(float(cos.min()), {"mean_cosine": float(cos.mean())}, differing)


def exact_match(source: Any, variant: Any, threshold: float) -> Measured:
    """The same generated text per row (greedy decoding)."""
    rows = len(source)
    a, b = _rows(source, rows), _rows(variant, rows)
    same = [str(x) == str(y) for x, y in zip(a, b, strict=True)]
    differing = [(i, f"source {str(x)[:SHOWN_TEXT]!r}, variant {str(y)[:SHOWN_TEXT]!r}")
                 for i, (x, y, s) in enumerate(zip(a, b, same, strict=True)) if not s]
    return Measured(_rate(same), {}, differing)


def _iou(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    ax0, ay0, ax1, ay1 = (float(a[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
    bx0, by0, bx1, by1 = (float(b[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
    w = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    h = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = w * h
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else float(a == b)


def detection_agreement(source: Any, variant: Any, threshold: float) -> Measured:
    """Detections matched (greedily, best IoU first) by one of the same label with IoU >= ``DETECTION_IOU``,
    over the larger of the two counts per image; an image where neither model detects anything agrees."""
    rows = len(source)
    matched_total = counted = 0
    ious: List[float] = []
    differing = []
    for i, (x, y) in enumerate(zip(_rows(source, rows), _rows(variant, rows), strict=True)):
        pairs = sorted(((_iou(d["box"], e["box"]), p, q) for p, d in enumerate(x) for q, e in enumerate(y)
                        if str(d["label"]) == str(e["label"])), reverse=True)
        used_p, used_q = set(), set()
        for iou, p, q in pairs:
            if iou >= DETECTION_IOU and p not in used_p and q not in used_q:
                used_p.add(p)
                used_q.add(q)
                ious.append(iou)
        most = max(len(x), len(y))
        matched_total += len(used_p)
        counted += most
        if len(used_p) < most:
            differing.append((i, f"source {len(x)} detection(s), variant {len(y)}, {len(used_p)} matched"))
    value = matched_total / counted if counted else 1.0
    return Measured(value, {"mean_iou": float(np.mean(ious)) if ious else 1.0}, differing)


#: ``output_agreement``: two answers of a row are the same when every output differs by at most this much
#: (absolute, plus this much relative to the source's value).
OUTPUT_TOLERANCE = 1e-4


def _close(a: Any, b: Any) -> Tuple[bool, float]:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        return False, math.inf
    diff = float(np.max(np.abs(x - y))) if x.size else 0.0
    return bool(np.allclose(y, x, rtol=OUTPUT_TOLERANCE, atol=OUTPUT_TOLERANCE)), diff


def output_agreement(source: Any, variant: Any, threshold: float) -> Measured:
    """Raw outputs (a user's export config): a row agrees when every output column is within
    ``OUTPUT_TOLERANCE`` of the source's; the largest difference is recorded."""
    rows = len(source)
    a, b = _records(source, rows), _records(variant, rows)
    same, worst, differing = [], 0.0, []
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        checks = {name: _close(x[name], y.get(name)) if name in y else (False, math.inf) for name in x}
        worst = max([worst, *(d for _, d in checks.values())])
        ok = all(c for c, _ in checks.values())
        same.append(ok)
        if not ok:
            name = next(n for n, (c, _) in checks.items() if not c)
            differing.append((i, f"output {name!r} differs by {checks[name][1]:.3g}"))
    return Measured(_rate(same), {"max_abs_diff": worst}, differing)


METRICS: Dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric(AgreementMetric.LABEL, label_agreement),
        Metric(AgreementMetric.TOKEN_LABEL, token_agreement, {"output": "entities"}),
        Metric(AgreementMetric.SPAN, span_agreement),
        Metric(AgreementMetric.TOP1, top1_agreement),
        Metric(AgreementMetric.COSINE, cosine),
        Metric(AgreementMetric.EXACT_MATCH, exact_match),
        Metric(AgreementMetric.DETECTION, detection_agreement),
        Metric(AgreementMetric.OUTPUTS, output_agreement),
    )
}


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise ExportError(f"Agreement metric {name!r} is not known; the task table may use {', '.join(METRICS)}.")
    return METRICS[name]


# --------------------------------------------------------------------------- thresholds and advice


def threshold_for(spec: TaskSpec, quantized: Optional[str], min_agreement: Optional[float]) -> float:
    """The value a variant must reach: the task's fp32 value, or ``min_agreement`` (default the task's
    ``quantized_min_agreement``) for a quantised variant."""
    if not quantized:
        return float(spec.fp32_agreement)
    return float(spec.quantized_min_agreement if min_agreement is None else min_agreement)


def advice(metric: str, value: float, mode: str) -> str:
    """What a user can do when the check fails: never atol for a quantised variant."""
    if mode == FP32:
        return (
            f"An fp32 variant must give the source's answers ({metric}); min_agreement applies to quantised "
            "variants only. Try another opset or exporter (ONNX) or other trace shapes (TorchScript, Neuron); if "
            "the rows shown still differ, the exported graph computes something else for them."
        )
    floor = math.floor(value * 100) / 100 if math.isfinite(value) else 0.0
    others = [m for m in QUANTIZE_MODES if m != mode]
    accept = (f"If {metric} {value:.4f} is acceptable for this model, export with min_agreement={floor:g} "
              f"(CLI: --min-agreement {floor:g}); otherwise " if floor > 0 else "")
    return (
        accept + ("try another quantisation mode (quantize=" + " or ".join(repr(m) for m in others) + ") or "
                  if others else "")
        + "export without quantize. atol does not apply to a quantised variant."
    )


# --------------------------------------------------------------------------- the models and the rows


def pyfunc_for(path: str, conf: Mapping[str, Any], runner: Runner) -> Any:
    """The served model (the pyfunc of ``serving/``) around ``runner``: what ``mlflow.pyfunc.load_model``
    returns for a model saved at ``path`` with flavor block ``conf``."""
    return pyfunc_class(task_of(conf))(path, conf, runner, {})


def compared_conf(source_conf: Mapping[str, Any], variant_conf: Mapping[str, Any]) -> Dict[str, Any]:
    """The source's flavor block truncating where the variant does: a static variant serves at most its
    largest bucket's tokens, and the check compares what the export computes, not that choice."""
    conf = dict(source_conf)
    ours, theirs = source_conf.get(FlavorKey.MAX_LENGTH), variant_conf.get(FlavorKey.MAX_LENGTH)
    if ours is not None and theirs is not None and int(theirs) < int(ours):
        conf[FlavorKey.MAX_LENGTH] = int(theirs)
    return conf


def source_input_example(model_dir: str) -> Any:
    """The input example logged with the model saved in ``model_dir``, or None."""
    try:
        return Model.load(model_dir).load_input_example(model_dir)
    except (MlflowException, OSError, ValueError):
        return None


def validation_rows(validation_data: Any, spec: TaskSpec, source_dir: str) -> Tuple[Optional[ValidationData], str]:
    """The rows to validate on and, when there are none, why: ``validation_data`` if given, else the
    source's logged input example, else nothing ("synthetic only")."""
    if validation_data is not None:
        return load_validation_data(validation_data, spec), ""
    example = source_input_example(source_dir)
    if example is None:
        return None, "no validation data given and the source logged no input example"
    try:
        rows = load_validation_data(None, spec, source_input_example=example)
    except InputExampleError as exc:
        return None, f"the source's input example cannot be used ({exc.message})"
    if rows is None:
        return None, "no validation data given and the source logged no input example"
    return rows, ""


def _shown(data: ValidationData, row: int) -> str:
    text = str(data.frame.iloc[row, 0])
    return text if len(text) <= SHOWN_TEXT else text[: SHOWN_TEXT - 3] + "..."


def measure(
    source: Any,
    variant: Any,
    data: ValidationData,
    spec: TaskSpec,
    *,
    threshold: float,
    mode: str = FP32,
    note: str = "",
    progress: Optional[Callable[[str], None]] = None,
) -> AgreementCheck:
    """Run both served models on ``data``'s rows and check the task's agreement metric against ``threshold``.

    ``source`` and ``variant`` are pyfuncs (``predict(request, params)``). The source failing on the rows is
    an error of the data (``ExportError``); the variant failing is a failed check. ``progress`` is told
    before each model runs on the rows and how long it took.
    """
    import time

    say = progress or (lambda detail: None)
    metric = get_metric(spec.agreement_metric)
    params = dict(metric.params) or None
    check = AgreementCheck(metric=metric.name, value=float("nan"), threshold=float(threshold), passed=False,
                           rows=data.rows, origin=data.origin, digest=data.digest, mode=mode, note=note)
    say(f"{data.rows} rows through the source model...")
    started = time.perf_counter()
    try:
        expected = source.predict(data.to_request(), params)
    except TfexportError as exc:
        raise ExportError(
            f"The source model cannot answer the validation data ({data.origin}): {exc.message} Fix those rows "
            "(they must be what the served model accepts) or pass other validation data."
        ) from exc
    say(f"source answered {data.rows} rows in {time.perf_counter() - started:.1f} s; the same rows through "
        f"the {mode} variant...")
    started = time.perf_counter()
    try:
        got = variant.predict(data.to_request(), params)
        say(f"variant answered {data.rows} rows in {time.perf_counter() - started:.1f} s")
        measured = metric.compare(expected, got, float(threshold))
    except _RowCountMismatch as exc:
        check.problem = f"the variant's response does not match the source's: {exc}"
    except Exception as exc:  # the variant failing on real rows fails its validation, whatever the error
        message = str(getattr(exc, "message", None) or exc)
        first = message.splitlines()[0] if message else ""
        check.problem = f"the variant failed on these rows: {type(exc).__name__}: {first}"
    else:
        check.value = measured.value
        check.details = measured.details
        check.differing = len(measured.differing)
        check.examples = [f"row {i} ({_shown(data, i)!r}): {how}" for i, how in measured.differing[:3]]
        check.passed = bool(math.isfinite(measured.value) and measured.value >= threshold)
    if not check.passed:
        check.advice = advice(metric.name, check.value, mode)
    return check
