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
validation is task-level (``validation/quantized.py``) on more rows
(:data:`QUANTIZED_VALIDATION_SHAPES`). The options themselves are checked
with the others in ``export/options.py``.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from mlflow_tfexport._lazy import require
from mlflow_tfexport.constants import FlavorKey, Tag
from mlflow_tfexport.errors import ExportError

_logger = logging.getLogger(__name__)
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


def ort_model_type(model_type: Optional[str]) -> str:
    return _ORT_MODEL_TYPES.get(str(model_type or ""), "bert")


def _config_int(config: Any, *names: str) -> int:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 0  # the optimizer detects it from the graph


def prepare_model(model: Any, options: Any) -> Optional[str]:
    """Before tracing: the eager attention graph is the one the ORT fusions match.

    Returns why the model keeps its own attention (fusion may then be partial), or None."""
    if not options.optimize or not hasattr(model, "set_attn_implementation"):
        return None
    try:
        model.set_attn_implementation("eager")
    except (ValueError, ImportError) as exc:  # transformers refuses an implementation the model lacks
        reason = f"{type(model).__name__} keeps its attention implementation ({exc}); fusion may be partial"
        _logger.warning("optimize=True: %s", reason)
        return reason
    return None


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
