"""Numpy post-processing, one function per task.

Each function takes the model outputs for a batch, the encoded batch and the
task context, and returns that batch's rows (or, for text classification, its
``Columns``: what the output DataFrame is built from without per-row dicts). The shapes follow MLflow's own
``mlflow.transformers`` pyfunc so a client can switch flavors unchanged.
Serving path: no torch, no transformers, Python 3.10.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from mlflow_tfexport.errors import BadInputError
from mlflow_tfexport.serving.frames import Columns
from mlflow_tfexport.serving.tokenization import EncodedBatch, TextEncoder


@dataclass
class Context:
    """What post-processing needs besides the outputs."""

    encoder: TextEncoder
    id2label: Mapping[int, str]
    problem_type: Optional[str]
    mask_token_id: Optional[int]
    texts: List[str]
    pairs: Optional[List[str]]
    params: Mapping[str, Any]
    #: The outputs with their axes (``tasks.OutputSpec``): what ``raw_outputs`` returns, in order.
    outputs: Sequence[Any] = ()


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    out: np.ndarray = e / e.sum(axis=axis, keepdims=True)
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return out


def _label(ctx: Context, index: int) -> str:
    return str(ctx.id2label.get(int(index), f"LABEL_{int(index)}"))


def text_classification(out: Dict[str, np.ndarray], batch: EncodedBatch, ctx: Context) -> Columns:
    logits = out["logits"].astype(np.float64)
    best = logits.argmax(axis=-1)  # softmax and sigmoid keep the order: the best logit is the best score
    top = logits.max(axis=-1)
    if ctx.problem_type == "multi_label_classification" or logits.shape[-1] == 1:
        score = sigmoid(top)
    else:  # softmax at the best logit: 1 / sum(exp(logits - max))
        score = 1.0 / np.exp(logits - top[:, None]).sum(axis=-1)
    labels = ctx.id2label
    return Columns(label=[str(labels.get(b, f"LABEL_{b}")) for b in best.tolist()], score=score)


def feature_extraction(out: Dict[str, np.ndarray], batch: EncodedBatch, ctx: Context) -> List[np.ndarray]:
    hidden = out["last_hidden_state"].astype(np.float32)
    pooling = str(ctx.params.get("pooling", "mean"))
    if pooling == "mean":
        mask = batch.attention_mask[..., None].astype(np.float32)
        pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
    elif pooling == "cls":
        pooled = hidden[:, 0]
    else:
        raise BadInputError(f"params pooling={pooling!r} is not supported; use 'mean' or 'cls'.")
    if ctx.params.get("normalize", False):
        pooled = pooled / np.clip(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12, None)
    return list(pooled)


def token_classification(out: Dict[str, np.ndarray], batch: EncodedBatch, ctx: Context) -> List[Any]:
    scores = softmax(out["logits"].astype(np.float64))
    best = scores.argmax(axis=-1)
    best_score = np.take_along_axis(scores, best[..., None], axis=-1)[..., 0]
    mode = str(ctx.params.get("output", "labels"))
    if mode not in ("labels", "entities"):
        raise BadInputError(f"params output={mode!r} is not supported; use 'labels' or 'entities'.")
    rows: List[Any] = []
    for r, enc in enumerate(batch.encodings):
        n = len(enc.ids)
        keep = (np.asarray(enc.special_tokens_mask[:n]) == 0) & (np.asarray(enc.attention_mask[:n]) == 1)
        entities = []
        for idx in np.flatnonzero(keep):
            label = _label(ctx, best[r, idx])
            if label == "O":
                continue
            start, end = enc.offsets[idx]
            word = enc.tokens[idx]
            if ctx.encoder.unk_token_id is not None and enc.ids[idx] == ctx.encoder.unk_token_id:
                word = ctx.texts[r][start:end]  # the original text, as the pipeline shows it
            entities.append(
                {
                    "entity": label,
                    "score": float(best_score[r, idx]),
                    "index": int(idx),
                    "word": word,
                    "start": int(start),
                    "end": int(end),
                }
            )
        rows.append(entities if mode == "entities" else ",".join(e["entity"] for e in entities))
    return rows


def fill_mask(out: Dict[str, np.ndarray], batch: EncodedBatch, ctx: Context) -> List[Dict[str, Any]]:
    if ctx.mask_token_id is None:
        raise BadInputError("This model's tokenizer has no mask token; fill-mask cannot run.")
    ids = batch.feeds["input_ids"]
    top_k = int(ctx.params.get("top_k", 5))
    rows = []
    for r in range(ids.shape[0]):
        positions = np.flatnonzero(ids[r] == ctx.mask_token_id)
        if len(positions) != 1:
            mask_token = ctx.encoder.id_to_token(ctx.mask_token_id)
            raise BadInputError(
                f"Row {r} has {len(positions)} mask tokens; fill-mask expects exactly one "
                f"{mask_token!r} per input, e.g. 'Paris is the {mask_token} of France.'"
            )
        probs = softmax(out["logits"][r, positions[0]].astype(np.float64))
        k = min(top_k, probs.shape[-1])
        top = np.argpartition(-probs, k - 1)[:k]
        top = top[np.argsort(-probs[top], kind="stable")]
        tokens = ids[r, : int(batch.lengths[r])].copy()
        tokens[positions[0]] = top[0]
        rows.append(
            {
                "token_str": ctx.encoder.decode([int(top[0])], skip_special_tokens=False),
                "score": float(probs[top[0]]),
                "token": int(top[0]),
                "sequence": ctx.encoder.decode(tokens.tolist()),
                "top_k_tokens": [ctx.encoder.decode([int(t)], skip_special_tokens=False) for t in top],
                "top_k_scores": [float(probs[t]) for t in top],
            }
        )
    return rows


def question_answering(out: Dict[str, np.ndarray], batch: EncodedBatch, ctx: Context) -> List[Dict[str, Any]]:
    """Best span inside the context, as the former transformers QA pipeline chose it."""
    max_answer_len = int(ctx.params.get("max_answer_len", 15))
    rows = []
    for r, enc in enumerate(batch.encodings):
        n = int(batch.lengths[r])
        seq_ids = np.array([-1 if s is None else s for s in enc.sequence_ids[:n]])
        context_tokens = seq_ids == 1
        start = out["start_logits"][r, :n].astype(np.float64)
        end = out["end_logits"][r, :n].astype(np.float64)
        undesired = ~context_tokens
        # A leading special token (BERT's [CLS]) takes part in normalisation, as in the pipeline.
        has_cls = n > 0 and enc.special_tokens_mask[0] == 1 and enc.sequence_ids[0] is None
        if has_cls:
            undesired[0] = False
        start = np.where(undesired, -10000.0, start)
        end = np.where(undesired, -10000.0, end)
        start = softmax(start)
        end = softmax(end)
        if has_cls:
            start[0] = end[0] = 0.0
        scores = np.triu(np.outer(start, end)) - np.triu(np.outer(start, end), k=max_answer_len)
        allowed = np.outer(context_tokens, context_tokens)
        scores = np.where(allowed, scores, 0.0)
        best = int(np.argmax(scores))
        s_tok, e_tok = divmod(best, n)
        context = ctx.pairs[r] if ctx.pairs is not None else ""
        char_start = int(enc.offsets[s_tok][0])
        char_end = int(enc.offsets[e_tok][1])
        rows.append(
            {
                "answer": context[char_start:char_end],
                "score": float(scores[s_tok, e_tok]),
                "start": char_start,
                "end": char_end,
            }
        )
    return rows


def _row_value(value: np.ndarray, axes: Mapping[int, str], length: int) -> Any:
    """One row of an output (its batch axis 0 already taken), cut to the row's real tokens along its
    sequence axes, as a number or nested lists of numbers."""
    for axis, name in axes.items():
        if name == "sequence" and 0 < axis <= value.ndim:
            value = np.take(value, np.arange(min(length, value.shape[axis - 1])), axis=axis - 1)
    return value.item() if value.ndim == 0 else value.tolist()


def raw_outputs(out: Dict[str, np.ndarray], batch: EncodedBatch, ctx: Context) -> Columns:
    """A user's export config with ``postprocess="raw"``: every output a column, one value per row (a number,
    or lists of numbers cut to the row's real tokens along a sequence axis)."""
    lengths = batch.lengths.tolist()
    columns = Columns()
    for spec in ctx.outputs:
        value = np.asarray(out[spec.name])
        if value.dtype.kind == "f":
            value = value.astype(np.float64)
        columns[spec.name] = [_row_value(value[r], spec.axes, int(lengths[r])) for r in range(value.shape[0])]
    return columns
