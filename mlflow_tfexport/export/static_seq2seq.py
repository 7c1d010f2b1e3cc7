"""Encoder-decoders on static shapes (TorchScript, Neuron): an encoder per bucket, a cache-free decoder per length.

A static trace fixes every tensor's shape, so the decoder's growing cache of past
key values cannot be traced. Instead (as AWS's Inf1 translation tutorials do):

- ``BxS.pt``: the encoder, ``(input_ids, attention_mask) -> last_hidden_state``, one per
  bucket ``(batch, source length)`` of ``trace_shape``;
- ``decoder-BxSxT.pt``: the decoder without a cache, ``(decoder_input_ids [B, T],
  encoder_hidden_states [B, S, H], encoder_attention_mask [B, S]) -> logits [B, T, V]``,
  one per bucket and decoder length ``T`` (the buckets' sequence lengths: the generated
  length is bucketed like the source length).

Each generated token re-runs the decoder on the whole decoder sequence so far, padded on
the right to the smallest ``T`` that holds it: the decoder is causal, so real positions
never see the padding, and the logits at the last real position are the model's. This is
what causal decoding on static shapes does here (``decoding.FullSequenceSteps``); the
alternative, a fixed-size cache with a position mask fed in and out of every call, is
discussed with measurements in ``docs/static-seq2seq.md``.

The serving side is ``serving/runtimes/static_seq2seq.py``; validation
``validation/static_seq2seq.py``.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, List, Sequence, Tuple

from mlflow_tfexport._lazy import require
from mlflow_tfexport.constants import FlavorKey, Generation, Tag
from mlflow_tfexport.errors import ExportError, cause
from mlflow_tfexport.export.onnx.generation import generation_facts, sample_ids
from mlflow_tfexport.export.options import ExportOptions, SourceModel
from mlflow_tfexport.export.tracing import trace_inputs, traceable_masks
from mlflow_tfexport.serving.runtimes.static import decoder_file, shape_name


def decoder_lengths(options: ExportOptions) -> List[int]:
    """The decoder lengths ``T`` traced for every bucket: the buckets' sequence lengths."""
    return sorted({int(s) for _, s in options.trace_shapes})


def encoder_module(model: Any) -> Any:
    """``(input_ids, attention_mask) -> (last_hidden_state,)``."""
    torch = require("torch")

    class StaticEncoder(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Tuple[Any]:
            encoder = self.model.get_encoder()
            return (encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state,)

    return StaticEncoder().eval()


def decoder_module(model: Any) -> Any:
    """``(decoder_input_ids, encoder_hidden_states, encoder_attention_mask) -> (logits,)``, no cache."""
    torch = require("torch")

    class StaticDecoder(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, decoder_input_ids: Any, encoder_hidden_states: Any,
                    encoder_attention_mask: Any) -> Tuple[Any]:
            out = self.model(encoder_outputs=(encoder_hidden_states,), attention_mask=encoder_attention_mask,
                             decoder_input_ids=decoder_input_ids, use_cache=False, return_dict=True)
            return (out.logits,)

    return StaticDecoder().eval()


def export_static_seq2seq(backend: Any, source: SourceModel, model: Any, options: ExportOptions, folder: str,
                          device: Any) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """Trace (``backend.compile``) and save the encoder at every bucket and the decoder at every bucket and
    decoder length into ``folder``; returns the flavor-block entries and tags."""
    torch = require("torch")
    facts = generation_facts(model)
    start = int(facts[FlavorKey.DECODER_START_TOKEN_ID])
    arch = source.flavor_conf.get(FlavorKey.ARCHITECTURE) or type(model).__name__
    encoder, decoder = encoder_module(model), decoder_module(model)
    lengths = decoder_lengths(options)
    for i, shape in enumerate(options.trace_shapes):
        feeds = trace_inputs(source, shape, seed=i)
        enc_args = tuple(torch.from_numpy(feeds[n]).to(device) for n in ("input_ids", "attention_mask"))
        with torch.no_grad():
            hidden = _traced(backend, encoder, enc_args, options, arch, f"encoder at {shape_name(shape)}")
            backend._save(hidden[0], os.path.join(folder, f"{shape_name(shape)}.pt"), source, shape)
            states = hidden[1][0]
        for length in lengths:
            dec = sample_ids(source, shape[0], length, seed=100 + i)
            dec[:, 0] = start
            args = (torch.from_numpy(dec).to(device), states, enc_args[1])
            traced = _traced(backend, decoder, args, options, arch,
                             f"decoder at {shape_name(shape)} with {length} decoder positions")
            backend._save(traced[0], os.path.join(folder, decoder_file(shape, length)), source, shape)
        del hidden
    conf: Dict[str, Any] = {FlavorKey.GENERATION: Generation.STATIC_ENCODER_DECODER,
                            FlavorKey.DECODER_LENGTHS: lengths, **facts}
    tags = {Tag.DECODER_LENGTHS: ",".join(str(t) for t in lengths)}
    return conf, tags


def _traced(backend: Any, module: Any, args: Sequence[Any], options: ExportOptions, arch: str,
            what: str) -> Tuple[Any, Tuple[Any, ...]]:
    """``backend.compile(module, args)`` and its outputs on ``args``; a failure names the part and shape."""
    torch = require("torch")
    try:
        with torch.no_grad(), warnings.catch_warnings(), traceable_masks():
            warnings.simplefilter("ignore")  # TracerWarnings about Python control flow
            traced = backend.compile(module, tuple(args), options)
            out = traced(*args)
    except ExportError:
        raise
    except Exception as exc:
        raise ExportError(
            f"Tracing {arch} (text2text-generation) for {backend.name}: the {what} could not be traced: {cause(exc)}. "
            "Use format='onnx' (encoder and decoder with past key values)."
        ) from exc
    return traced, tuple(out if isinstance(out, (tuple, list)) else (out,))
