"""A fused ONNX graph for the Llama family (Llama, Mistral, Qwen2, Phi3), written from the state dict.

``exporter="fused"`` (the default for these architectures' ``text-generation``)
does not trace the model: it writes the graph onnxruntime-genai's model
builder writes, with onnxruntime's contrib operators, from the model's weights
and config:

- ``SimplifiedLayerNormalization`` / ``SkipSimplifiedLayerNormalization``
  (RMSNorm, with the residual add fused);
- ``MatMul`` with the projection weights stored transposed (Phi3's fused
  ``qkv_proj`` / ``gate_up_proj`` are split);
- ``RotaryEmbedding`` on queries and keys at the graph's ``position_ids``;
- ``GroupQueryAttention`` with the cache as past/present inputs and outputs
  (key/value heads not repeated, sliding window as ``local_window_size``).

The graph keeps the inputs and outputs of the traced with-past graph
(``export/onnx/generation.py``): ``input_ids``, ``attention_mask`` (past + new
positions), ``position_ids``, ``past_key_values.{i}.key/value``
([batch, kv_heads, past, head_dim]) -> ``logits``, ``present.{i}.key/value``.
So the numpy decoding loop, its left-padded batches and the step-by-step
validation are the same for both. Left padding: ``GroupQueryAttention`` counts
every row as ``total_sequence_length`` long (``seqlens_k = total - 1``, the
cache layout of the traced graph) and the padded positions are masked by an
``attention_bias`` built from ``attention_mask``; rotary positions come from
``position_ids``, not from the kernel's own count, so a left-padded row is
rotated at its real-token positions, as ``generate`` does.
"""

from __future__ import annotations

import os
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport._lazy import require
from mlflow_tfexport.constants import ONNX_META_ROW_CHUNKS
from mlflow_tfexport.errors import ExportError

#: The ``exporter`` option's value that selects this writer.
FUSED_EXPORTER = "fused"
#: The model classes this writer knows, by ``model_type``: how their layers name their projections.
FUSED_MODEL_TYPES = ("llama", "mistral", "qwen2", "phi3")
#: Rotary scalings whose frequencies do not depend on the sequence length (read from the model's rotary module).
STATIC_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
#: Masked (padded) positions get this added to their attention scores: exp() of it is 0 in float32.
MASKED = -1.0e9
#: Graphs whose weights exceed this are saved with their tensors in an external data file (protobuf's 2 GiB cap).
EXTERNAL_DATA_BYTES = 1 << 30
MS = "com.microsoft"


def unsupported_reason(model: Any) -> Optional[str]:
    """Why ``model`` cannot be written by this module, or None when it can."""
    config = model.config
    kind = getattr(config, "model_type", None)
    if kind not in FUSED_MODEL_TYPES:
        return f"model_type {kind!r} is not one of {', '.join(FUSED_MODEL_TYPES)}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act {config.hidden_act!r} (the fused graph writes SiLU)"
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in STATIC_ROPE_TYPES:
        return f"rope type {rope_type!r} (its frequencies change with the sequence length)"
    rotary = getattr(getattr(model, "model", None), "rotary_emb", None)
    if rotary is None or getattr(rotary, "inv_freq", None) is None:
        return "no rotary embedding module with inv_freq at model.model.rotary_emb"
    return None


def _np(t: Any) -> np.ndarray:
    return t.detach().float().cpu().numpy()


class _Graph:
    """Nodes and initializers being written."""

    def __init__(self) -> None:
        self.helper = require("onnx").helper
        self.numpy_helper = require("onnx").numpy_helper
        self.nodes: List[Any] = []
        self.inits: List[Any] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def init(self, name: str, value: np.ndarray) -> str:
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: Sequence[str], outputs: Optional[Sequence[str]] = None, domain: str = "",
             **attrs: Any) -> List[str]:
        outs = list(outputs) if outputs is not None else [self.name(op)]
        self.nodes.append(self.helper.make_node(op, list(inputs), outs, name=self.name(f"/{op}"), domain=domain,
                                                **attrs))
        return outs

    def one(self, op: str, inputs: Sequence[str], domain: str = "", **attrs: Any) -> str:
        return self.node(op, inputs, None, domain, **attrs)[0]


def _linear(g: _Graph, x: str, module: Any, prefix: str) -> str:
    y = g.one("MatMul", [x, g.init(f"{prefix}.weight", _np(module.weight).T)])
    if getattr(module, "bias", None) is not None:
        y = g.one("Add", [y, g.init(f"{prefix}.bias", _np(module.bias))])
    return y


