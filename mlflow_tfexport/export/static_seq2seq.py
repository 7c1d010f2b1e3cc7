"""Encoder-decoders on static shapes (TorchScript, Neuron): an encoder per bucket, a cache-free decoder per length.

A static trace fixes every tensor's shape, so the decoder's growing cache of past
key values cannot be traced. Instead (as AWS's Inf1 translation tutorials do):

- ``BxS.pt``: the encoder, ``(input_ids, attention_mask) -> last_hidden_state``, one per
  bucket ``(batch, source length)`` of ``trace_shape``;
- ``decoder-BxSxT.pt``: the decoder without a cache, ``(decoder_input_ids [B, T],
  encoder_hidden_states [B, S, H], encoder_attention_mask [B, S], decoder_position [B])
  -> logits [B, 1, V]``, one per bucket and decoder length ``T`` (the buckets' sequence
  lengths: the generated length is bucketed like the source length).

Each generated token re-runs the decoder on the whole decoder sequence so far, padded on
the right to the smallest ``T`` that holds it: the decoder is causal, so real positions
never see the padding, and the logits at the last real position are the model's. Only
that position's logits are computed: the hidden state at ``decoder_position`` is gathered
before the LM head (a pre-hook on the model's output embeddings while tracing), so the
head's ``H x V`` product runs on one position instead of ``T``. This is
what causal decoding on static shapes does here (``decoding.FullSequenceSteps``); the
alternative, a fixed-size cache with a position mask fed in and out of every call, is
discussed with measurements in ``docs/static-seq2seq.md``.

The serving side is ``serving/runtimes/static_seq2seq.py``; validation
``validation/static_seq2seq.py``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Dict, Iterator, List, Sequence, Tuple

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
    """``(decoder_input_ids, encoder_hidden_states, encoder_attention_mask, decoder_position) -> (logits [B, 1, V],)``,
    no cache; the logits at ``decoder_position`` only while traced inside ``logits_at_position``."""
    torch = require("torch")

    class StaticDecoder(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.position: Dict[str, Any] = {}  # the traced decoder_position, read by logits_at_position's hook

        def forward(self, decoder_input_ids: Any, encoder_hidden_states: Any, encoder_attention_mask: Any,
                    decoder_position: Any) -> Tuple[Any]:
            self.position["index"] = decoder_position
            out = self.model(encoder_outputs=(encoder_hidden_states,), attention_mask=encoder_attention_mask,
                             decoder_input_ids=decoder_input_ids, use_cache=False, return_dict=True)
            return (out.logits,)

    return StaticDecoder().eval()


@contextlib.contextmanager
def logits_at_position(decoder: Any) -> Iterator[None]:
    """While tracing ``decoder`` (``decoder_module``): the model's LM head gets the hidden state of each row at its
    ``decoder_position`` (``[B, 1, H]``) instead of every position's, through a forward pre-hook on the output
    embeddings, so whatever the architecture adds after the head (BART's ``final_logits_bias``, T5's scaling
    before it) is traced unchanged. The hook is removed afterwards: the eager model is left as it was."""

    def gather(_module: Any, args: Tuple[Any, ...]) -> Tuple[Any, ...]:
        hidden = args[0]
        index = decoder.position["index"][:, None, None].expand(-1, 1, hidden.shape[-1])
        return (hidden.gather(1, index),) + tuple(args[1:])

    head = decoder.model.get_output_embeddings()
    if head is None:
        raise ExportError(f"{type(decoder.model).__name__} has no output embeddings (LM head) to gather logits at; "
                          "use format='onnx'.")
    handle = head.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()
        decoder.position.clear()


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
            # Rows at different positions, so the gather is traced per row (never folded to a constant index).
            position = torch.arange(shape[0], dtype=torch.int64) % length
            args = (torch.from_numpy(dec).to(device), states, enc_args[1], (length - 1 - position).to(device))
            with logits_at_position(decoder):
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
