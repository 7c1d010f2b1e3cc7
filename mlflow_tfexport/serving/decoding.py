"""The decoding loop of every exported generation variant: logits processors, sampling, beam search; numpy only.

A variant supplies a ``StepModel``: ``start(prompts)`` runs the prompts (one row
each, left-padded by the model where it batches) and returns each row's
next-token logits and an opaque state; ``advance(state, tokens)`` feeds one new
token per row; ``select(state, rows)`` keeps (or repeats) rows of the state, so
finished rows leave the batch and beams follow their parents. The ONNX graphs
with past key values (``runtimes/onnx_with_past.py``) cost one new position per
token; ``FullSequenceSteps`` re-runs the whole sequence on any logits runner
(TorchScript traces).

Each step is a few small functions over the ``[rows, vocab]`` logits, in the
order transformers applies them: forced first/last token, repetition penalty,
then for sampling temperature, top-k and top-p, and a draw from each row's own
``numpy.random.Generator`` (seeded from the request's ``seed`` and the row's
sequence number: the same seed and prompt give the same text whether the
prompt comes alone or in a batch; no global random state, so concurrent
requests never touch each other's draws). Greedy and beam search follow
transformers' ``generate`` (beam search: length penalty 1.0, no early stopping),
so their tokens equal the source variant's.

No torch, no transformers. Python 3.10-compatible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

try:
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore[assignment,misc]

from mlflow_tfexport.errors import BadInputError
from mlflow_tfexport.serving.deadline import Deadline, check_deadline

#: ``stopped(row, tokens)``: whether a row's generated tokens so far end its output (stop strings).
StopFn = Callable[[int, Sequence[int]], bool]
_NEG = -1.0e9  # transformers' "never this beam" score


@dataclass(frozen=True)
class DecodeConfig:
    """One request's decoding settings (the task's generation params, checked)."""

    max_new_tokens: int
    eos_token_id: Optional[int] = None
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    num_beams: int = 1
    num_return_sequences: int = 1
    seed: Optional[int] = None
    forced_bos_token_id: Optional[int] = None
    forced_eos_token_id: Optional[int] = None
    #: The request's deadline (``serving/deadline.py``), checked before every decoding step; None: no deadline.
    deadline: Optional[Deadline] = field(default=None, compare=False)

    def check_deadline(self, produced: int) -> None:
        """Stop (``RequestTimeoutError``) once the request's deadline has passed: called between steps."""
        check_deadline(self.deadline, produced, self.max_new_tokens, "new tokens")

    @classmethod
    def from_params(cls, params: Mapping[str, Any], eos_token_id: Optional[int]) -> DecodeConfig:
        """The config of checked ``params`` (``seed`` -1: none); refuses combinations no variant decodes."""
        seed = int(params.get("seed", -1))
        cfg = cls(
            max_new_tokens=int(params["max_new_tokens"]), eos_token_id=eos_token_id,
            do_sample=bool(params.get("do_sample", False)), temperature=float(params.get("temperature", 1.0)),
            top_k=int(params.get("top_k", 0)), top_p=float(params.get("top_p", 1.0)),
            repetition_penalty=float(params.get("repetition_penalty", 1.0)),
            num_beams=int(params.get("num_beams", 1)), num_return_sequences=int(params.get("num_return_sequences", 1)),
            seed=None if seed < 0 else seed,
        )
        cfg.check()
        return cfg

    def check(self) -> None:
        if self.do_sample and self.num_beams > 1:
            raise BadInputError(
                f"params do_sample=true with num_beams={self.num_beams}: beam sampling is not offered. Send "
                "do_sample=true with num_beams=1 to sample, or do_sample=false with num_beams > 1 for beam search."
            )
        if self.num_return_sequences > max(self.num_beams, 1) and not self.do_sample:
            raise BadInputError(
                f"params num_return_sequences={self.num_return_sequences} with num_beams={self.num_beams} and "
                "do_sample=false: greedy and beam search return at most num_beams sequences. Send "
                f"num_beams >= {self.num_return_sequences}, or do_sample=true."
            )


class StepModel(Protocol):
    """What the loop needs from a variant (see the module doc)."""

    #: Whether rows of different lengths decode together (left padding); else one prompt at a time.
    batches: bool

    def start(self, prompts: Sequence[Sequence[int]]) -> Tuple[np.ndarray, Any]: ...

    def advance(self, state: Any, tokens: np.ndarray) -> Tuple[np.ndarray, Any]: ...

    def select(self, state: Any, rows: np.ndarray) -> Any: ...


