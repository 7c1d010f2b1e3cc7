"""ONNX post-processing of an export: ORT transformer graph fusion and dynamic int8 quantisation.

``optimize=True`` runs onnxruntime's transformer optimizer
(``onnxruntime.transformers.optimizer.optimize_model``) on the exported graph:
attention, LayerNorm (+ residual, + embeddings) and GELU are fused into
onnxruntime contrib operators. The fused graph is hardware independent
(``opt_level=0``: only the fusions are saved; the session applies its own
graph optimisations at load). The export traces the eager attention
implementation when optimising, because that is the subgraph the fusions
recognise (the SDPA graph leaves attention unfused).

``quantize="int8"`` runs ``onnxruntime.quantization.quantize_dynamic``
(int8 weights, activations quantised per batch at run time) after the
optional fusion. A quantised model cannot meet an fp32 ``atol``, so its
validation is task-level (:func:`validate_quantized`): the label agreement
rate with the eager reference on the validation inputs must reach
``min_agreement`` (default :data:`DEFAULT_MIN_AGREEMENT`); the max abs diff
is measured and recorded, not gated.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport._lazy import require
from mlflow_tfexport.constants import FlavorKey, Tag
from mlflow_tfexport.errors import ExportError
from mlflow_tfexport.tasks import SEQUENCE, OutputSpec
from mlflow_tfexport.validation.report import Feeds, OutputCheck, RunFn, ValidationReport

QUANTIZE_MODES: Tuple[str, ...] = ("int8",)
DEFAULT_MIN_AGREEMENT = 0.9
#: Cosine similarity at which a feature vector counts as agreeing with the reference.
FEATURE_COSINE = 0.99
#: Extra validation shapes for a quantised export: a task-level rate needs more than a few rows.
QUANTIZED_VALIDATION_SHAPES: Tuple[Tuple[int, int], ...] = ((16, 31), (16, 64))

#: transformers ``model_type`` -> the optimizer's model type (anything else is BERT-like).
_ORT_MODEL_TYPES: Dict[str, str] = {
    "gpt2": "gpt2",
    "gpt_neo": "gpt2",
    "gptj": "gpt2",
    "codegen": "gpt2",
    "bloom": "gpt2",
    "bart": "bart",
    "mbart": "bart",
    "plbart": "bart",
    "t5": "t5",
    "mt5": "t5",
}


def check_options(options: Any) -> None:
    """Reject bad optimisation/quantisation options before any work."""
    if not isinstance(options.optimize, bool):
        raise ExportError(f"optimize must be True or False, received {options.optimize!r}.")
    if options.quantize is not None and options.quantize not in QUANTIZE_MODES:
        raise ExportError(
            f"quantize={options.quantize!r} is not supported; use one of {', '.join(QUANTIZE_MODES)} "
            "(dynamic quantisation) or leave it unset."
        )
    threshold = options.min_agreement
    if threshold is not None:
        if options.quantize is None:
            raise ExportError("min_agreement applies to quantised exports only; add quantize='int8' or drop it.")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ExportError(f"min_agreement must be a number in (0, 1], e.g. 0.9; received {threshold!r}.")


def ort_model_type(model_type: Optional[str]) -> str:
    return _ORT_MODEL_TYPES.get(str(model_type or ""), "bert")


def _config_int(config: Any, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 0  # the optimizer detects it from the graph


def prepare_model(model: Any, options: Any) -> None:
    """Before tracing: the eager attention graph is the one the ORT fusions match."""
    if options.optimize and hasattr(model, "set_attn_implementation"):
        # An architecture without the eager path keeps its own; fusion may then be partial.
        with contextlib.suppress(Exception):
            model.set_attn_implementation("eager")


def fusion_summary(stats: Mapping[str, int]) -> str:
    """``{"Attention": 6, "Gelu": 0, ...}`` -> ``"Attention=6,..."`` (fused operators only, sorted)."""
    return ",".join(f"{k}={v}" for k, v in sorted(stats.items()) if v) or "none"


def optimize(path: str, model: Any, flavor_conf: Mapping[str, Any], external_data: bool) -> str:
    """Fuse the transformer subgraphs of the ONNX file at ``path`` in place; returns the fusion summary."""
    require("onnxruntime")
    from onnxruntime.transformers.optimizer import optimize_model

    config = getattr(model, "config", None)
    try:
        optimized = optimize_model(
            path,
            model_type=ort_model_type(flavor_conf.get(FlavorKey.MODEL_TYPE)),
            num_heads=_config_int(config, "num_attention_heads", "n_head", "num_heads"),
            hidden_size=_config_int(config, "hidden_size", "n_embd", "d_model"),
            opt_level=0,
            use_gpu=False,
        )
        summary = fusion_summary(optimized.get_fused_operator_statistics())
        optimized.save_model_to_file(path, use_external_data_format=external_data, all_tensors_to_one_file=True)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ExportError(f"onnxruntime's transformer optimizer failed: {type(exc).__name__}: {first}") from exc
    return summary


def quantize(path: str, mode: str, external_data: bool) -> None:
    """Dynamic int8 quantisation of the ONNX file at ``path``, in place."""
    require("onnxruntime")
    onnx = require("onnx")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path + ".int8"
    try:
        quantize_dynamic(
            path,
            tmp,
            weight_type=QuantType.QInt8,
            use_external_data_format=external_data,
            # Fused contrib operators have no ONNX shape inference: their outputs are float.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    except Exception as exc:
        raise ExportError(
            f"onnxruntime dynamic quantisation ({mode}) failed: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    os.replace(tmp, path)
    if external_data and os.path.exists(tmp + ".data"):
        os.replace(tmp + ".data", path + ".data")


def postprocess(path: str, model: Any, flavor_conf: Mapping[str, Any], options: Any) -> Dict[str, str]:
    """Apply the requested fusion and quantisation to ``path``; returns the registry tags that record them."""
    tags: Dict[str, str] = {}
    external = os.path.exists(path + ".data")
    if options.optimize:
        tags[Tag.OPTIMIZED] = "ort-transformers:" + optimize(path, model, flavor_conf, external)
    if options.quantize:
        quantize(path, options.quantize, external)
        tags[Tag.QUANTIZED] = options.quantize
    return tags


def validation_shapes(options: Any, base: Sequence[Tuple[int, int]]) -> List[Tuple[int, int]]:
    return list(base) + (list(QUANTIZED_VALIDATION_SHAPES) if options.quantize else [])


# --- task-level validation of a quantised model --------------------------------------------------------


def _agreement(spec: OutputSpec, task: str, ref: np.ndarray, got: np.ndarray, mask: np.ndarray) -> Tuple[int, int]:
    """(agreeing, total) labels of one output on one batch.

    Logits with a class axis: argmax per row, or per real token when the output has a sequence axis.
    Logits over the sequence (question answering's start/end): argmax position per row, padding excluded.
    Hidden states (feature extraction): mean-pooled rows whose cosine similarity is >= FEATURE_COSINE.
    A single logit (regression / one-label): agreement of its sign.
    """
    ref = ref.astype(np.float64)
    got = got.astype(np.float64)
    valid = mask.astype(bool)
    last = ref.ndim - 1
    if task == "feature-extraction":
        m = valid[..., None].astype(np.float64)
        a = (ref * m).sum(axis=1)
        b = (got * m).sum(axis=1)
        cos = (a * b).sum(-1) / np.clip(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12, None)
        return int((cos >= FEATURE_COSINE).sum()), int(len(cos))
    if spec.axes.get(last) == SEQUENCE:  # one position per row
        ref = np.where(valid, ref, -np.inf)
        got = np.where(valid, got, -np.inf)
        return int((ref.argmax(-1) == got.argmax(-1)).sum()), int(ref.shape[0])
    same = (ref[..., 0] > 0) == (got[..., 0] > 0) if ref.shape[-1] == 1 else ref.argmax(-1) == got.argmax(-1)
    if same.ndim == 2:  # per token: real tokens only
        return int(same[valid].sum()), int(valid.sum())
    return int(same.sum()), int(same.size)


def validate_quantized(
    reference: RunFn,
    exported: RunFn,
    inputs: Sequence[Feeds],
    outputs: Sequence[OutputSpec],
    task: str,
    atol: float,
    min_agreement: Optional[float],
    mode: str = "int8",
) -> ValidationReport:
    """Task-level validation: label agreement >= ``min_agreement`` per output; max abs diff recorded."""
    threshold = DEFAULT_MIN_AGREEMENT if min_agreement is None else float(min_agreement)
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
            agree, total = label_agreement(spec, task, r, g, mask)
            totals[spec.name][0] += agree
            totals[spec.name][1] += total
            records.append((spec, input_shape, tuple(r.shape), diff, agree, total))
    rates = {name: (a / t if t else 0.0) for name, (a, t) in totals.items()}
    for spec, input_shape, shape, diff, agree, total in records:
        rate = rates[spec.name]
        ok = bool(totals[spec.name][1]) and rate >= threshold and bool(np.isfinite(diff))
        report.checks.append(OutputCheck(
            spec.name, shape, shape, diff, atol, input_shape, ok,
            f"{mode} label agreement {agree}/{total} here, {rate:.3f} overall "
            f"({'>=' if ok else '<'} min {threshold:g}; task-level check, the fp32 atol does not apply)",
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


#: Indirection so a test can force a disagreement.
label_agreement = _agreement
