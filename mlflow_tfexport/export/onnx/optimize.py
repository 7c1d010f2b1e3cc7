"""ONNX post-processing of an export: ORT transformer graph fusion and int8 quantisation.

``optimize=True`` runs onnxruntime's transformer optimizer
(``onnxruntime.transformers.optimizer.optimize_model``) on the exported graph:
attention, LayerNorm (+ residual, + embeddings) and GELU are fused into
onnxruntime contrib operators. The fused graph is hardware independent
(``opt_level=0``: only the fusions are saved; the session applies its own
graph optimisations at load). The export traces the eager attention
implementation when optimising, because that is the subgraph the fusions
recognise (the SDPA graph leaves attention unfused).

``quantize=`` then quantises the (optionally fused) graph with
``onnxruntime.quantization``; the modes (``export.options.QUANTIZE_HELP``):

- ``"int8"``: ``quantize_dynamic``, int8 weights with one scale per output channel, activations
  quantised per batch at run time. The default int8: on 332 real review sentences
  (``benchmarks/quantization.py``, ``benchmarks/results/quantization.md``: 2 quiet cores), the MiniLM-L6
  embedder keeps a cosine of 0.992 mean / 0.983 min with the source where one scale per weight tensor
  keeps 0.960 / 0.886, and the fine-tuned classifier 0.994 of the labels against 0.973, at about the same
  speed (2.2x fp32 at 1x16, 1.7-1.8x at 32x128; on an ``optimize=True`` graph 2.1-2.6x / 1.7-1.8x).
- ``"int8-per-tensor"``: ``quantize_dynamic`` with one scale per weight tensor (onnxruntime's own
  default, and this package's int8 before per-channel weights).
- ``"int8-blockwise"``: ``MatMulNBitsQuantizer`` with 8 bits: int8 weights with one scale per block of
  :data:`BLOCK_SIZE` inputs of each output channel, and int8 compute with activations quantised per
  row and block at run time (``MatMulNBits``, accuracy level 4), so one outlier token no longer sets
  the scale of the whole batch. The most accurate int8 on real text (MiniLM-L6: embedder cosine
  0.999 mean / 0.996 min, 0.998 min on an ``optimize=True`` graph; classifier labels 1.0), slower than
  ``"int8"`` (1.4-1.8x fp32 at 1x16, 1.1x at 32x128) and larger (the embedding table stays float).
- ``"int8-static"``: ``quantize_static`` in QDQ format: activations quantised with fixed scales,
  calibrated (MinMax) on rows of real text (``export/onnx/calibration.py``: the validation data,
  else built-in texts); weights per channel unless ``quantize_per_channel=False``. Only matrix
  products with a constant weight are quantised (activation x activation products, attention
  scores, stay float). QDQ is the form accelerator execution providers (TensorRT, OpenVINO, QNN)
  read; on CPU it was slower and less accurate than dynamic int8 for MiniLM-L6 (embedder cosine
  0.925 mean / 0.848 min, classifier labels 0.952, 1.5-1.6x fp32 at 32x128: one fixed scale per
  activation tensor cannot hold its outlier activations), so it is not the default.

``quantize_op_types`` (default ``DEFAULT_OP_TYPES`` of the mode), ``quantize_per_channel`` and
``quantize_reduce_range`` (7-bit weights, for CPUs without VNNI where u8 x s8 products may
saturate; off by default) are passed through; the options are checked with the others in
``export/options.py`` and completed by :func:`complete_quantize`. What was quantised is recorded in
the tags (``tfexport.quantized`` = the mode, ``tfexport.quantize.*``) and the flavor block
(``quantized``, ``quantization``: mode, options, calibration and the number of nodes quantised per
operator type). A quantised model cannot meet an fp32 ``atol``: it is validated at task level
(``validation/quantized.py`` on synthetic feeds, ``validation/agreement.py`` on real rows).

A graph can also come from an existing fp32 ONNX version (``export/reuse.py``): it is copied,
optionally fused, and quantised, instead of being exported from the source again
(``export.onnx.backend.OnnxBackend.export_from_graph``).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from mlflow_tfexport._lazy import require
from mlflow_tfexport._quiet import ORT_PREPROCESS_ADVICE, without_root_messages
from mlflow_tfexport.constants import FlavorKey, Tag
from mlflow_tfexport.errors import ExportError
from mlflow_tfexport.export.onnx import calibration
from mlflow_tfexport.export.options import BLOCKWISE_QUANTIZE, DEFAULT_OP_TYPES, MIXED_QUANTIZE, STATIC_QUANTIZE

_logger = logging.getLogger(__name__)
#: Extra validation shapes for a quantised export: a task-level rate needs more than a few rows.
QUANTIZED_VALIDATION_SHAPES: Tuple[Tuple[int, int], ...] = ((16, 31), (16, 64))
#: How static int8 sets its activation ranges (``onnxruntime.quantization.CalibrationMethod``).
CALIBRATION_METHOD = "MinMax"
#: int8-blockwise: weights per block of this many inputs (MLAS takes 16..256; on MiniLM-L6, 128 keeps a min cosine
#: of 0.998 at 1.5x fp32 speed where 32 keeps 0.999 at 1.2x) ...
BLOCK_SIZE = 128
#: ... and MatMulNBits' accuracy level 4: int8 compute, activations quantised per row and block at run time.
BLOCKWISE_ACCURACY_LEVEL = 4

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
#: Operators a quantised node of each type becomes (dynamic/QOperator); QDQ keeps the type, with
#: ``DequantizeLinear`` inputs.
_QUANTIZED_FORMS: Dict[str, Tuple[str, ...]] = {
    "MatMul": ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul", "MatMulNBits"),
    "Attention": ("QAttention",),
    "EmbedLayerNormalization": ("QEmbedLayerNormalization",),
    "Conv": ("ConvInteger", "QLinearConv"),
    "Gemm": ("QGemm",),
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


# --------------------------------------------------------------------------- quantisation options


def complete_quantize(options: Any, spec: Any) -> Any:
    """``options`` with the quantisation defaults of its mode filled in (per channel, operator types), after
    ``export.options.check_quantize``; refuses what the task cannot do. Unchanged without ``quantize``."""
    mode = options.quantize
    if not mode:
        return options
    if mode == STATIC_QUANTIZE and getattr(spec, "input_kind", "text") != "text":
        raise ExportError(
            f"quantize='int8-static' calibrates on tokenized text; {spec.name} models take images. Use "
            "quantize='int8' (dynamic, per channel) instead."
        )
    per_channel = options.quantize_per_channel
    if per_channel is None:  # blockwise scales are finer than per channel, and recorded as such (block_size)
        per_channel = mode not in ("int8-per-tensor", BLOCKWISE_QUANTIZE)  # int8-mixed: the non-MatMul part
    op_types = tuple(options.quantize_op_types) or DEFAULT_OP_TYPES[mode]
    return replace(options, quantize_per_channel=bool(per_channel), quantize_op_types=op_types,
                   quantize_reduce_range=bool(options.quantize_reduce_range))


def _flag(value: Any) -> str:
    return "true" if value else "false"


@dataclass
class Quantized:
    """What quantisation did: the registry tags and the flavor block's ``quantization`` entry."""

    mode: str
    per_channel: bool
    op_types: Tuple[str, ...]
    reduce_range: bool
    quantized_nodes: Dict[str, int]
    calibration: Optional[str] = None  # int8-static: "MinMax on <rows> rows of <origin>"
    quantized_from: Optional[str] = None
    block_size: Optional[int] = None  # int8-blockwise: inputs per weight scale

    def tags(self) -> Dict[str, str]:
        tags = {
            Tag.QUANTIZED: self.mode,
            Tag.QUANTIZE_PER_CHANNEL: _flag(self.per_channel),
            Tag.QUANTIZE_OP_TYPES: ",".join(self.op_types),
            Tag.QUANTIZE_REDUCE_RANGE: _flag(self.reduce_range),
        }
        if self.calibration:
            tags[Tag.QUANTIZE_CALIBRATION] = self.calibration[:5000]
        if self.quantized_from:
            tags[Tag.QUANTIZED_FROM] = self.quantized_from
        return tags

    def block(self) -> Dict[str, Any]:
        block: Dict[str, Any] = {
            "mode": self.mode,
            "per_channel": self.per_channel,
            "op_types": list(self.op_types),
            "reduce_range": self.reduce_range,
            "quantized_nodes": dict(self.quantized_nodes),
        }
        if self.calibration:
            block["calibration"] = self.calibration
        if self.block_size:
            block["block_size"] = self.block_size
        return block


