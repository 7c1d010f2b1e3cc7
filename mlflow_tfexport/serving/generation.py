"""Serving of the generation tasks: encode each prompt, decode new tokens, return text.

Used by the pyfunc of every variant (the task table names the function): the
runner's ``generate`` is the eager model's ``generate`` for the source, the
numpy decoding loop with past key values for ONNX; a runner without one (a
logits-only graph) decodes greedily by re-running the sequence.
``text-generation`` returns each prompt followed by its continuation,
``text2text-generation`` the generated text only (special tokens removed), as
``mlflow.transformers`` returns for these tasks.

Each request's lengths (``max_new_tokens``, the room left for the prompt) are
arguments of that request's calls, never settings of a shared object: the
encoder picks a tokenizer configured for that truncation (see
``tokenization.TextEncoder``). ``params`` arrive checked against the task
table's ranges; what depends on the model (``max_new_tokens`` below its
positions) is checked here, before any prompt runs.

An empty prompt for ``text-generation`` generates from the tokenizer's
beginning-of-sequence token, as the transformers text-generation pipeline
(and so ``mlflow.transformers``) does: the answer is the generated text
alone. A model whose tokenizer has no such token answers 400 for an empty
prompt. ``text2text-generation`` needs some input text (an encoder has
nothing to read otherwise): an empty one is a 400.

No torch or transformers import; Python 3.10-compatible.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional

from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.errors import BadInputError
from mlflow_tfexport.serving.deadline import Deadline, check_deadline
from mlflow_tfexport.serving.runtimes.base import greedy_generate
from mlflow_tfexport.serving.tokenization import TextEncoder


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


def text2text(runner: Any, encoder: TextEncoder, conf: Mapping[str, Any], texts: List[str],
              params: Mapping[str, Any], deadline: Optional[Deadline] = None) -> List[str]:
    max_new = _max_new_tokens(params, encoder, needs_prompt_room=False)
    beams = int(params.get("num_beams") or 1)
    generate = getattr(runner, "generate", None)
    if generate is None:
        raise _no_loop(conf)
    eos = conf.get(FlavorKey.EOS_TOKEN_ID)
    results = []
    for i, text in enumerate(texts):
        check_deadline(deadline, i, len(texts), "prompts")
        batch = encoder.encode([text], truncation=bool(params["truncation"]))
        prompt = batch.feeds["input_ids"][0].tolist()
        new = [] if max_new == 0 else generate(prompt, max_new_tokens=max_new, eos_token_id=eos, num_beams=beams)
        results.append(encoder.decode(new))
    return results


def causal(runner: Any, encoder: TextEncoder, conf: Mapping[str, Any], texts: List[str],
           params: Mapping[str, Any], deadline: Optional[Deadline] = None) -> List[str]:
    eos = conf.get(FlavorKey.EOS_TOKEN_ID)
    max_new = _max_new_tokens(params, encoder, needs_prompt_room=True)
    room = encoder.max_length - max_new
    native = getattr(runner, "generate", None)
    results = []
    for i, text in enumerate(texts):
        check_deadline(deadline, i, len(texts), "prompts")
        # Prompt and new tokens must fit in the model's positions: a long prompt keeps its end.
        batch = encoder.encode([text], truncation=bool(params["truncation"]), max_length=room,
                               truncation_side="left", allow_empty=True)
        prompt = batch.feeds["input_ids"][0].tolist()
        if not prompt:
            if encoder.bos_token_id is None:
                raise BadInputError(
                    f"Row {i}: the prompt is empty and this model's tokenizer has no beginning-of-sequence token "
                    "to generate from. Send at least one word of prompt."
                )
            prompt = [encoder.bos_token_id]
        if max_new == 0:
            new: List[int] = []
        elif native is not None:
            new = native(prompt, max_new_tokens=max_new, eos_token_id=eos)
        else:
            new = greedy_generate(runner, prompt, max_new_tokens=max_new, eos_token_id=eos)
        full = encoder.decode(prompt + list(new))
        prompt_len = len(encoder.decode(prompt))
        results.append(text + full[prompt_len:])
    return results