# --------------------------------------------------------------------------- logits processors


def force_token(logits: np.ndarray, token: int) -> np.ndarray:
    """Every row must pick ``token`` (transformers' ForcedBOS/ForcedEOS processors)."""
    out = np.full_like(logits, -np.inf)
    out[:, token] = 0.0
    return out


def repetition_penalty(logits: np.ndarray, seen: Optional[np.ndarray], penalty: float) -> np.ndarray:
    """Tokens already in a row (``seen``: bool ``[rows, vocab]``) lose score: divided by ``penalty`` when
    positive, multiplied when negative (CTRL's penalty, as transformers applies it)."""
    if penalty == 1.0 or seen is None:
        return logits
    return np.where(seen, np.where(logits < 0, logits * penalty, logits / penalty), logits).astype(logits.dtype)


def temperature(logits: np.ndarray, value: float) -> np.ndarray:
    return logits if value == 1.0 else logits / np.float32(value)


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep each row's ``k`` best tokens (ties at the k-th score kept); 0 keeps all."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k, axis=-1)[:, -k][:, None]
    return np.where(logits < kth, -np.inf, logits)


def top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of best tokens whose probability reaches ``p`` (at least one token)."""
    if p >= 1.0:
        return logits
    order = np.argsort(logits, axis=-1, kind="stable")  # ascending, as transformers sorts
    ordered = np.take_along_axis(logits, order, axis=-1)
    cumulative = np.cumsum(softmax(ordered), axis=-1)
    drop_sorted = cumulative <= (1.0 - p)
    drop_sorted[:, -1] = False
    drop = np.zeros_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=-1)
    return np.where(drop, -np.inf, logits)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - np.max(logits, axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float32)
    shifted = x - np.max(x, axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def draw(logits: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """One token per row from the softmax of its logits, with that row's generator."""
    cumulative = np.cumsum(softmax(logits), axis=-1)
    u = np.array([rng.random() for rng in rngs]) * cumulative[:, -1]
    picked = (cumulative <= u[:, None]).sum(axis=-1)
    return np.minimum(picked, logits.shape[-1] - 1).astype(np.int64)


def row_generator(seed: Optional[int], sequence: int) -> np.random.Generator:
    """The generator of a prompt's ``sequence``-th returned sequence: from the request's seed, else fresh."""
    return np.random.default_rng(None if seed is None else [int(seed), int(sequence)])


def _forced(logits: np.ndarray, cfg: DecodeConfig, produced: int) -> np.ndarray:
    if cfg.forced_eos_token_id is not None and produced == cfg.max_new_tokens - 1:
        return force_token(logits, cfg.forced_eos_token_id)
    if cfg.forced_bos_token_id is not None and produced == 0:
        return force_token(logits, cfg.forced_bos_token_id)
    return logits


def _seen(histories: Sequence[Sequence[int]], vocab: int, cfg: DecodeConfig) -> Optional[np.ndarray]:
    if cfg.repetition_penalty == 1.0:
        return None
    seen = np.zeros((len(histories), vocab), dtype=bool)
    for row, ids in enumerate(histories):
        seen[row, [i for i in ids if 0 <= i < vocab]] = True
    return seen


# --------------------------------------------------------------------------- greedy and sampling