def quantized_nodes(before: Any, after: Any, op_types: Sequence[str]) -> Dict[str, int]:
    """Nodes of each of ``op_types`` quantised from graph ``before`` to graph ``after`` (ModelProtos): turned
    into an integer operator (dynamic, QOperator), or fed by a ``DequantizeLinear`` (QDQ)."""
    was = Counter(n.op_type for n in before.graph.node)
    now = Counter(n.op_type for n in after.graph.node)
    dequantized = {o for n in after.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    counts: Dict[str, int] = {}
    for op in op_types:
        if op == "Gather":  # a quantised table is dequantised before (QDQ) or after (dynamic) the lookup
            counts[op] = sum(1 for n in after.graph.node if n.op_type == "Gather" and n.input[0] in dequantized)
            gathered = {n.output[0] for n in after.graph.node if n.op_type == "Gather"}
            counts[op] += sum(1 for n in after.graph.node
                              if n.op_type == "DequantizeLinear" and n.input[0] in gathered)
            continue
        qdq = sum(1 for n in after.graph.node if n.op_type == op and any(i in dequantized for i in n.input))
        integer = sum(now[q] - was[q] for q in _QUANTIZED_FORMS.get(op, ()) if now[q] > was[q])
        counts[op] = qdq + integer
    return counts


# --------------------------------------------------------------------------- quantisation


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _replace_model(tmp: str, path: str, external: bool) -> None:
    """Move the quantised ``tmp`` over ``path``; with external data, re-saved so that the graph names
    ``<path>.data`` (it names the data file it was written with)."""
    if not external:
        os.replace(tmp, path)
        return
    onnx = require("onnx")
    proto = onnx.load(tmp, load_external_data=True)
    onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=os.path.basename(path) + ".data", size_threshold=1024)
    for leftover in (tmp, tmp + ".data"):
        if os.path.exists(leftover):
            os.remove(leftover)


