"""Serving of the generation tasks: encode the prompts, decode new tokens, return text (or stream it).

Used by the pyfunc of every variant (the task table names the functions). The
runner decodes: ``runner.decode(prompts, config, stopped)`` is transformers'
``generate`` for the source and the numpy loop of ``serving/decoding.py`` for
ONNX; a runner without one (a logits-only graph, a TorchScript trace) is
decoded by the same loop re-running the whole sequence each step.
``text-generation`` returns each prompt followed by its continuation,
``text2text-generation`` the generated text only (special tokens removed), as
``mlflow.transformers`` returns for these tasks; with ``num_return_sequences``
> 1, each input's answer is the list of its sequences.

The request's params (checked against the task table's ranges) become one
``DecodeConfig``: sampling (``do_sample``, ``temperature``, ``top_k``,
``top_p``, ``seed``), beam search (``num_beams``, ``num_return_sequences``),
``repetition_penalty`` and ``stop``: a row's output ends before the first
occurrence of any stop string in the generated text (decoding of that row
stops there). Each request's lengths (``max_new_tokens``, the room left for the
prompt) are arguments of that request's calls, never settings of a shared
object. What depends on the model (``max_new_tokens`` below its positions) is
checked here, before any prompt runs. Prompts decode in chunks of
``batch_size`` (default ``GENERATION_BATCH_SIZE``; at most ``MAX_DECODE_ROWS``
rows of prompts x beams x sequences), the deadline checked between chunks and
between decoding steps.

An empty prompt for ``text-generation`` generates from the tokenizer's
beginning-of-sequence token, as the transformers text-generation pipeline
(and so ``mlflow.transformers``) does: the answer is the generated text
alone. A model whose tokenizer has no such token answers 400 for an empty
prompt. ``text2text-generation`` needs some input text (an encoder has
nothing to read otherwise): an empty one is a 400.

No torch or transformers import; Python 3.10-compatible.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.errors import BadInputError
from mlflow_tfexport.serving import decoding
from mlflow_tfexport.serving.deadline import Deadline, check_deadline
from mlflow_tfexport.serving.limits import Limits
from mlflow_tfexport.serving.stops import StopStrings
from mlflow_tfexport.serving.tokenization import TextEncoder, split_rows

#: Prompts decoded together when a request names no ``batch_size``.
GENERATION_BATCH_SIZE = 16
#: The most rows (prompts x beams x return sequences) one decoding call runs: a step of it stays short (the
#: deadline is checked between steps) and its caches small, whatever ``batch_size`` a request names.
MAX_DECODE_ROWS = 512


def _max_new_tokens(params: Mapping[str, Any], encoder: TextEncoder, needs_prompt_room: bool) -> int:
    max_new = int(params["max_new_tokens"])
    limit = encoder.max_length - 1
    if not 0 <= max_new <= limit:
        room = "its positions, leaving at least one for the prompt" if needs_prompt_room else \
            "the decoder's positions after its start token"
        raise BadInputError(
            f"params max_new_tokens={max_new} is out of range for this model: expected an integer from 0 to {limit} "
            f"(the model has {encoder.max_length} positions: {room}). Send e.g. "
            f'{{"params": {{"max_new_tokens": {min(20, limit)}}}}}.'
        )
    return max_new


def _no_loop(conf: Mapping[str, Any]) -> BadInputError:
    return BadInputError(
        f"This {conf.get(FlavorKey.FORMAT)} variant cannot generate text (no decoding loop for its format); "
        "serve the source or the ONNX variant of this model."
    )


class _FullSequence:
    """``decode``/``decode_stream`` for a logits runner (see ``decoding.FullSequenceSteps``)."""

    def __init__(self, runner: Any) -> None:
        self.runner = runner

    def decode(self, prompts: Sequence[Sequence[int]], cfg: decoding.DecodeConfig,
               stopped: Optional[decoding.StopFn] = None) -> List[List[List[int]]]:
        return decoding.generate(decoding.FullSequenceSteps(self.runner, cfg), prompts, cfg, None, stopped)

    def decode_stream(self, prompt: Sequence[int], cfg: decoding.DecodeConfig,
                      stopped: Optional[decoding.StopFn] = None) -> Iterator[int]:
        return decoding.stream(decoding.FullSequenceSteps(self.runner, cfg), prompt, cfg, None, stopped)


def _decoder(runner: Any, conf: Mapping[str, Any], causal: bool) -> Any:
    if hasattr(runner, "decode"):
        return runner
    if causal and hasattr(runner, "run"):
        return _FullSequence(runner)
    raise _no_loop(conf)


class _Task:
    """What differs between the causal and the encoder-decoder task: the prompt and the answer text. Checks the
    request's work and stop strings against ``limits`` before anything runs."""

    def __init__(self, encoder: TextEncoder, conf: Mapping[str, Any], params: Mapping[str, Any], causal: bool,
                 prompts: int, limits: Optional[Limits] = None, deadline: Optional[Deadline] = None):
        self.encoder, self.causal = encoder, causal
        self.max_new = _max_new_tokens(params, encoder, needs_prompt_room=causal)
        config = decoding.DecodeConfig.from_params(params, conf.get(FlavorKey.EOS_TOKEN_ID))
        self.config = replace(config, deadline=deadline)
        self.truncation = bool(params["truncation"])
        self.stop_list = [s for s in params.get("stop") or [] if s]
        (limits or Limits()).check_generation(prompts, config.num_beams, config.num_return_sequences,
                                              config.max_new_tokens, self.stop_list)
        self.stops = StopStrings(self.stop_list)
        self._prompt_chars: Dict[Tuple[int, ...], int] = {}

    def prompts(self, texts: Sequence[str]) -> List[List[int]]:
        if not self.causal:
            batch = self.encoder.encode(list(texts), truncation=self.truncation)
        else:
            # Prompt and new tokens must fit in the model's positions: a long prompt keeps its end.
            batch = self.encoder.encode(list(texts), truncation=self.truncation,
                                        max_length=self.encoder.max_length - self.max_new,
                                        truncation_side="left", allow_empty=True)
        ids, mask = batch.feeds["input_ids"], batch.mask
        prompts = [ids[i, :int(mask[i].sum())].tolist() for i in range(len(texts))]
        for i, prompt in enumerate(prompts):
            if not prompt and self.causal:
                if self.encoder.bos_token_id is None:
                    raise BadInputError(
                        f"Row {i}: the prompt is empty and this model's tokenizer has no beginning-of-sequence "
                        "token to generate from. Send at least one word of prompt."
                    )
                prompt.append(self.encoder.bos_token_id)
        return prompts

    def continuation(self, prompt: Sequence[int], new: Sequence[int]) -> str:
        """The generated text of ``new`` after ``prompt`` (a causal prompt's text is not repeated)."""
        if not self.causal:
            return self.encoder.decode(new)
        key = tuple(prompt)
        chars = self._prompt_chars.get(key)
        if chars is None:  # one decode of each prompt per request, not one per step
            chars = self._prompt_chars[key] = len(self.encoder.decode(prompt))
        return self.encoder.decode(list(prompt) + list(new))[chars:]

    def answer(self, text: str, prompt: Sequence[int], new: Sequence[int]) -> str:
        body = self.stops.cut(self.continuation(prompt, new))[0]
        return text + body if self.causal else body

    def stopper(self, prompts: Sequence[Sequence[int]]) -> Optional[decoding.StopFn]:
        if not self.stop_list:
            return None
        n = self.config.num_return_sequences
        stops = StopStrings(self.stop_list)  # its own rows' texts: one per chunk of prompts

        def stopped(row: int, new: Sequence[int]) -> bool:
            return stops.stopped(row, new, self.continuation(prompts[row // n], new))

        return stopped


def _generate(runner: Any, encoder: TextEncoder, conf: Mapping[str, Any], texts: List[str],
              params: Mapping[str, Any], deadline: Optional[Deadline], causal: bool,
              limits: Optional[Limits]) -> List[Any]:
    task = _Task(encoder, conf, params, causal, len(texts), limits, deadline)
    prompts = task.prompts(texts) if texts else []
    if task.config.max_new_tokens == 0 or not texts:
        new: List[List[List[int]]] = [[[] for _ in range(task.config.num_return_sequences)] for _ in texts]
    else:
        decoder = _decoder(runner, conf, causal)
        new = []
        rows = task.config.num_beams * task.config.num_return_sequences  # decoded rows per prompt
        size = min(int(params.get("batch_size") or 0) or GENERATION_BATCH_SIZE, max(1, MAX_DECODE_ROWS // rows))
        for start, stop in split_rows(len(texts), size):
            check_deadline(deadline, start, len(texts), "prompts")
            chunk = prompts[start:stop]
            new.extend(decoder.decode(chunk, task.config, task.stopper(chunk)))
    answers = [[task.answer(text, prompt, seq) for seq in seqs] for text, prompt, seqs in zip(texts, prompts, new,
                                                                                             strict=True)]
    return [a[0] for a in answers] if task.config.num_return_sequences == 1 else answers


def causal(runner: Any, encoder: TextEncoder, conf: Mapping[str, Any], texts: List[str],
           params: Mapping[str, Any], deadline: Optional[Deadline] = None, limits: Optional[Limits] = None,
           ) -> List[Any]:
    return _generate(runner, encoder, conf, texts, params, deadline, causal=True, limits=limits)


def text2text(runner: Any, encoder: TextEncoder, conf: Mapping[str, Any], texts: List[str],
              params: Mapping[str, Any], deadline: Optional[Deadline] = None, limits: Optional[Limits] = None,
              ) -> List[Any]:
    return _generate(runner, encoder, conf, texts, params, deadline, causal=False, limits=limits)


def _stream(runner: Any, encoder: TextEncoder, conf: Mapping[str, Any], text: str, params: Mapping[str, Any],
            causal: bool, limits: Optional[Limits]) -> Iterator[str]:
    """Text chunks as tokens come: their concatenation is ``predict``'s answer for ``text``."""
    task = _Task(encoder, conf, params, causal, 1, limits)
    cfg = task.config
    if cfg.num_beams > 1 or cfg.num_return_sequences > 1:
        raise BadInputError(
            f"predict_stream yields one sequence: received num_beams={cfg.num_beams}, num_return_sequences="
            f"{cfg.num_return_sequences}. Send num_beams=1 and num_return_sequences=1, or call predict."
        )
    prompt = task.prompts([text])[0]
    decoder = _decoder(runner, conf, causal) if cfg.max_new_tokens else None
    return _chunks(task, decoder, text, prompt)


def _chunks(task: _Task, decoder: Any, text: str, prompt: List[int]) -> Iterator[str]:
    if task.causal and text:
        yield text
    if decoder is None:
        return
    tokens = decoder.decode_stream(prompt, task.config, task.stopper([prompt]))
    new: List[int] = []
    sent = 0
    checked: Optional[int] = None  # the text's length at the previous token
    try:
        for token in tokens:
            new.append(token)
            text = task.continuation(prompt, new)
            body, found = task.stops.cut(text, task.stops.search_from(checked))
            checked = len(text)
            ready = len(body) if found else len(body) - task.stops.held_back(body)
            if ready > sent:
                yield body[sent:ready]
                sent = ready
            if found:
                return
        body = task.stops.cut(task.continuation(prompt, new))[0]
        if len(body) > sent:
            yield body[sent:]
    finally:
        close: Optional[Callable[[], Any]] = getattr(tokens, "close", None)
        if close is not None:
            close()


def causal_stream(runner: Any, encoder: TextEncoder, conf: Mapping[str, Any], text: str,
                  params: Mapping[str, Any], limits: Optional[Limits] = None) -> Iterator[str]:
    return _stream(runner, encoder, conf, text, params, causal=True, limits=limits)


def text2text_stream(runner: Any, encoder: TextEncoder, conf: Mapping[str, Any], text: str,
                     params: Mapping[str, Any], limits: Optional[Limits] = None) -> Iterator[str]:
    return _stream(runner, encoder, conf, text, params, causal=False, limits=limits)