def _packed(g: _Graph, x: str, modules: Sequence[Any], prefix: str) -> str:
    """One MatMul for several projections of ``x`` (their weights concatenated by output rows)."""
    weight = np.concatenate([_np(m.weight) for m in modules], axis=0)
    y = g.one("MatMul", [x, g.init(f"{prefix}.weight", weight.T)])
    if all(getattr(m, "bias", None) is not None for m in modules):
        y = g.one("Add", [y, g.init(f"{prefix}.bias", np.concatenate([_np(m.bias) for m in modules]))])
    elif any(getattr(m, "bias", None) is not None for m in modules):
        zeros = [np.zeros(m.weight.shape[0], np.float32) if m.bias is None else _np(m.bias) for m in modules]
        y = g.one("Add", [y, g.init(f"{prefix}.bias", np.concatenate(zeros))])
    return y


def _split_linear(g: _Graph, x: str, module: Any, prefix: str, sizes: Sequence[int]) -> List[str]:
    """Phi3's fused projections: one MatMul per part, weights split by output rows."""
    weight = _np(module.weight)
    bias = _np(module.bias) if getattr(module, "bias", None) is not None else None
    outs, start = [], 0
    for index, size in enumerate(sizes):
        y = g.one("MatMul", [x, g.init(f"{prefix}.{index}.weight", weight[start:start + size].T)])
        if bias is not None:
            y = g.one("Add", [y, g.init(f"{prefix}.{index}.bias", bias[start:start + size])])
        outs.append(y)
        start += size
    return outs


