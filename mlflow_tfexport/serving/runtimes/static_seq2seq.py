"""Decoding an encoder-decoder traced at static shapes (TorchScript, Neuron): numpy around per-bucket modules.

The variant holds an encoder per bucket ``(batch, source length S)`` and a cache-free
decoder per bucket and decoder length ``T`` (``export/static_seq2seq.py``). A request's
prompts are right-padded to the smallest ``S`` that holds the longest one and encoded in
chunks of the bucket's batch (dummy rows: copies of the chunk's first row); every step
then re-runs the decoder on each row's decoder sequence so far (start token + generated
tokens), right-padded to the smallest ``T`` that holds it, and gets the logits at the
last real position only (its ``decoder_position`` input; the decoder is causal: the
padding after it is never seen). The loop
itself (greedy, sampling, beams, stop strings, streaming) is ``serving/decoding.py``, as
for the ONNX encoder-decoder.

A source longer than the largest ``S`` never gets here: the flavor block's ``max_length``
is the largest bucket's, so the tokenizer truncates (or answers 4xx with
``truncation=False``); ``max_new_tokens`` is bounded by the same length, so the decoder
sequence always fits the largest ``T``.

numpy only (the modules run through the ``run_bucket`` functions the format's runtime
gives). Python 3.10-compatible.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from mlflow_tfexport.constants import FlavorKey, Generation
from mlflow_tfexport.errors import BadInputError
from mlflow_tfexport.serving.runtimes.onnx_with_past import _DecodesSeq2Seq
from mlflow_tfexport.serving.runtimes.padding import right_padded
from mlflow_tfexport.serving.runtimes.static import FEWEST_CHUNKS, BucketFn, Shape, pick_bucket, shape_name

#: Runs one decoder module ``(bucket, T)`` on ``(decoder_input_ids, encoder_hidden_states, encoder_attention_mask,
#: decoder_position)``.
DecoderFn = Callable[[Shape, int, Sequence[np.ndarray]], Sequence[np.ndarray]]


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """``array`` with dummy rows (copies of its first row) up to ``rows``."""
    if len(array) == rows:
        return array
    out = np.empty((rows,) + array.shape[1:], dtype=array.dtype)
    out[:len(array)] = array
    out[len(array):] = array[0]
    return out


class _Steps:
    """Right-padded source rows, one decoder start token per row; state: (states, mask, decoder ids)."""

    batches = True

    def __init__(self, runner: StaticSeq2SeqRunner) -> None:
        self.runner = runner

    def start(self, prompts: Sequence[Sequence[int]]) -> Tuple[np.ndarray, Any]:
        ids, mask = right_padded(prompts, self.runner.pad_token_id)
        states, padded_mask = self.runner.encode(ids, mask)
        dec = np.full((len(prompts), 1), self.runner.decoder_start_token_id, dtype=np.int64)
        return self.runner.logits(dec, states, padded_mask), (states, padded_mask, dec)

    def advance(self, state: Any, tokens: np.ndarray) -> Tuple[np.ndarray, Any]:
        states, mask, dec = state
        dec = np.concatenate([dec, tokens.astype(np.int64)[:, None]], axis=1)
        return self.runner.logits(dec, states, mask), (states, mask, dec)

    def select(self, state: Any, rows: np.ndarray) -> Any:
        return tuple(part[rows] for part in state)


class StaticSeq2SeqRunner(_DecodesSeq2Seq):
    """Encoder buckets + decoder lengths of a static encoder-decoder, decoded by ``serving/decoding.py``."""

    input_names: Tuple[str, ...] = ("input_ids", "attention_mask")
    output_names: Tuple[str, ...] = ("logits",)

    def __init__(self, buckets: Sequence[Shape], decoder_lengths: Sequence[int], run_encoder: BucketFn,
                 run_decoder: DecoderFn, conf: Mapping[str, Any], describe: Mapping[str, Any]) -> None:
        self.buckets: List[Shape] = sorted({(int(b), int(s)) for b, s in buckets}, key=lambda x: (x[1], x[0]))
        self.decoder_lengths = sorted({int(t) for t in decoder_lengths})
        self.run_encoder, self.run_decoder = run_encoder, run_decoder
        self.decoder_start_token_id = int(conf[FlavorKey.DECODER_START_TOKEN_ID])
        self.forced_bos_token_id = conf.get(FlavorKey.FORCED_BOS_TOKEN_ID)
        self.forced_eos_token_id = conf.get(FlavorKey.FORCED_EOS_TOKEN_ID)
        self.pad_token_id = int(conf.get(FlavorKey.PAD_TOKEN_ID) or 0)
        #: What one more run costs, in rows (``static.pick_bucket``); set by the runtime.
        self.run_cost_rows = FEWEST_CHUNKS
        self.calls: Dict[str, int] = {}  # per-module call count ("enc 1x32", "dec 1x32x32")
        self._calls_lock = threading.Lock()  # requests run in several threads at once
        self._describe = dict(describe)

    @property
    def max_length(self) -> int:
        return max(s for _, s in self.buckets)

    def _count(self, key: str) -> None:
        with self._calls_lock:
            self.calls[key] = self.calls.get(key, 0) + 1

    def steps(self) -> Any:
        return _Steps(self)

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Encoder states ``[rows, S, H]`` and the mask padded to ``S``, the smallest bucket length that fits."""
        rows, width = (int(d) for d in input_ids.shape)
        batch, seq = pick_bucket(self.buckets, rows, width, self.run_cost_rows)
        ids = np.full((rows, seq), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((rows, seq), dtype=np.int64)
        ids[:, :width], mask[:, :width] = input_ids, attention_mask
        pieces = []
        for start in range(0, rows, batch):
            stop = min(start + batch, rows)
            out = self.run_encoder((batch, seq), [_pad_rows(ids[start:stop], batch),
                                                  _pad_rows(mask[start:stop], batch)])
            self._count(f"encoder {shape_name((batch, seq))}")
            pieces.append(np.asarray(out[0])[:stop - start])
        return np.concatenate(pieces, axis=0), mask

    def logits(self, decoder_ids: np.ndarray, states: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Logits ``[rows, V]`` at the last position of each row's decoder sequence ``decoder_ids`` ``[rows, t]``."""
        rows, length = (int(d) for d in decoder_ids.shape)
        seq = int(mask.shape[1])
        fitting = [t for t in self.decoder_lengths if t >= length]
        if not fitting:
            raise BadInputError(
                f"A decoder sequence of {length} tokens is longer than the longest traced decoder length "
                f"{max(self.decoder_lengths)}; send max_new_tokens below {max(self.decoder_lengths)}, or export with "
                "a longer trace_shape."
            )
        total = fitting[0]
        batch = pick_bucket([b for b in self.buckets if b[1] == seq], rows, seq, self.run_cost_rows)[0]
        ids = np.full((rows, total), self.pad_token_id, dtype=np.int64)
        ids[:, :length] = decoder_ids
        position = np.full((rows,), length - 1, dtype=np.int64)
        pieces = []
        for start in range(0, rows, batch):
            stop = min(start + batch, rows)
            out = self.run_decoder((batch, seq), total, [_pad_rows(ids[start:stop], batch),
                                                         _pad_rows(states[start:stop], batch),
                                                         _pad_rows(mask[start:stop], batch),
                                                         _pad_rows(position[start:stop], batch)])
            self._count(f"decoder {shape_name((batch, seq))}x{total}")
            pieces.append(np.asarray(out[0])[:stop - start, 0])
        return np.concatenate(pieces, axis=0)

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The first decoder step's logits (decoder start token) for each source row."""
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        states, padded = self.encode(ids, mask)
        start = np.full((ids.shape[0], 1), self.decoder_start_token_id, dtype=np.int64)
        return {"logits": self.logits(start, states, padded)[:, None]}

    def describe(self) -> Dict[str, Any]:
        return {"buckets": [shape_name(b) for b in self.buckets], "decoder_lengths": list(self.decoder_lengths),
                "generation": Generation.STATIC_ENCODER_DECODER, **self._describe}