def stream_rows(model: StepModel, prompts: Sequence[Sequence[int]], cfg: DecodeConfig,
                histories: Sequence[Sequence[int]], stopped: Optional[StopFn] = None,
                ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Greedy or sampled decoding of ``prompts`` together, each repeated ``num_return_sequences`` times (row
    ``i * n + j``): yields ``(rows, tokens)`` after every step, the rows still running and their new token.
    ``histories``: per prompt, the ids the repetition penalty starts from. A row stops at the eos token,
    when ``stopped`` says so, or at ``max_new_tokens``; the others go on without it."""
    if cfg.max_new_tokens <= 0 or not prompts:
        return
    n = cfg.num_return_sequences
    expanded = [list(p) for p in prompts for _ in range(n)]
    cfg.check_deadline(0)
    logits, state = model.start(expanded)
    alive = np.arange(len(expanded))
    seen = _seen([h for h in histories for _ in range(n)], logits.shape[-1], cfg)
    rngs = [row_generator(cfg.seed, j) for _ in prompts for j in range(n)] if cfg.do_sample else []
    generated: List[List[int]] = [[] for _ in expanded]
    produced = 0
    while True:
        scores = _forced(logits, cfg, produced)
        scores = repetition_penalty(scores, None if seen is None else seen[alive], cfg.repetition_penalty)
        if cfg.do_sample:
            scores = top_p(top_k(temperature(scores, cfg.temperature), cfg.top_k), cfg.top_p)
            tokens = draw(scores, [rngs[r] for r in alive])
        else:
            tokens = np.argmax(scores, axis=-1).astype(np.int64)
        yield alive, tokens
        produced += 1
        if seen is not None:
            seen[alive, tokens] = True
        done = np.zeros(len(alive), dtype=bool) if cfg.eos_token_id is None else tokens == cfg.eos_token_id
        if stopped is not None:
            for i, (row, token) in enumerate(zip(alive.tolist(), tokens.tolist(), strict=True)):
                generated[row].append(token)
                done[i] = done[i] or stopped(row, generated[row])
        if produced >= cfg.max_new_tokens or done.all():
            return
        if done.any():
            keep = np.flatnonzero(~done)
            state, alive, tokens = model.select(state, keep), alive[keep], tokens[keep]
        cfg.check_deadline(produced)
        logits, state = model.advance(state, tokens)


def _sample_or_greedy(model: StepModel, prompts: Sequence[Sequence[int]], cfg: DecodeConfig,
                      histories: Sequence[Sequence[int]], stopped: Optional[StopFn]) -> List[List[List[int]]]:
    n = cfg.num_return_sequences
    out: List[List[int]] = [[] for _ in range(len(prompts) * n)]
    for rows, tokens in stream_rows(model, prompts, cfg, histories, stopped):
        for row, token in zip(rows.tolist(), tokens.tolist(), strict=True):
            out[row].append(token)
    return [out[i * n:(i + 1) * n] for i in range(len(prompts))]


# --------------------------------------------------------------------------- beam search


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, best first (ties: the lower index first, as ``torch.topk`` on CPU)."""
    return np.argsort(-scores, kind="stable")[:k]


def beam_search(model: StepModel, prompt: Sequence[int], cfg: DecodeConfig, history: Sequence[int],
                stopped: Optional[StopFn] = None) -> List[List[int]]:
    """transformers' beam search (``_beam_search``: 2 x num_beams candidates per step, length penalty 1.0,
    ``early_stopping=False``) over one prompt: the ``num_return_sequences`` best sequences' new tokens.
    ``stopped`` ends a beam as its eos token does."""
    nb, length_penalty = cfg.num_beams, 1.0
    keep = 2 * nb
    cfg.check_deadline(0)
    logits, state = model.start([list(prompt)] * nb)
    vocab = logits.shape[-1]
    running: List[List[int]] = [[] for _ in range(nb)]
    running_scores = np.full(nb, _NEG, dtype=np.float32)
    running_scores[0] = 0.0
    finished: List[List[int]] = [[] for _ in range(nb)]
    finished_scores = np.full(nb, _NEG, dtype=np.float32)
    is_finished = np.zeros(nb, dtype=bool)
    improvable = True
    produced = 0
    while True:
        log_probs = _forced(log_softmax(logits), cfg, produced)
        log_probs = repetition_penalty(log_probs, _seen([list(history) + r for r in running], vocab, cfg),
                                       cfg.repetition_penalty)
        flat = (log_probs + running_scores[:, None]).reshape(-1)
        top = _top(flat, keep)
        top_scores = flat[top].astype(np.float32)
        parents, tokens = top // vocab, top % vocab
        candidates = [running[p] + [int(t)] for p, t in zip(parents.tolist(), tokens.tolist(), strict=True)]
        hits = np.array([(cfg.eos_token_id is not None and c[-1] == cfg.eos_token_id)
                         or produced + 1 >= cfg.max_new_tokens
                         or (stopped is not None and stopped(0, c)) for c in candidates])
        # e. the best unfinished candidates run on
        chosen = _top(top_scores + hits.astype(np.float32) * _NEG, nb)
        running = [candidates[i] for i in chosen]
        running_scores = (top_scores + hits.astype(np.float32) * _NEG)[chosen]
        # f. finished candidates among the top num_beams join the finished beams if they score higher
        just_finished = hits & (np.arange(keep) < nb)
        scored = top_scores / np.float32((produced + 1) ** length_penalty)
        scored = scored + np.float32(_NEG) * (0.0 if improvable else 1.0) + (~just_finished) * np.float32(_NEG)
        merged = np.concatenate([finished_scores, scored.astype(np.float32)])
        best = _top(merged, nb)
        pool = finished + candidates
        finished = [pool[i] for i in best]
        finished_scores = merged[best]
        is_finished = np.concatenate([is_finished, just_finished])[best]
        produced += 1
        # g. can a running beam still beat the worst finished one?
        best_running = running_scores[0] / np.float32(produced ** length_penalty)
        worst = np.where(is_finished, finished_scores.min(), _NEG)
        improvable = improvable and bool(np.any(best_running > worst))
        if not improvable or hits.all():
            break
        state = model.select(state, parents[chosen])
        cfg.check_deadline(produced)
        logits, state = model.advance(state, np.array([r[-1] for r in running], dtype=np.int64))
    return [list(s) for s in finished[:cfg.num_return_sequences]]


# --------------------------------------------------------------------------- entry points


def generate(model: StepModel, prompts: Sequence[Sequence[int]], cfg: DecodeConfig,
             histories: Optional[Sequence[Sequence[int]]] = None, stopped: Optional[StopFn] = None,
             ) -> List[List[List[int]]]:
    """Per prompt, its ``num_return_sequences`` lists of new tokens (each ends at its eos token, included).
    Prompts decode together when the model batches, else one at a time (rows equal either way)."""
    histories = [list(h) for h in (histories if histories is not None else prompts)]
    if cfg.max_new_tokens <= 0:
        return [[[] for _ in range(cfg.num_return_sequences)] for _ in prompts]

    def offset(fn: Optional[StopFn], base: int) -> Optional[StopFn]:
        return None if fn is None else (lambda row, toks: fn(base + row, toks))

    if cfg.num_beams > 1:
        return [beam_search(model, p, cfg, h, offset(stopped, i * cfg.num_return_sequences))
                for i, (p, h) in enumerate(zip(prompts, histories, strict=True))]
    if model.batches:
        return _sample_or_greedy(model, prompts, cfg, histories, stopped)
    return [_sample_or_greedy(model, [p], cfg, [h], offset(stopped, i * cfg.num_return_sequences))[0]
            for i, (p, h) in enumerate(zip(prompts, histories, strict=True))]


def stream(model: StepModel, prompt: Sequence[int], cfg: DecodeConfig, history: Optional[Sequence[int]] = None,
           stopped: Optional[StopFn] = None) -> Iterator[int]:
    """One prompt's new tokens as they are produced (greedy or sampled, one sequence)."""
    if cfg.num_beams > 1 or cfg.num_return_sequences > 1:
        raise BadInputError(
            f"predict_stream yields one sequence: received num_beams={cfg.num_beams}, num_return_sequences="
            f"{cfg.num_return_sequences}. Send num_beams=1 and num_return_sequences=1, or call predict."
        )
    for _, tokens in stream_rows(model, [prompt], cfg, [list(history if history is not None else prompt)],
                                 stopped):
        yield int(tokens[0])


class FullSequenceSteps:
    """A ``StepModel`` over any runner that returns ``logits`` for whole sequences (no past key values):
    every step re-runs the sequence, one prompt at a time (so the rows of a call have equal lengths)."""

    batches = False
    #: Rows per run: a step of many beams re-runs many whole sequences, so the deadline is checked between runs.
    ROWS_PER_RUN = 8

    def __init__(self, runner: Any, cfg: Optional[DecodeConfig] = None) -> None:
        self.runner = runner
        self.cfg = cfg
        self.produced = 0  # steps run (this object serves one decoding call)

    def _logits(self, ids: np.ndarray) -> np.ndarray:
        parts = []
        for start in range(0, len(ids), self.ROWS_PER_RUN):
            if self.cfg is not None and start:
                self.cfg.check_deadline(self.produced)
            part = ids[start:start + self.ROWS_PER_RUN]
            feeds = {"input_ids": part, "attention_mask": np.ones_like(part), "token_type_ids": np.zeros_like(part)}
            parts.append(np.asarray(self.runner.run({k: feeds[k] for k in self.runner.input_names})["logits"][:, -1]))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def start(self, prompts: Sequence[Sequence[int]]) -> Tuple[np.ndarray, Any]:
        ids = np.asarray([list(p) for p in prompts], dtype=np.int64)
        return self._logits(ids), ids

    def advance(self, state: Any, tokens: np.ndarray) -> Tuple[np.ndarray, Any]:
        self.produced += 1
        ids = np.concatenate([state, tokens.astype(np.int64)[:, None]], axis=1)
        return self._logits(ids), ids

    def select(self, state: Any, rows: np.ndarray) -> Any:
        return state[rows]
