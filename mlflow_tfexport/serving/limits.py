"""How much work one request may ask for: the limits, their ``model_config`` keys and defaults, checked.

Every limit is a ``model_config`` key written into the MLmodel's
``python_function`` block (so ``mlflow models serve`` reads it, and
``MLFLOW_PYFUNC_INFERENCE_CONFIG`` or ``mlflow.pyfunc.load_model(...,
model_config=...)`` override it); a model saved before a key existed gets its
default. A request over a limit is refused with a 400 naming the limit, the
value received and the way out, before any work: image sizes are read from the
image headers before any pixel is decoded, a generation request's work
(prompts x beams x return sequences x new tokens) and stop strings before any
prompt runs. ``docs/serving-limits.md`` lists them all.
Serving path: no torch, no transformers, Python 3.10.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Sequence

from mlflow_tfexport.errors import BadInputError, TfexportError

#: Decoded pixels (width x height) of one image: 40 Mpx (a 7,300 x 5,500 photo; 120 MB as RGB).
MAX_IMAGE_PIXELS = "max_image_pixels"
#: Decoded pixels of all the images of one request together: 120 Mpx (360 MB as RGB).
MAX_REQUEST_PIXELS = "max_request_pixels"
#: prompts x num_beams x num_return_sequences x max_new_tokens of one generation request.
MAX_GENERATION_TOKENS = "max_generation_tokens"
#: Stop strings of one request: how many, the longest (characters) and all together (UTF-8 bytes).
MAX_STOP_STRINGS = "max_stop_strings"
MAX_STOP_STRING_CHARS = "max_stop_string_chars"
MAX_STOP_BYTES = "max_stop_bytes"

IMAGE_LIMITS: Mapping[str, int] = {MAX_IMAGE_PIXELS: 40_000_000, MAX_REQUEST_PIXELS: 120_000_000}
GENERATION_LIMITS: Mapping[str, int] = {MAX_GENERATION_TOKENS: 262_144, MAX_STOP_STRINGS: 16,
                                        MAX_STOP_STRING_CHARS: 256, MAX_STOP_BYTES: 4096}
#: The largest value any limit may be set to.
MAX_LIMIT = 1 << 40


def default_limits(*, images: bool, generation: bool) -> Dict[str, int]:
    """The limit keys (with their defaults) of a task that takes ``images`` or does ``generation``, for the
    MLmodel's model_config."""
    return {**(IMAGE_LIMITS if images else {}), **(GENERATION_LIMITS if generation else {})}


def _setting(config: Mapping[str, Any], key: str, default: int) -> int:
    value = config.get(key)
    if value is None:
        return default
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= int(value) <= MAX_LIMIT:
        raise TfexportError(
            f"model_config {key}={value!r} is out of range: expected an integer from 1 to {MAX_LIMIT} "
            f"(default {default}). Fix the python_function model_config in the MLmodel, set "
            f"MLFLOW_PYFUNC_INFERENCE_CONFIG='{{\"{key}\": {default}}}', or pass model_config={{{key!r}: {default}}} "
            "to mlflow.pyfunc.load_model."
        )
    return int(value)


def _over(key: str, value: int, limit: int, what: str, fix: str) -> BadInputError:
    return BadInputError(
        f"{what} is {value:,}, over this model's limit {key}={limit:,}. {fix} (The limit is the {key} key of "
        "the model's python_function model_config: raise it there, or with MLFLOW_PYFUNC_INFERENCE_CONFIG, if "
        "the server can afford more.)"
    )


@dataclass(frozen=True)
class Limits:
    """The limits of one loaded model (``from_config``), and the checks of a request against them."""

    max_image_pixels: int = IMAGE_LIMITS[MAX_IMAGE_PIXELS]
    max_request_pixels: int = IMAGE_LIMITS[MAX_REQUEST_PIXELS]
    max_generation_tokens: int = GENERATION_LIMITS[MAX_GENERATION_TOKENS]
    max_stop_strings: int = GENERATION_LIMITS[MAX_STOP_STRINGS]
    max_stop_string_chars: int = GENERATION_LIMITS[MAX_STOP_STRING_CHARS]
    max_stop_bytes: int = GENERATION_LIMITS[MAX_STOP_BYTES]

    @classmethod
    def from_config(cls, model_config: Mapping[str, Any]) -> Limits:
        """The limits of ``model_config`` (each checked; absent keys take their defaults)."""
        defaults = {**IMAGE_LIMITS, **GENERATION_LIMITS}
        return cls(**{key: _setting(model_config, key, default) for key, default in defaults.items()})

    def check_image(self, index: int, width: int, height: int, request_pixels: int) -> None:
        """Image ``index`` of ``width`` x ``height``, with ``request_pixels`` decoded before it in the request."""
        pixels = int(width) * int(height)
        if pixels > self.max_image_pixels:
            raise _over(MAX_IMAGE_PIXELS, pixels, self.max_image_pixels,
                        f"Image {index} is {width} x {height}: its decoded pixels (width x height)",
                        "Send a smaller image (resize it before sending; the model sees it resized anyway).")
        if request_pixels + pixels > self.max_request_pixels:
            raise _over(MAX_REQUEST_PIXELS, request_pixels + pixels, self.max_request_pixels,
                        f"With image {index} ({width} x {height}), the decoded pixels of this request's images",
                        "Send fewer or smaller images per request.")

    def check_generation(self, prompts: int, num_beams: int, num_return_sequences: int, max_new_tokens: int,
                         stops: Sequence[str]) -> None:
        """A generation request's work and stop strings, before any of it is done."""
        work = prompts * num_beams * num_return_sequences * max_new_tokens
        if work > self.max_generation_tokens:
            raise _over(MAX_GENERATION_TOKENS, work, self.max_generation_tokens,
                        f"The work of this request, prompts x num_beams x num_return_sequences x max_new_tokens = "
                        f"{prompts} x {num_beams} x {num_return_sequences} x {max_new_tokens},",
                        "Send fewer prompts per request, or ask for fewer beams, sequences or new tokens.")
        if len(stops) > self.max_stop_strings:
            raise _over(MAX_STOP_STRINGS, len(stops), self.max_stop_strings, "The number of stop strings (params stop)",
                        "Send fewer stop strings.")
        longest = max((len(s) for s in stops), default=0)
        if longest > self.max_stop_string_chars:
            raise _over(MAX_STOP_STRING_CHARS, longest, self.max_stop_string_chars,
                        "The longest stop string (params stop), in characters,", "Send shorter stop strings.")
        total = sum(len(s.encode("utf-8", "surrogatepass")) for s in stops)
        if total > self.max_stop_bytes:
            raise _over(MAX_STOP_BYTES, total, self.max_stop_bytes,
                        "The stop strings together (params stop), in UTF-8 bytes,",
                        "Send fewer or shorter stop strings.")
