"""Serving of the generation tasks: encode each prompt, decode new tokens, return text.

Used by the pyfunc of every variant (the task table names the function): the
runner's ``generate`` is the eager model's ``generate`` for the source, the
numpy decoding loop with past key values for ONNX; a runner without one (a
logits-only graph) decodes greedily by re-running the sequence.
``text-generation`` returns each prompt followed by its continuation,
``text2text-generation`` the generated text only (special tokens removed), as
``mlflow.transformers`` returns for these tasks. No torch or transformers
import; Python 3.10-compatible.
"""

from __future__ import annotations

from typing import Any, List, Mapping

from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.errors import BadInputError
from mlflow_tfexport.serving.runtimes.base import greedy_generate
from mlflow_tfexport.serving.tokenization import TextEncoder


def text2text(runner: Any, encoder: TextEncoder, conf: Mapping[str, Any], texts: List[str],
              params: Mapping[str, Any]) -> List[str]:
    max_new = int(params["max_new_tokens"])
    beams = int(params.get("num_beams") or 1)
    limit = encoder.max_length
    if not 0 <= max_new < limit:
        raise BadInputError(
            f"params max_new_tokens must be between 0 and {limit - 1} (the decoder's positions after its start "
            f"token), received {max_new}."
        )
    if beams < 1:
        raise BadInputError(f"params num_beams must be >= 1, received {beams}.")
    generate = getattr(runner, "generate", None)
    if generate is None:
        raise BadInputError(
            f"This {conf.get(FlavorKey.FORMAT)} variant cannot generate text (no decoding loop for its format); "
            "serve the source or the ONNX variant of this model."
        )
    eos = conf.get(FlavorKey.EOS_TOKEN_ID)
    results = []
    for text in texts:
        batch = encoder.encode([text], truncation=bool(params["truncation"]))
        prompt = batch.feeds["input_ids"][0].tolist()
        new = [] if max_new == 0 else generate(prompt, max_new_tokens=max_new, eos_token_id=eos, num_beams=beams)
        results.append(encoder.decode(new))
    return results


def causal(runner: Any, encoder: TextEncoder, conf: Mapping[str, Any], texts: List[str],
           params: Mapping[str, Any]) -> List[str]:
    eos = conf.get(FlavorKey.EOS_TOKEN_ID)
    max_new = int(params["max_new_tokens"])
    if max_new < 0:
        raise BadInputError(f"params max_new_tokens must be >= 0, received {max_new}.")
    room = encoder.max_length - max_new
    if texts and room < 1:
        raise BadInputError(
            f"params max_new_tokens={max_new} leaves no room for the prompt within the model's "
            f"maximum of {encoder.max_length} tokens; ask for at most {encoder.max_length - 1}."
        )
    native = getattr(runner, "generate", None)
    results = []
    for text in texts:
        # Prompt and new tokens must fit in the model's positions: a long prompt keeps its end.
        batch = encoder.encode([text], truncation=bool(params["truncation"]), max_length=room,
                               truncation_side="left")
        prompt = batch.feeds["input_ids"][0].tolist()
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