def _rotary_caches(model: Any, rotary_dim: int) -> Tuple[np.ndarray, np.ndarray]:
    """cos/sin of every position up to ``max_position_embeddings`` x ``rotary_dim // 2`` frequencies, scaled
    by the rotary module's ``attention_scaling`` (computed in float32 as the model computes them)."""
    rotary = model.model.rotary_emb
    inv_freq = _np(rotary.inv_freq).astype(np.float32)[: rotary_dim // 2]
    positions = np.arange(int(model.config.max_position_embeddings), dtype=np.float32)
    freqs = np.outer(positions, inv_freq).astype(np.float32)
    scaling = np.float32(getattr(rotary, "attention_scaling", 1.0))
    return (np.cos(freqs) * scaling).astype(np.float32), (np.sin(freqs) * scaling).astype(np.float32)


def _window(config: Any, layer: int) -> int:
    """GroupQueryAttention's ``local_window_size`` (-1: none), the model's ``sliding_window`` (equal logits on
    left-padded rows longer than the window: ``tests/test_fused_decoder.py``): on every layer without
    ``layer_types`` (Mistral, Phi3, as their masks do), else on the ``sliding_attention`` ones."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if not window:
        return -1
    if types is not None and types[layer] != "sliding_attention":
        return -1
    if config.model_type == "qwen2" and not getattr(config, "use_sliding_window", False):
        return -1
    return int(window)


def write_fused_decoder(model: Any, path: str, opset: int) -> Tuple[List[str], List[str]]:
    """Write ``model``'s fused with-past graph to ``path``; returns its (input, output) names."""
    reason = unsupported_reason(model)
    if reason is not None:
        raise ExportError(f"exporter='fused' cannot write {type(model).__name__}: {reason}. "
                          "Export it with exporter='legacy' (the traced graph).")
    onnx = require("onnx")
    helper, TP = onnx.helper, onnx.TensorProto
    config, inner = model.config, model.model
    heads, kv_heads = int(config.num_attention_heads), int(config.num_key_value_heads or config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    rotary_dim = int(head_dim * float(getattr(config, "partial_rotary_factor", 1.0) or 1.0))
    eps = float(config.rms_norm_eps)
    layers = len(inner.layers)
    g = _Graph()
    cos, sin = _rotary_caches(model, rotary_dim)
    g.init("cos_cache", cos)
    g.init("sin_cache", sin)

    # Shapes and the attention inputs shared by every layer.
    mask_shape = g.one("Shape", ["attention_mask"])
    zero_1d, one_1d = g.init("zero_1d", np.array([0], dtype=np.int64)), g.init("one_1d", np.array([1], dtype=np.int64))
    two_1d = g.init("two_1d", np.array([2], dtype=np.int64))
    total_1d = g.one("Slice", [mask_shape, one_1d, two_1d])
    total = g.one("Cast", [g.one("Squeeze", [total_1d, zero_1d])], to=TP.INT32)
    batch = g.one("Slice", [g.one("Shape", ["input_ids"]), zero_1d, one_1d])
    seqlens = g.one("Expand", [g.one("Sub", [total, g.init("one_int32", np.array(1, dtype=np.int32))]), batch])
    new = g.one("Slice", [g.one("Shape", ["input_ids"]), one_1d, two_1d])
    # attention_bias [batch, 1, new, total]: 0 at real positions, MASKED at padded ones.
    mask_f = g.one("Cast", ["attention_mask"], to=TP.FLOAT)
    bias2d = g.one("Mul", [g.one("Sub", [g.init("one_f", np.array(1.0, dtype=np.float32)), mask_f]),
                           g.init("masked_f", np.array(MASKED, dtype=np.float32))])
    bias4 = g.one("Unsqueeze", [bias2d, g.init("axes_1_2", np.array([1, 2], dtype=np.int64))])
    bias_shape = g.one("Concat", [batch, one_1d, new, total_1d], axis=0)
    bias = g.one("Expand", [bias4, bias_shape])

    hidden = g.one("Gather", [g.init("embed_tokens.weight", _np(inner.embed_tokens.weight)), "input_ids"])
    x = g.one("SimplifiedLayerNormalization", [hidden, g.init("layers.0.input_layernorm.weight",
                                                              _np(inner.layers[0].input_layernorm.weight))],
              axis=-1, epsilon=eps, stash_type=1)
    for i, layer in enumerate(inner.layers):
        attn, mlp = layer.self_attn, layer.mlp
        p = f"layers.{i}"
        qkv = _packed(g, x, [attn.qkv_proj] if hasattr(attn, "qkv_proj") else [attn.q_proj, attn.k_proj,
                                                                                   attn.v_proj], f"{p}.qkv_proj")
        q, k, v = g.node("Split", [qkv, g.init(f"{p}.qkv_sizes", np.array(
            [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dtype=np.int64))],
            [g.name("q"), g.name("k"), g.name("v")], axis=-1)
        # Rotary at position_ids (GroupQueryAttention's do_rotary counts positions itself: wrong for left padding)
        q = g.one("RotaryEmbedding", [q, "position_ids", "cos_cache", "sin_cache"], MS, interleaved=0,
                  num_heads=heads, rotary_embedding_dim=rotary_dim)
        k = g.one("RotaryEmbedding", [k, "position_ids", "cos_cache", "sin_cache"], MS, interleaved=0,
                  num_heads=kv_heads, rotary_embedding_dim=rotary_dim)
        scale = float(getattr(attn, "scaling", head_dim ** -0.5))
        att = g.node("GroupQueryAttention",
                     [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value", seqlens, total,
                      "", "", "", bias],
                     [g.name("attn"), f"present.{i}.key", f"present.{i}.value"], MS, num_heads=heads,
                     kv_num_heads=kv_heads, scale=scale, local_window_size=_window(config, i), do_rotary=0)[0]
        o = _linear(g, att, attn.o_proj, f"{p}.o_proj")
        x, _, _, hidden = g.node("SkipSimplifiedLayerNormalization",
                                 [o, hidden, g.init(f"{p}.post_attention_layernorm.weight",
                                                    _np(layer.post_attention_layernorm.weight))],
                                 [g.name("norm"), "", "", g.name("residual")], MS, epsilon=eps)
        if hasattr(mlp, "gate_up_proj"):
            gate, up = _split_linear(g, x, mlp.gate_up_proj, f"{p}.gate_up_proj",
                                     (int(config.intermediate_size),) * 2)
        else:
            gate = _linear(g, x, mlp.gate_proj, f"{p}.gate_proj")
            up = _linear(g, x, mlp.up_proj, f"{p}.up_proj")
        act = g.one("Mul", [g.one("Mul", [gate, g.one("Sigmoid", [gate])]), up])
        down = _linear(g, act, mlp.down_proj, f"{p}.down_proj")
        norm = inner.layers[i + 1].input_layernorm if i + 1 < layers else inner.norm
        name = f"layers.{i + 1}.input_layernorm.weight" if i + 1 < layers else "norm.weight"
        x, _, _, hidden = g.node("SkipSimplifiedLayerNormalization", [down, hidden, g.init(name, _np(norm.weight))],
                                 [g.name("norm"), "", "", g.name("residual")], MS, epsilon=eps)
    g.node("MatMul", [x, g.init("lm_head.weight", _np(model.lm_head.weight).T)], ["logits"])

    kv_shape = ["batch", kv_heads, "past_sequence", head_dim]
    inputs = [helper.make_tensor_value_info("input_ids", TP.INT64, ["batch", "sequence"]),
              helper.make_tensor_value_info("attention_mask", TP.INT64, ["batch", "past_sequence + sequence"]),
              helper.make_tensor_value_info("position_ids", TP.INT64, ["batch", "sequence"])]
    outputs = [helper.make_tensor_value_info("logits", TP.FLOAT, ["batch", "sequence", int(config.vocab_size)])]
    for i in range(layers):
        for kv in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kv}", TP.FLOAT, kv_shape))
            outputs.append(helper.make_tensor_value_info(
                f"present.{i}.{kv}", TP.FLOAT, ["batch", kv_heads, "past_sequence + sequence", head_dim]))
    graph = helper.make_graph(g.nodes, f"{type(model).__name__}_fused_with_past", inputs, outputs, g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(MS, 1)],
                              producer_name="mlflow-tfexport")
    helper.set_model_props(proto, {ONNX_META_ROW_CHUNKS: "GroupQueryAttention"})
    size = sum(t.ByteSize() for t in g.inits)
    if size > EXTERNAL_DATA_BYTES:
        onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location=os.path.basename(path) + ".data", size_threshold=1024)
    else:
        onnx.save_model(proto, path)
    return [i.name for i in inputs], [o.name for o in outputs]
