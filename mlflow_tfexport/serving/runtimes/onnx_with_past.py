"""Greedy decoding with past key values on exported generation graphs: onnxruntime and numpy only.

``DecoderWithPastRunner`` serves a causal LM exported as one with-past graph,
``Seq2SeqRunner`` an encoder-decoder exported as ``encoder.onnx`` +
``decoder.onnx`` (see ``export/onnx_generation.py`` for the graphs' inputs and
outputs). Each generated token costs one decoder step on one new position, so
decoding is linear in the number of tokens, not quadratic. Python 3.10-compatible.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport.constants import FlavorKey, Generation
from mlflow_tfexport.errors import BadInputError, TfexportError
from mlflow_tfexport.serving.conf import artifact_path
from mlflow_tfexport.serving.runtimes.sessions import new_session

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _session(path: str, config: Mapping[str, Any]) -> Any:
    return new_session(path, config)


def _empty_past(session: Any, names: Sequence[str], batch: int) -> List[np.ndarray]:
    """Zero-length caches shaped like the graph's past inputs: [batch, heads, 0, head_dim]."""
    by_name = {i.name: i for i in session.get_inputs()}
    out = []
    for name in names:
        info = by_name[name]
        dims = [d if isinstance(d, int) else 0 for d in info.shape]
        dims[0] = batch
        out.append(np.zeros(dims, dtype=_DTYPES.get(info.type, np.float32)))
    return out


def _check_beams(num_beams: int) -> None:
    if int(num_beams) != 1:
        raise BadInputError(
            f"params num_beams={num_beams}: the ONNX variant decodes greedily only (num_beams=1). "
            "Send num_beams=1, or serve the source (transformers) variant for beam search."
        )


