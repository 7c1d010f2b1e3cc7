"""Decoding with past key values on exported generation graphs: onnxruntime and numpy only.

``DecoderWithPastRunner`` serves a causal LM exported as one with-past graph,
``Seq2SeqRunner`` an encoder-decoder exported as ``encoder.onnx`` +
``decoder.onnx`` (see ``export/onnx/generation.py`` for the graphs' inputs and
outputs). Each generated token costs one decoder step on one new position, so
decoding is linear in the number of tokens, not quadratic. Each runner's
``steps()`` is the ``StepModel`` of ``serving/decoding.py`` (greedy, sampling,
beam search, batches): a causal graph that takes ``position_ids`` decodes
left-padded prompts together (positions counted over each row's real tokens);
a graph without them (BLOOM's ALiBi reads the mask; graphs exported before
positions were an input) decodes one prompt at a time. Python 3.10-compatible.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport.constants import ONNX_META_ROW_CHUNKS, FlavorKey, Generation
from mlflow_tfexport.errors import TfexportError
from mlflow_tfexport.serving import decoding
from mlflow_tfexport.serving.batching import given_cores
from mlflow_tfexport.serving.conf import artifact_path
from mlflow_tfexport.serving.runtimes.padding import right_padded
from mlflow_tfexport.serving.runtimes.sessions import new_session, wants_auto_threads

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _session(path: str, config: Mapping[str, Any]) -> Any:
    """The graph's session. With ``intra_op_num_threads: "auto"`` (what variants are written with) one session
    with an intra-op thread per core given (``given_cores``): a decode is a chain of one-position steps that
    cannot be split over rows, so a lone request gets every core, and concurrent requests share the pool (a
    second, one-thread session as for the other tasks would double the decoder's memory)."""
    if wants_auto_threads(config):
        config = {**config, "intra_op_num_threads": given_cores()}
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


def _take(arrays: Sequence[np.ndarray], rows: np.ndarray) -> List[np.ndarray]:
    return [a[rows] for a in arrays]


class _Decodes:
    """``decode``/``decode_stream``/``generate`` of a runner from its ``steps()`` (see ``serving/decoding.py``)."""

    def steps(self) -> Any:
        raise NotImplementedError

    def configure(self, cfg: decoding.DecodeConfig) -> decoding.DecodeConfig:
        return cfg

    def histories(self, prompts: Sequence[Sequence[int]]) -> List[List[int]]:
        """What the repetition penalty starts from: the prompt (an encoder-decoder: the decoder start)."""
        return [list(p) for p in prompts]

    def decode(self, prompts: Sequence[Sequence[int]], cfg: decoding.DecodeConfig,
               stopped: Optional[decoding.StopFn] = None) -> List[List[List[int]]]:
        return decoding.generate(self.steps(), prompts, self.configure(cfg), self.histories(prompts), stopped)

    def decode_stream(self, prompt: Sequence[int], cfg: decoding.DecodeConfig,
                      stopped: Optional[decoding.StopFn] = None) -> Iterator[int]:
        return decoding.stream(self.steps(), prompt, self.configure(cfg), self.histories([prompt])[0], stopped)

    def generate(self, prompt_ids: Sequence[int], *, max_new_tokens: int, eos_token_id: Optional[int],
                 num_beams: int = 1) -> List[int]:
        """Greedy (or beam) decoding of one prompt: its new tokens."""
        cfg = decoding.DecodeConfig(max_new_tokens=int(max_new_tokens), eos_token_id=eos_token_id,
                                    num_beams=int(num_beams))
        return self.decode([list(prompt_ids)], cfg)[0][0]


class _DecodesSeq2Seq(_Decodes):
    """An encoder-decoder runner (ONNX with past, static TorchScript/Neuron): forced first/last tokens, and the
    repetition penalty starts from the decoder start token. Subclasses set the three token ids."""

    decoder_start_token_id: int
    forced_bos_token_id: Optional[int]
    forced_eos_token_id: Optional[int]

    def configure(self, cfg: decoding.DecodeConfig) -> decoding.DecodeConfig:
        """The model's forced first/last tokens (transformers' ForcedBOS/ForcedEOS logits processors)."""
        bos, eos = self.forced_bos_token_id, self.forced_eos_token_id
        return replace(cfg, forced_bos_token_id=None if bos is None else int(bos),
                       forced_eos_token_id=None if eos is None else int(eos))

    def histories(self, prompts: Sequence[Sequence[int]]) -> List[List[int]]:
        return [[self.decoder_start_token_id] for _ in prompts]


class _CausalSteps:
    """Left-padded prompts through the with-past graph; state: (attention mask, presents)."""

    def __init__(self, runner: DecoderWithPastRunner) -> None:
        self.runner = runner
        self.batches = runner.has_positions

    def start(self, prompts: Sequence[Sequence[int]]) -> Tuple[np.ndarray, Any]:
        width = max(len(p) for p in prompts)
        ids = np.zeros((len(prompts), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = prompt
            mask[row, width - len(prompt):] = 1
        out = self.runner.step(ids, mask, self.runner.empty_past(len(prompts)))
        return out["logits"][:, -1], (mask, [out[n] for n in self.runner.present_names])

    def advance(self, state: Any, tokens: np.ndarray) -> Tuple[np.ndarray, Any]:
        mask = np.concatenate([state[0], np.ones((state[0].shape[0], 1), dtype=np.int64)], axis=1)
        out = self.runner.step(tokens.astype(np.int64)[:, None], mask, state[1])
        return out["logits"][:, -1], (mask, [out[n] for n in self.runner.present_names])

    def select(self, state: Any, rows: np.ndarray) -> Any:
        return state[0][rows], _take(state[1], rows)


class _Seq2SeqSteps:
    """Right-padded encoder inputs, one decoder start token per row; state: (mask, encoded, presents)."""

    batches = True

    def __init__(self, runner: Seq2SeqRunner) -> None:
        self.runner = runner

    def start(self, prompts: Sequence[Sequence[int]]) -> Tuple[np.ndarray, Any]:
        ids, mask = right_padded(prompts, self.runner.pad_token_id)
        encoded = self.runner.encode(ids, mask)
        start = np.full((len(prompts), 1), self.runner.decoder_start_token_id, dtype=np.int64)
        out = self.runner.step(start, mask, self.runner.empty_past(len(prompts)), encoded)
        return out["logits"][:, -1], (mask, encoded, [out[n] for n in self.runner.present_names])

    def advance(self, state: Any, tokens: np.ndarray) -> Tuple[np.ndarray, Any]:
        mask, encoded, past = state
        out = self.runner.step(tokens.astype(np.int64)[:, None], mask, past, encoded)
        return out["logits"][:, -1], (mask, encoded, [out[n] for n in self.runner.present_names])

    def select(self, state: Any, rows: np.ndarray) -> Any:
        mask, encoded, past = state
        return mask[rows], {k: v[rows] for k, v in encoded.items()}, _take(past, rows)


class DecoderWithPastRunner(_Decodes):
    """A causal LM's with-past graph, decoded with its cache by ``serving/decoding.py``."""

    input_names: Tuple[str, ...] = ("input_ids", "attention_mask")
    output_names: Tuple[str, ...] = ("logits",)

    def __init__(self, path: str, config: Mapping[str, Any]) -> None:
        self.session = _session(path, config)
        self.past_names = [i.name for i in self.session.get_inputs() if i.name.startswith("past_key_values.")]
        self.present_names = [o.name for o in self.session.get_outputs() if o.name.startswith("present.")]
        self._outputs = [o.name for o in self.session.get_outputs()]
        self.has_positions = any(i.name == "position_ids" for i in self.session.get_inputs())
        # GroupQueryAttention takes several new tokens over a past for one row at a time (serving never does:
        # a prompt has an empty past, then one token per step; validation's middle chunk does).
        self.row_chunks = ONNX_META_ROW_CHUNKS in self.session.get_modelmeta().custom_metadata_map

    def steps(self) -> Any:
        return _CausalSteps(self)

    def empty_past(self, batch: int) -> List[np.ndarray]:
        return _empty_past(self.session, self.past_names, batch)

    def step(self, input_ids: np.ndarray, attention_mask: np.ndarray, past: Sequence[np.ndarray],
             position_ids: Optional[np.ndarray] = None) -> Dict[str, Any]:
        """One forward: new ``input_ids``, the mask over past + new positions, the past caches. A graph with
        ``position_ids`` gets each new token's position among its row's real tokens (as ``generate`` counts
        them), unless ``position_ids`` are given."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask,
                 **dict(zip(self.past_names, past, strict=True))}
        if self.has_positions:
            if position_ids is None:
                new = input_ids.shape[1]
                position_ids = (np.cumsum(attention_mask, axis=1) - 1)[:, -new:]
                position_ids = np.where(attention_mask[:, -new:] == 0, 1, position_ids)
            feeds["position_ids"] = np.asarray(position_ids, dtype=np.int64)
        batch, new = input_ids.shape
        if self.row_chunks and batch > 1 and new > 1 and attention_mask.shape[1] > new:
            rows = [self.session.run(None, {k: v[row:row + 1] for k, v in feeds.items()}) for row in range(batch)]
            return {name: np.concatenate([r[j] for r in rows]) for j, name in enumerate(self._outputs)}
        return dict(zip(self._outputs, self.session.run(None, feeds), strict=True))

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Logits of whole sequences (empty past; positions 0.. as the model counts them without a cache)."""
        ids = feeds["input_ids"]
        positions = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape)
        return {"logits": self.step(ids, feeds["attention_mask"], self.empty_past(ids.shape[0]), positions)["logits"]}

    def describe(self) -> Dict[str, Any]:
        return {"providers": self.session.get_providers(), "generation": Generation.DECODER_WITH_PAST}


class Seq2SeqRunner(_DecodesSeq2Seq):
    """An encoder-decoder's encoder graph and with-past decoder graph, decoded by ``serving/decoding.py``."""

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
        self.pad_token_id = int(conf.get(FlavorKey.PAD_TOKEN_ID) or 0)

    def steps(self) -> Any:
        return _Seq2SeqSteps(self)

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
