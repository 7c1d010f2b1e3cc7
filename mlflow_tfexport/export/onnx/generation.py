"""ONNX export of generation models with past key values: the ``-with-past`` features of the old exporter.

The ONNX backend calls this module for generative tasks (legacy exporter; ``exporter='fused'``, the
default for the Llama family's causal LMs, writes ``model.onnx`` with ``export/onnx/fused_decoder.py``
instead, same inputs and outputs, and falls back to the traced graph, with a warning and
``tfexport.exporter=legacy``, for a model with a feature that writer lacks):

- ``text-generation`` (causal LM): one graph, ``model.onnx``, taking
  ``input_ids``, ``attention_mask`` (past + new positions) and the flattened
  cache ``past_key_values.{i}.key/value`` ([batch, heads, past, head_dim]) and
  returning ``logits`` and ``present.{i}.key/value``. The first step runs the
  same graph with a past of length 0, so there is one graph for both, as
  optimum's merged decoders did, without their ``If`` node.
- ``text2text-generation`` (encoder-decoder): ``encoder.onnx`` takes
  ``input_ids``, ``attention_mask`` and returns ``last_hidden_state`` and every
  decoder layer's cross-attention keys/values (``present.{i}.encoder.key/value``,
  computed once per request); ``decoder.onnx`` takes ``decoder_input_ids``,
  ``encoder_attention_mask``, the self-attention cache
  ``past_key_values.{i}.decoder.key/value`` (length 0 at the first step) and
  the cross-attention cache ``past_key_values.{i}.encoder.key/value``, and
  returns ``logits`` and ``present.{i}.decoder.key/value``.

transformers 5 keeps caches in ``DynamicCache`` / ``EncoderDecoderCache``
objects: the traced wrappers build them from the flat tensors and flatten the
returned cache. The eager references (:func:`eager_causal`,
:func:`eager_seq2seq`) give the past key values the export traces with, and
the references ``validation/generation.py`` compares the exported graphs with.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport._lazy import require
from mlflow_tfexport.constants import ONNX_DECODER_FILE, ONNX_ENCODER_FILE, ONNX_FILE, FlavorKey, Generation, Tag
from mlflow_tfexport.errors import ExportError
from mlflow_tfexport.export.onnx import fused_decoder
from mlflow_tfexport.export.onnx import optimize as onnx_optimize
from mlflow_tfexport.export.options import ExportedArtifact, ExportOptions, SourceModel
from mlflow_tfexport.export.wrapper import source_inputs, untie_weights
from mlflow_tfexport.tasks import BATCH

_logger = logging.getLogger(__name__)

#: (batch, past, new) of the export trace: batch >= 2 so the batch axis stays dynamic, a past > 0
#: so the cache length is traced as a shape, not a constant.
EXPORT_BATCH, EXPORT_PAST, EXPORT_NEW = 2, 5, 4
PAST, TOTAL = "past_sequence", "past_sequence + sequence"
ENC_SEQ, DEC_PAST, DEC_TOTAL = "encoder_sequence", "past_decoder_sequence", "past_decoder_sequence + decoder_sequence"


def past_names(layers: int, part: str = "") -> List[str]:
    """``past_key_values.{i}.key/value`` (``part``: ``decoder``/``encoder`` for encoder-decoders)."""
    mid = f".{part}" if part else ""
    return [f"past_key_values.{i}{mid}.{kv}" for i in range(layers) for kv in ("key", "value")]


def present_names(layers: int, part: str = "") -> List[str]:
    mid = f".{part}" if part else ""
    return [f"present.{i}{mid}.{kv}" for i in range(layers) for kv in ("key", "value")]


def _cache(pairs: Sequence[Tuple[Any, Any]]) -> Any:
    """A ``DynamicCache`` holding ``pairs`` as they are (no concatenation with an empty tensor,
    which the legacy exporter would write as a rank-1 Concat input)."""
    cache_utils = require("transformers.cache_utils")
    cache = cache_utils.DynamicCache()
    for key, value in pairs:
        layer = cache_utils.DynamicLayer()
        layer.lazy_initialization(key, value)
        layer.keys, layer.values = key, value
        cache.layers.append(layer)
    return cache


def _flat(cache: Any) -> List[Any]:
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]


def _pairs(flat: Sequence[Any]) -> List[Tuple[Any, Any]]:
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


def takes_positions(model: Any) -> bool:
    """Whether the causal LM's forward takes ``position_ids`` (then the graph does, and left-padded prompts
    decode together: each row's positions count its real tokens). BLOOM's ALiBi reads the mask instead."""
    return "position_ids" in inspect.signature(model.forward).parameters


#: The experts implementations of transformers' mixture-of-experts blocks that trace into ONNX: the default
#: ``grouped_mm`` counts tokens per expert with ``torch.histc`` (no ONNX symbolic) and ``eager`` loops over the
#: experts a batch hits (a trace would keep only those); ``batched_mm`` gathers each token's experts' weights
#: and multiplies in one batch, the same math.
TRACEABLE_EXPERTS = "batched_mm"


def traceable_experts(model: Any) -> None:
    """Switch a mixture-of-experts model (Mixtral, Qwen2-MoE, ...) to ``TRACEABLE_EXPERTS`` before tracing."""
    can_set = getattr(type(model), "_can_set_experts_implementation", None)
    if can_set is None or not can_set() or not hasattr(model, "set_experts_implementation"):
        return
    if getattr(model.config, "_experts_implementation", None) != TRACEABLE_EXPERTS:
        model.set_experts_implementation(TRACEABLE_EXPERTS)


def causal_wrapper(model: Any) -> Any:
    """``(input_ids, attention_mask, [position_ids,] *past) -> (logits, *presents)`` around a causal LM."""
    torch = require("torch")
    positions = takes_positions(model)

    class CausalLMWithPast(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, *rest: Any) -> Tuple[Any, ...]:
            extra = {"position_ids": rest[0]} if positions else {}
            past = rest[1:] if positions else rest
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=_cache(_pairs(past)),
                             use_cache=True, return_dict=True, **extra)
            return (out.logits, *_flat(out.past_key_values))

    return CausalLMWithPast().eval()


def encoder_wrapper(model: Any, decoder_start: int) -> Any:
    """``(input_ids, attention_mask) -> (last_hidden_state, *cross-attention keys/values)``.

    The cross-attention caches come from one decoder step on the start token with an empty
    cache: only the key/value projections of the encoder states survive in the traced graph."""
    torch = require("torch")
    cache_utils = require("transformers.cache_utils")

    class Seq2SeqEncoder(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Tuple[Any, ...]:
            encoder = self.model.get_encoder()
            hidden = encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state
            start = torch.full((input_ids.shape[0], 1), decoder_start, dtype=torch.long)
            cache = cache_utils.EncoderDecoderCache(cache_utils.DynamicCache(), cache_utils.DynamicCache())
            out = self.model(encoder_outputs=(hidden,), attention_mask=attention_mask, decoder_input_ids=start,
                             past_key_values=cache, use_cache=True, return_dict=True)
            return (hidden, *_flat(out.past_key_values.cross_attention_cache))

    return Seq2SeqEncoder().eval()


def decoder_wrapper(model: Any) -> Any:
    """``(decoder_input_ids, encoder_attention_mask, *past) -> (logits, *self-attention presents)``;
    ``past`` per layer: self key, self value, cross key, cross value."""
    torch = require("torch")
    cache_utils = require("transformers.cache_utils")

    class Seq2SeqDecoder(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, decoder_input_ids: Any, encoder_attention_mask: Any, *past: Any) -> Tuple[Any, ...]:
            own = [(past[i], past[i + 1]) for i in range(0, len(past), 4)]
            cross = [(past[i + 2], past[i + 3]) for i in range(0, len(past), 4)]
            cache = cache_utils.EncoderDecoderCache(_cache(own), _cache(cross))
            # The cross-attention caches are filled, so the encoder states are never read: a
            # placeholder of the right batch and length stands in for them.
            placeholder = torch.zeros((decoder_input_ids.shape[0], encoder_attention_mask.shape[1], 1))
            out = self.model(encoder_outputs=(placeholder,), attention_mask=encoder_attention_mask,
                             decoder_input_ids=decoder_input_ids, past_key_values=cache, use_cache=True,
                             return_dict=True)
            return (out.logits, *_flat(out.past_key_values.self_attention_cache))

    return Seq2SeqDecoder().eval()


# --------------------------------------------------------------------------- eager references


def generate_positions(mask: np.ndarray) -> np.ndarray:
    """Each position's index among its row's real tokens, 1 at padded ones: the ``position_ids`` transformers'
    ``generate`` gives a causal LM whose forward takes them (so a left-padded row counts from its first token)."""
    positions = np.cumsum(mask, axis=1) - 1
    return np.where(mask == 0, 1, positions).astype(np.int64)


def eager_causal(model: Any, ids: np.ndarray, mask: np.ndarray,
                 position_ids: Optional[np.ndarray] = None) -> Tuple[np.ndarray, List[np.ndarray]]:
    """Logits and presents of one full forward (no past) of a causal LM (``position_ids`` given when set)."""
    torch = require("torch")
    extra = {} if position_ids is None else {"position_ids": torch.from_numpy(np.ascontiguousarray(position_ids))}
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    past_key_values=_cache([]), use_cache=True, return_dict=True, **extra)
    return out.logits.float().numpy(), [t.float().numpy() for t in _flat(out.past_key_values)]


def eager_seq2seq(
    model: Any, ids: np.ndarray, mask: np.ndarray, decoder_ids: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, List[np.ndarray], List[np.ndarray]]:
    """Encoder states, logits, self-attention presents and cross-attention caches of one forward."""
    torch = require("torch")
    cache_utils = require("transformers.cache_utils")
    cache = cache_utils.EncoderDecoderCache(_cache([]), _cache([]))
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                    decoder_input_ids=torch.from_numpy(decoder_ids), past_key_values=cache, use_cache=True,
                    return_dict=True)
    cache = out.past_key_values
    return (out.encoder_last_hidden_state.float().numpy(), out.logits.float().numpy(),
            [t.float().numpy() for t in _flat(cache.self_attention_cache)],
            [t.float().numpy() for t in _flat(cache.cross_attention_cache)])


# --------------------------------------------------------------------------- export


def generation_facts(model: Any) -> Dict[str, Any]:
    """What the numpy decoding loop of an encoder-decoder needs from the model's generation config,
    read as ``model.generate`` reads it (start token: ``decoder_start_token_id``, else ``bos_token_id``)."""
    gen = getattr(model, "generation_config", None) or model.config

    def pick(*names: str) -> Any:
        for name in names:
            value = getattr(gen, name, None)
            if isinstance(value, (list, tuple)):
                value = value[0] if value else None
            if value is not None:
                return int(value)
        return None

    start = pick("decoder_start_token_id", "bos_token_id")
    if start is None:
        raise ExportError(
            f"{type(model).__name__} has no decoder_start_token_id (nor bos_token_id) in its generation config; "
            "set model.generation_config.decoder_start_token_id before logging it."
        )
    return {
        FlavorKey.DECODER_START_TOKEN_ID: start,
        FlavorKey.FORCED_BOS_TOKEN_ID: pick("forced_bos_token_id"),
        FlavorKey.FORCED_EOS_TOKEN_ID: pick("forced_eos_token_id"),
    }


def _export(torch: Any, wrapper: Any, args: Tuple[Any, ...], path: str, inputs: List[str], outputs: List[str],
            axes: Dict[str, Dict[int, str]], options: ExportOptions, what: str) -> None:
    try:
        with torch.no_grad():
            torch.onnx.export(wrapper, args, path, input_names=inputs, output_names=outputs,
                              opset_version=options.opset, dynamo=False, dynamic_axes=axes,
                              do_constant_folding=True)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        op = re.search(r"operator '([\w:.]+)'", first) if type(exc).__name__ == "UnsupportedOperatorError" else None
        hint = (f" The operator {op.group(1)} has no ONNX export; export this model to TorchScript instead "
                "(format='torchscript', --format torchscript), which traces it.") if op else ""
        raise ExportError(
            f"torch.onnx.export failed for the {what} (opset {options.opset}, legacy exporter): "
            f"{type(exc).__name__}: {first}{hint}"
        ) from exc
    require("onnx").checker.check_model(path)


def _postprocess(paths: Sequence[str], source: SourceModel, options: ExportOptions, conf: Dict[str, Any],
                 tags: Dict[str, str]) -> None:
    """``optimize=True`` / ``quantize=`` on every graph written (the same options for each); what they did is
    recorded once in ``conf`` and ``tags`` (int8-static is refused by the backend's check)."""
    if not (options.optimize or options.quantize):
        return
    for path in paths:
        done = onnx_optimize.postprocess(path, source.model, source.flavor_conf, options, None)
    conf.update(done.flavor_conf)
    tags.update(done.tags)


def sample_ids(source: SourceModel, batch: int, length: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(min(5, source.vocab_size - 1), source.vocab_size, size=(batch, length), dtype=np.int64)


def export_generation(source: SourceModel, options: ExportOptions, staging_dir: str) -> ExportedArtifact:
    """Write the with-past graph(s) of ``source`` into ``staging_dir``."""
    torch = require("torch")
    model = source.model
    arch = source.flavor_conf.get(FlavorKey.ARCHITECTURE) or type(model).__name__
    untie_weights(model)
    traceable_experts(model)
    onnx_optimize.prepare_model(model, options)
    tags = {Tag.OPSET: str(options.opset), Tag.TRACE_SHAPE: "dynamic", Tag.EXPORTER: str(options.exporter)}
    conf: Dict[str, Any] = {FlavorKey.OPSET: options.opset}
    unfused = fused_decoder.unsupported_reason(model) if options.exporter == fused_decoder.FUSED_EXPORTER else None
    if unfused is not None:  # a family member with a feature the writer lacks (e.g. Phi3's longrope): traced
        _logger.warning("exporter='fused' cannot write %s (%s); writing the traced graph (exporter='legacy').",
                        arch, unfused)
        tags[Tag.EXPORTER] = "legacy"
    elif options.exporter == fused_decoder.FUSED_EXPORTER:
        path = os.path.join(staging_dir, ONNX_FILE)
        fused_decoder.write_fused_decoder(model, path, conf[FlavorKey.OPSET])
        _postprocess([path], source, options, conf, tags)
        conf[FlavorKey.GENERATION] = Generation.DECODER_WITH_PAST
        return ExportedArtifact(model_file=ONNX_FILE, flavor_conf=conf, tags=tags)
    if not getattr(model.config, "is_encoder_decoder", False):
        feeds = source_inputs(source, EXPORT_BATCH, EXPORT_PAST + EXPORT_NEW)
        ids, mask = feeds["input_ids"], np.ones_like(feeds["input_ids"])
        try:
            _, presents = eager_causal(model, ids[:, :EXPORT_PAST], mask[:, :EXPORT_PAST])
        except Exception as exc:
            raise ExportError(
                f"{arch} cannot run with a DynamicCache of past key values ({type(exc).__name__}: {exc}); "
                "it cannot be exported with past key values."
            ) from exc
        layers = len(presents) // 2  # as many as the model's cache holds
        new_ids = ids[:, EXPORT_PAST:]
        position = [torch.from_numpy(np.broadcast_to(np.arange(EXPORT_PAST, EXPORT_PAST + EXPORT_NEW),
                                                     new_ids.shape).copy())] if takes_positions(model) else []
        args = (torch.from_numpy(new_ids), torch.from_numpy(mask), *position,
                *[torch.from_numpy(p) for p in presents])
        inputs = ["input_ids", "attention_mask", *(["position_ids"] if position else []), *past_names(layers)]
        outputs = ["logits", *present_names(layers)]
        axes = {"input_ids": {0: BATCH, 1: "sequence"}, "attention_mask": {0: BATCH, 1: TOTAL},
                "logits": {0: BATCH, 1: "sequence"}}
        if position:
            axes["position_ids"] = {0: BATCH, 1: "sequence"}
        axes.update({n: {0: BATCH, 2: PAST} for n in past_names(layers)})
        axes.update({n: {0: BATCH, 2: TOTAL} for n in present_names(layers)})
        path = os.path.join(staging_dir, ONNX_FILE)
        _export(torch, causal_wrapper(model), args, path, inputs, outputs, axes, options, f"{arch} decoder with past")
        _postprocess([path], source, options, conf, tags)
        conf[FlavorKey.GENERATION] = Generation.DECODER_WITH_PAST
        return ExportedArtifact(model_file=ONNX_FILE, flavor_conf=conf, tags=tags)

    facts = generation_facts(model)
    start = int(facts[FlavorKey.DECODER_START_TOKEN_ID])
    feeds = source_inputs(source, EXPORT_BATCH, 2 * EXPORT_NEW + 3)
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    dec = sample_ids(source, EXPORT_BATCH, EXPORT_PAST + EXPORT_NEW, seed=1)
    dec[:, 0] = start
    try:
        _, _, own, cross = eager_seq2seq(model, ids, mask, dec[:, :EXPORT_PAST])
    except Exception as exc:
        raise ExportError(
            f"{arch} cannot run with an EncoderDecoderCache of past key values ({type(exc).__name__}: {exc}); "
            "it cannot be exported with past key values."
        ) from exc
    layers = len(own) // 2
    enc_out = ["last_hidden_state", *present_names(layers, "encoder")]
    axes = {"input_ids": {0: BATCH, 1: ENC_SEQ}, "attention_mask": {0: BATCH, 1: ENC_SEQ},
            "last_hidden_state": {0: BATCH, 1: ENC_SEQ}}
    axes.update({n: {0: BATCH, 2: ENC_SEQ} for n in enc_out[1:]})
    _export(torch, encoder_wrapper(model, start), (torch.from_numpy(ids), torch.from_numpy(mask)),
            os.path.join(staging_dir, ONNX_ENCODER_FILE), ["input_ids", "attention_mask"], enc_out, axes, options,
            f"{arch} encoder")
    past = [t for i in range(layers) for t in (own[2 * i], own[2 * i + 1], cross[2 * i], cross[2 * i + 1])]
    dec_in = ["decoder_input_ids", "encoder_attention_mask", *decoder_past_names(layers)]
    dec_out = ["logits", *present_names(layers, "decoder")]
    axes = {"decoder_input_ids": {0: BATCH, 1: "decoder_sequence"}, "encoder_attention_mask": {0: BATCH, 1: ENC_SEQ},
            "logits": {0: BATCH, 1: "decoder_sequence"}}
    axes.update({n: {0: BATCH, 2: DEC_PAST if ".decoder." in n else ENC_SEQ} for n in dec_in[2:]})
    axes.update({n: {0: BATCH, 2: DEC_TOTAL} for n in dec_out[1:]})
    args = (torch.from_numpy(dec[:, EXPORT_PAST:]), torch.from_numpy(mask), *[torch.from_numpy(p) for p in past])
    _export(torch, decoder_wrapper(model), args, os.path.join(staging_dir, ONNX_DECODER_FILE), dec_in, dec_out,
            axes, options, f"{arch} decoder with past")
    _postprocess([os.path.join(staging_dir, n) for n in (ONNX_ENCODER_FILE, ONNX_DECODER_FILE)], source, options,
                 conf, tags)
    conf.update({FlavorKey.GENERATION: Generation.ENCODER_DECODER, FlavorKey.ENCODER_FILE: ONNX_ENCODER_FILE,
                 **facts})
    return ExportedArtifact(model_file=ONNX_DECODER_FILE, flavor_conf=conf, tags=tags)


def decoder_past_names(layers: int) -> List[str]:
    """Per layer: self-attention key, value, then cross-attention key, value (the decoder's input order)."""
    return [f"past_key_values.{i}.{part}.{kv}" for i in range(layers) for part in ("decoder", "encoder")
            for kv in ("key", "value")]