class DecoderWithPastRunner:
    """A causal LM's with-past graph; ``generate`` is greedy decoding with the cache."""

    input_names: Tuple[str, ...] = ("input_ids", "attention_mask")
    output_names: Tuple[str, ...] = ("logits",)

    def __init__(self, path: str, config: Mapping[str, Any]) -> None:
        self.session = _session(path, config)
        self.past_names = [i.name for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self.present_names = [o.name for o in self.session.get_outputs() if o.name.startswith("present.")]
        self._outputs = [o.name for o in self.session.get_outputs()]

    def empty_past(self, batch: int) -> List[np.ndarray]:
        return _empty_past(self.session, self.past_names, batch)

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, past: Sequence[np.ndarray]) -> Dict[str, Any]:
        """One forward: new ``input_ids``, the mask over past + new positions, the past caches."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask,
                 **dict(zip(self.past_names, past, strict=True))}
        return dict(zip(self._outputs, self.session.run(None, feeds), strict=True))

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        ids = feeds["input_ids"]
        return {"logits": self.step(ids, feeds["attention_mask"], self.empty_past(ids.shape[0]))["logits"]}

    def generate(
        self, prompt_ids: Sequence[int], *, max_new_tokens: int, eos_token_id: Optional[int], num_beams: int = 1
    ) -> List[int]:
        _check_beams(num_beams)
        ids = np.asarray([list(prompt_ids)], dtype=np.int64)
        mask = np.ones_like(ids)
        out = self.step(ids, mask, self.empty_past(1))
        generated: List[int] = []
        while True:
            next_id = int(np.argmax(out["logits"][0, -1]))
            generated.append(next_id)
            if len(generated) >= max_new_tokens or (eos_token_id is not None and next_id == eos_token_id):
                return generated
            mask = np.ones((1, mask.shape[1] + 1), dtype=np.int64)
            out = self.step(np.array([[next_id]], dtype=np.int64), mask, [out[n] for n in self.present_names])

    def describe(self) -> Dict[str, Any]:
        return {"providers": self.session.get_providers(), "generation": Generation.DECODER_WITH_PAST}


class Seq2SeqRunner:
    """An encoder-decoder's encoder graph and with-past decoder graph; ``generate`` decodes greedily."""

    input_names: Tuple[str, ...] = ("input_ids", "attention_mask")
    output_names: Tuple[str, ...] = ("logits",)

    def __init__(self, encoder_path: str, decoder_path: str, conf: Mapping[str, Any], config: Mapping[str, Any]):
        self.encoder_session = _session(encoder_path, config)
        self.decoder_session = _session(decoder_path, config)
        self._enc_outputs = [o.name for o in self.encoder_session.get_outputs()]
        self._dec_outputs = [o.name for o in self.decoder_session.get_outputs()]
        names = [i.name for i in self.decoder_session.get_inputs()]
        self.self_names = [n for n in names if n.startswith("past_key_values.") and ".decoder." in n]
        self.cross_past_names = [n for n in names if n.startswith("past_key_values.") and ".encoder." in n]
        self.cross_names = [n for n in self._enc_outputs if n.startswith("present.")]  # encoder outputs
        self.present_names = [n for n in self._dec_outputs if n.startswith("present.")]
        self.decoder_start_token_id = int(conf[FlavorKey.DECODER_START_TOKEN_ID])
        self.forced_bos_token_id = conf.get(FlavorKey.FORCED_BOS_TOKEN_ID)
        self.forced_eos_token_id = conf.get(FlavorKey.FORCED_EOS_TOKEN_ID)

    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> Dict[str, Any]:
        values = self.encoder_session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})
        return dict(zip(self._enc_outputs, values, strict=True))

    def empty_past(self, batch: int) -> List[np.ndarray]:
        return _empty_past(self.decoder_session, self.self_names, batch)

    def step(
        self, decoder_input_ids: np.ndarray, encoder_attention_mask: np.ndarray, past: Sequence[np.ndarray],
        encoded: Mapping[str, np.ndarray],
    ) -> Dict[str, Any]:
        feeds = {"decoder_input_ids": decoder_input_ids, "encoder_attention_mask": encoder_attention_mask,
                 **dict(zip(self.self_names, past, strict=True)),
                 **{p: encoded[c] for p, c in zip(self.cross_past_names, self.cross_names, strict=True)}}
        return dict(zip(self._dec_outputs, self.decoder_session.run(None, feeds), strict=True))

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The first decoder step's logits (decoder start token) for each encoder input row."""
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        start = np.full((ids.shape[0], 1), self.decoder_start_token_id, dtype=np.int64)
        out = self.step(start, mask, self.empty_past(ids.shape[0]), self.encode(ids, mask))
        return {"logits": out["logits"]}

    def _next(self, logits: np.ndarray, produced: int, max_new_tokens: int) -> int:
        """Greedy choice with the forced tokens of the model's generation config (as transformers'
        ForcedBOS/ForcedEOS logits processors: the first token, the token at the length limit)."""
        if self.forced_eos_token_id is not None and produced == max_new_tokens - 1:
            return int(self.forced_eos_token_id)
        if self.forced_bos_token_id is not None and produced == 0:
            return int(self.forced_bos_token_id)
        return int(np.argmax(logits))

    def generate(
        self, prompt_ids: Sequence[int], *, max_new_tokens: int, eos_token_id: Optional[int], num_beams: int = 1
    ) -> List[int]:
        _check_beams(num_beams)
        ids = np.asarray([list(prompt_ids)], dtype=np.int64)
        mask = np.ones_like(ids)
        encoded = self.encode(ids, mask)
        out = self.step(np.array([[self.decoder_start_token_id]], dtype=np.int64), mask, self.empty_past(1), encoded)
        generated: List[int] = []
        while True:
            next_id = self._next(out["logits"][0, -1], len(generated), max_new_tokens)
            generated.append(next_id)
            if len(generated) >= max_new_tokens or (eos_token_id is not None and next_id == eos_token_id):
                return generated
            out = self.step(np.array([[next_id]], dtype=np.int64), mask, [out[n] for n in self.present_names],
                            encoded)

    def describe(self) -> Dict[str, Any]:
        return {"providers": self.decoder_session.get_providers(), "generation": Generation.ENCODER_DECODER}


def load(model_dir: str, flavor_conf: Mapping[str, Any], config: Mapping[str, Any]) -> Any:
    kind = flavor_conf.get(FlavorKey.GENERATION)
    model_file = artifact_path(model_dir, flavor_conf, FlavorKey.MODEL_FILE)
    if kind == Generation.DECODER_WITH_PAST:
        return DecoderWithPastRunner(model_file, config)
    if kind == Generation.ENCODER_DECODER:
        encoder = artifact_path(model_dir, flavor_conf, FlavorKey.ENCODER_FILE)
        return Seq2SeqRunner(encoder, model_file, flavor_conf, config)
    raise TfexportError(
        f"The model's MLmodel names generation layout {kind!r}; this version of mlflow-tfexport serves "
        f"{Generation.DECODER_WITH_PAST!r} and {Generation.ENCODER_DECODER!r}. Upgrade mlflow-tfexport to serve it."
    )
