"""Serving of ``text2text-generation``: encode each text, decode new tokens, return the generated text.

Used by the pyfunc of every variant: the runner's ``generate`` is the eager
model's ``generate`` for the source, the numpy decoding loop on the encoder and
decoder graphs for ONNX. The response is a list of strings, one per input, the
generated text only (special tokens removed), as ``mlflow.transformers`` returns
for this task. No torch or transformers import; Python 3.10-compatible.
"""

from __future__ import annotations

from typing import Any, List, Mapping

from mlflow_tfexport.constants import FlavorKey
from mlflow_tfexport.errors import BadInputError
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
