"""Validation of generation variants exported with past key values (``export/onnx/generation.py``).

The exported graph(s) decode in three chunks: a first step with an empty
past, a multi-token step and a one-token step, each fed the exported model's
own presents. Every chunk's logits and presents are compared with one
full-sequence forward of the eager model; an encoder-decoder's encoder
states and cross-attention caches are compared too. A causal LM's rows are
left-padded, as serving batches prompts: the graph gets the positions serving
computes from the mask, the eager model the ones transformers' ``generate``
gives it, so a family whose positions come from the attention mask (OPT) or
from ``position_ids`` (GPT-2, GPT-J, ...) is checked where padding moves them;
logits and presents are compared at real tokens (a padded query attends to
nothing: what a model returns there depends on the batch's length, BLOOM's by
2e-3 between a chunk and the whole batch).

A quantised variant (``quantize=``) cannot meet the fp32 tolerance: each step's
logits are compared at task level instead, the share of positions (real tokens)
whose greedy next token is the eager model's, against the synthetic floor of
``validation/quantized.py``; the gate is the check on real data (the same
greedy text on the validation texts, ``exact_match``).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport.constants import FlavorKey, Generation, Tag
from mlflow_tfexport.export.onnx.generation import (
    eager_causal,
    eager_seq2seq,
    generate_positions,
    sample_ids,
    takes_positions,
)
from mlflow_tfexport.export.options import SourceModel
from mlflow_tfexport.export.wrapper import source_inputs
from mlflow_tfexport.serving.runtimes import load_runner
from mlflow_tfexport.tasks import BATCH, SEQUENCE
from mlflow_tfexport.validation.compare import compare
from mlflow_tfexport.validation.quantized import synthetic_threshold
from mlflow_tfexport.validation.report import OutputCheck, ValidationReport
from mlflow_tfexport.validation.static_seq2seq import validate_static_seq2seq


def _chunks(total: int) -> List[Tuple[int, int]]:
    """Three decoding steps over ``total`` positions: a first step (empty past), a multi-token step
    with a past, and a one-token step (what each generated token costs)."""
    if total < 3:
        return [(0, total)]
    first = max(1, total // 2)
    return [(0, first), (first, total - 1), (total - 1, total)]


def left_padded(ids: np.ndarray, mask: np.ndarray, pad: int) -> Tuple[np.ndarray, np.ndarray]:
    """Right-padded rows moved to the right end of their row (pads first), as serving left-pads prompts."""
    out_ids, out_mask = np.full_like(ids, pad), np.zeros_like(mask)
    for row in range(ids.shape[0]):
        real = int(mask[row].sum())
        out_ids[row, ids.shape[1] - real:] = ids[row, :real]
        out_mask[row, ids.shape[1] - real:] = 1
    return out_ids, out_mask


def _merge(checks: List[OutputCheck], name: str) -> OutputCheck:
    """One check for many same-role tensors (every layer's presents): the worst of them."""
    failed = [c for c in checks if not c.passed]
    worst = max(checks, key=lambda c: -1.0 if c.max_abs_diff is None else c.max_abs_diff)
    pick = failed[0] if failed else worst
    return OutputCheck(name, pick.shape, pick.exported_shape, worst.max_abs_diff, pick.atol, pick.input_shape,
                       not failed, f"{pick.name}: {pick.problem}" if failed else "")


def _step_checks(reference: Dict[str, np.ndarray], got: Dict[str, np.ndarray], presents: List[str], atol: float,
                 shape: Tuple[int, int], past: int, mask: Optional[np.ndarray] = None) -> List[OutputCheck]:
    """``mask`` (past + new positions, a causal LM's): logits and presents are compared at real tokens only; a
    padded position's query attends to nothing, and what a model returns there depends on the batch's length."""
    new_mask = None if mask is None else mask[:, mask.shape[1] - shape[1]:]
    checks = compare(reference, got, ["logits"], atol, shape, mask=new_mask, axes={"logits": {0: BATCH, 1: SEQUENCE}})
    layer_checks = compare(reference, got, presents, atol, shape, mask=mask,
                           axes={n: {0: BATCH, 2: SEQUENCE} for n in presents})
    checks.append(_merge(layer_checks, f"present.*.{presents[0].split('.')[-2]}" if presents[0].count(".") > 2
                         else "present.*"))
    for check in checks:
        check.name = f"{check.name} (past {past})"
    return checks


class _NextTokens:
    """A quantised variant's steps: greedy next-token agreement with the eager logits, over real positions."""

    def __init__(self, mode: str, min_agreement: Optional[float], atol: float) -> None:
        self.mode, self.atol = mode, atol
        self.threshold = synthetic_threshold(min_agreement)
        self.steps: List[Tuple[Tuple[int, ...], Tuple[int, int], int, float, int, int]] = []

    def add(self, reference: np.ndarray, got: np.ndarray, mask: np.ndarray, shape: Tuple[int, int],
            past: int) -> None:
        valid = mask.astype(bool)
        same = reference.argmax(-1) == got.argmax(-1)
        diff = float(np.max(np.abs(reference.astype(np.float64) - got.astype(np.float64)))) if got.size else 0.0
        self.steps.append((tuple(got.shape), shape, past, diff, int(same[valid].sum()), int(valid.sum())))

    def finish(self, report: ValidationReport) -> None:
        agree = sum(s[4] for s in self.steps)
        total = sum(s[5] for s in self.steps)
        rate = agree / total if total else 0.0
        for shape, input_shape, past, diff, a, t in self.steps:
            ok = bool(total) and rate >= self.threshold and bool(np.isfinite(diff))
            report.checks.append(OutputCheck(
                f"logits (past {past})", shape, shape, diff, self.atol, input_shape, ok,
                f"{self.mode} next-token agreement {a}/{t} here, {rate:.3f} overall ({'>=' if ok else '<'} min "
                f"{self.threshold:g} on random tokens; task-level check, the fp32 atol does not apply)"))
        report.extra.update({"quantized": self.mode, "label_agreement": {"logits": rate},
                             "min_agreement": self.threshold})
        report.tags.update({Tag.QUANTIZED: self.mode, Tag.LABEL_AGREEMENT: f"{rate:.4f}",
                            Tag.MIN_AGREEMENT: f"{self.threshold:g}"})


def validate_generation(source: SourceModel, staging: str, conf: Mapping[str, Any],
                        shapes: Sequence[Tuple[int, int]], atol: float, quantized: Optional[str] = None,
                        min_agreement: Optional[float] = None) -> ValidationReport:
    """Decode in chunks with the exported graph(s) (each step fed the previous step's presents) and
    compare every step's logits and presents with one full forward of the eager model (a ``quantized``
    variant: the greedy next tokens of every step, see the module doc)."""
    if conf[FlavorKey.GENERATION] == Generation.STATIC_ENCODER_DECODER:
        return validate_static_seq2seq(source, staging, conf, shapes, atol)
    runner: Any = load_runner(staging, conf, {})
    report = ValidationReport(atol=atol)
    tokens = _NextTokens(quantized, min_agreement, atol) if quantized else None
    model = source.model
    for index, (batch, total) in enumerate(shapes):
        feeds = source_inputs(source, batch, total, seed=1000 + index)
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        total = ids.shape[1]
        if conf[FlavorKey.GENERATION] == Generation.DECODER_WITH_PAST:
            # Left-padded rows, as serving batches prompts; the graph gets the positions serving computes
            # (runner.step), the eager model those transformers' generate gives a model whose forward takes
            # them (BLOOM's ALiBi reads the mask itself).
            ids, mask = left_padded(ids, mask, int(conf.get(FlavorKey.PAD_TOKEN_ID) or 0))
            logits, full = eager_causal(model, ids, mask, generate_positions(mask) if takes_positions(model) else None)
            past = runner.empty_past(batch)
            for start, stop in _chunks(total):
                out = runner.step(ids[:, start:stop], mask[:, :stop], past)
                past = [out[n] for n in runner.present_names]
                if tokens is not None:
                    tokens.add(logits[:, start:stop], out["logits"], mask[:, start:stop], (batch, stop - start), start)
                    continue
                ref = {"logits": logits[:, start:stop],
                       **{n: t[:, :, :stop] for n, t in zip(runner.present_names, full, strict=True)}}
                report.checks.extend(_step_checks(ref, out, runner.present_names, atol, (batch, stop - start), start,
                                                  mask[:, :stop]))
            continue
        decoder_total = min(total, source.max_length)
        dec = sample_ids(source, batch, decoder_total, seed=2000 + index)
        dec[:, 0] = int(conf[FlavorKey.DECODER_START_TOKEN_ID])
        hidden, logits, own, cross = eager_seq2seq(model, ids, mask, dec)
        encoded = runner.encode(ids, mask)
        if tokens is not None:
            past = runner.empty_past(batch)
            for start, stop in _chunks(decoder_total):
                out = runner.step(dec[:, start:stop], mask, past, encoded)
                past = [out[n] for n in runner.present_names]
                tokens.add(logits[:, start:stop], out["logits"], np.ones((batch, stop - start)),
                           (batch, stop - start), start)
            continue
        report.checks.extend(compare({"last_hidden_state": hidden, **dict(zip(runner.cross_names, cross,
                                                                               strict=True))},
                                     encoded, ["last_hidden_state"], atol, (batch, total)))
        report.checks.append(_merge(compare(dict(zip(runner.cross_names, cross, strict=True)), encoded,
                                            runner.cross_names, atol, (batch, total)), "present.*.encoder"))
        past = runner.empty_past(batch)
        for start, stop in _chunks(decoder_total):
            out = runner.step(dec[:, start:stop], mask, past, encoded)
            past = [out[n] for n in runner.present_names]
            ref = {"logits": logits[:, start:stop],
                   **{n: t[:, :, :stop] for n, t in zip(runner.present_names, own, strict=True)}}
            report.checks.extend(_step_checks(ref, out, runner.present_names, atol, (batch, stop - start), start))
    if tokens is not None:
        tokens.finish(report)
    return report