#: What onnxruntime's symbolic shape inference writes into the working directory when it fails.
_SYMBOLIC_DUMP = "sym_shape_infer_temp.onnx"


def _remove_symbolic_dump(existed: bool) -> None:
    """Remove the model (and its external data files) that a failed symbolic inference wrote into the working
    directory, unless a file of that name was there before."""
    if existed or not os.path.isfile(_SYMBOLIC_DUMP):
        return
    onnx = require("onnx")
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    try:
        proto = onnx.load(_SYMBOLIC_DUMP, load_external_data=False)
        locations = {entry.value for t in _get_all_tensors(proto) if uses_external_data(t)
                     for entry in t.external_data if entry.key == "location"}
    except Exception:  # unreadable: remove the graph file only
        locations = set()
    for name in {os.path.basename(loc) for loc in locations} | {_SYMBOLIC_DUMP}:
        if os.path.isfile(name):
            os.remove(name)


def _with_shapes(path: str, external: bool) -> str:
    """A copy of ``path`` with inferred tensor types: static calibration only quantises activations whose type
    it knows (a graph without ``value_info`` would get its weights quantised and nothing else). ONNX's own
    inference types a graph of standard operators; a fused graph (onnxruntime contrib operators) needs
    onnxruntime's symbolic inference, and falls back to ONNX's (fewer activations typed) where that fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx = require("onnx")
    out = path + ".shapes.onnx"
    kwargs: Dict[str, Any] = {"skip_optimization": True, "save_as_external_data": external,
                              "all_tensors_to_one_file": True}
    if external:
        kwargs["external_data_location"] = os.path.basename(out) + ".data"
    graph = onnx.load(path, load_external_data=False).graph
    if not any(n.domain == "com.microsoft" for n in graph.node):
        quant_pre_process(path, out, skip_symbolic_shape=True, **kwargs)
        return out
    existed = os.path.exists(_SYMBOLIC_DUMP)
    try:
        quant_pre_process(path, out, **kwargs)
    except Exception as exc:  # symbolic inference does not know every graph
        _logger.debug("symbolic shape inference failed (%s); using ONNX shape inference", _first_line(exc))
        _remove_symbolic_dump(existed)
        quant_pre_process(path, out, skip_symbolic_shape=True, **kwargs)
    return out


def _blockwise(path: str, out: str, external_data: bool) -> None:
    """Every MatMul with a constant weight of ``path`` as MatMulNBits (8 bits, :data:`BLOCK_SIZE`), into ``out``."""
    onnx = require("onnx")
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(onnx.load(path), bits=8, block_size=BLOCK_SIZE, is_symmetric=True,
                                     accuracy_level=BLOCKWISE_ACCURACY_LEVEL, op_types_to_quantize=("MatMul",))
    quantizer.process()
    quantizer.model.save_model_to_file(out, use_external_data_format=external_data)


def quantize(path: str, options: Any, external_data: bool, calibration_feeds: Optional[Sequence[Any]] = None) -> None:
    """Quantise the ONNX file at ``path`` in place as ``options`` say (completed by :func:`complete_quantize`);
    ``calibration_feeds`` (model input batches) are required for ``int8-static``."""
    require("onnxruntime")
    onnx = require("onnx")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    mode = options.quantize
    tmp = path + ".int8"
    # Fused contrib operators have no ONNX shape inference: their outputs are float.
    extra: Dict[str, Any] = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    common = dict(op_types_to_quantize=list(options.quantize_op_types), per_channel=bool(options.quantize_per_channel),
                  reduce_range=bool(options.quantize_reduce_range), weight_type=QuantType.QInt8,
                  use_external_data_format=external_data)
    shaped = None
    try:
        if mode == STATIC_QUANTIZE:
            if not calibration_feeds:
                raise ExportError("quantize='int8-static' needs calibration rows; none were given.")
            shaped = _with_shapes(path, external_data)
            extra["MatMulConstBOnly"] = True  # weights only: attention scores (activation x activation) stay float
            quantize_static(shaped, tmp, calibration.FeedsReader(calibration_feeds), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8,  # u8 activations x s8 weights: the x86 kernels
                            calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHOD),
                            extra_options=extra, **common)
        elif mode == BLOCKWISE_QUANTIZE:
            _blockwise(path, tmp, external_data)
        elif mode == MIXED_QUANTIZE:  # MatMul blockwise, then the other operator types dynamic per channel
            others = [op for op in options.quantize_op_types if op != "MatMul"]
            blocked = path + ".blockwise" if others else tmp
            if "MatMul" in options.quantize_op_types:
                _blockwise(path, blocked, external_data)
            else:
                shutil.copyfile(path, blocked)
                if external_data:
                    shutil.copyfile(path + ".data", blocked + ".data")
            if others:
                shaped = blocked  # removed below, with its external data
                quantize_dynamic(blocked, tmp, extra_options=extra,
                                 **{**common, "op_types_to_quantize": others, "per_channel": True})
        else:
            quantize_dynamic(path, tmp, extra_options=extra, **common)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(f"onnxruntime quantisation ({mode}) failed: {_first_line(exc)}") from exc
    finally:
        for leftover in (shaped, shaped + ".data" if shaped else None):
            if leftover and os.path.exists(leftover):
                os.remove(leftover)
    _replace_model(tmp, path, external_data)


def quantize_and_record(path: str, options: Any, external_data: bool,
                        calibration: Optional[Tuple[str, Sequence[Any]]] = None) -> Quantized:
    """:func:`quantize` plus what it did; refuses operator types that matched no node of the graph.

    ``calibration``: ``(description, feeds)`` for ``int8-static``."""
    onnx = require("onnx")
    before = onnx.load(path, load_external_data=False)
    feeds = calibration[1] if calibration else None
    with without_root_messages(ORT_PREPROCESS_ADVICE):  # onnxruntime's advice does not apply: shapes are ours
        quantize(path, options, external_data, feeds)
    after = onnx.load(path, load_external_data=False)
    counts = quantized_nodes(before, after, options.quantize_op_types)
    if not any(counts.values()):
        present = sorted({n.op_type for n in before.graph.node} & {"MatMul", "Gemm", "Attention", "Gather", "Conv",
                                                                   "EmbedLayerNormalization"})
        raise ExportError(
            f"quantize={options.quantize!r} quantised no node: the graph has no {', '.join(options.quantize_op_types)} "
            f"node it can quantise (it has {', '.join(present) or 'none of the quantisable operators'}). "
            "Attention and EmbedLayerNormalization exist only in an optimize=True graph; pass other "
            "quantize_op_types or drop the option."
        )
    described = f"{CALIBRATION_METHOD} on {calibration[0]}" if calibration else None
    return Quantized(options.quantize, bool(options.quantize_per_channel), tuple(options.quantize_op_types),
                     bool(options.quantize_reduce_range), counts, described, getattr(options, "quantize_from", None),
                     BLOCK_SIZE if options.quantize in (BLOCKWISE_QUANTIZE, MIXED_QUANTIZE) else None)


# --------------------------------------------------------------------------- post-processing


@dataclass
class PostProcessed:
    """Registry tags and flavor block entries recording the fusion and quantisation of a graph."""

    tags: Dict[str, str] = field(default_factory=dict)
    flavor_conf: Dict[str, Any] = field(default_factory=dict)


def postprocess(path: str, model: Any, flavor_conf: Mapping[str, Any], options: Any,
                calibration: Optional[Tuple[str, Sequence[Any]]] = None,
                already_optimized: Optional[str] = None) -> PostProcessed:
    """Apply the requested fusion and quantisation to ``path``; returns what records them.

    ``already_optimized``: the fusion summary of a graph that was fused before (a graph taken from an
    optimised version): it is recorded, not fused again. ``calibration``: see :func:`quantize_and_record`."""
    out = PostProcessed()
    external = os.path.exists(path + ".data")
    fused = already_optimized
    if options.optimize and not fused:
        fused = "ort-transformers:" + optimize(path, model, flavor_conf, external)
    if fused:
        out.tags[Tag.OPTIMIZED] = fused
        out.flavor_conf[FlavorKey.OPTIMIZED] = fused
    if options.quantize:
        done = quantize_and_record(path, options, external, calibration)
        out.tags.update(done.tags())
        out.flavor_conf[FlavorKey.QUANTIZED] = done.mode
        out.flavor_conf[FlavorKey.QUANTIZATION] = done.block()
        if done.quantized_from:
            out.flavor_conf[FlavorKey.QUANTIZED_FROM] = done.quantized_from
    return out


def copy_graph(src_dir: str, model_file: str, staging_dir: str, target: str) -> str:
    """Copy an existing variant's graph ``model_file`` (and its external data) into ``staging_dir`` as
    ``target``; returns the new path."""
    src = os.path.join(src_dir, model_file)
    if not os.path.isfile(src):
        raise ExportError(f"The ONNX version has no graph file {model_file!r} (looked in {src_dir}).")
    dst = os.path.join(staging_dir, target)
    shutil.copyfile(src, dst)
    data = src + ".data"
    if os.path.exists(data):
        if os.path.basename(model_file) != target:  # the graph names its data file: keep the names
            raise ExportError(f"Cannot rename {model_file!r} with external data to {target!r}.")
        shutil.copyfile(data, dst + ".data")
    return dst


def validation_shapes(options: Any, base: Sequence[Tuple[int, int]]) -> List[Tuple[int, int]]:
    return list(base) + (list(QUANTIZED_VALIDATION_SHAPES) if options.quantize else [])
