"""Tokenize requests with the ``tokenizers`` library from the saved ``tokenizer.json``.

No transformers import: this is the serving path of every variant. Truncation
and padding run inside the tokenizers library (Rust); the arrays are built
once per batch.

Requests share no mutable state. MLflow's scoring server runs ``predict`` in
several threads at once, and a ``tokenizers.Tokenizer`` carries its truncation
(length, side) as configuration: changing it for one request changes it for
every request running beside it. So a tokenizer is never changed once built:
the encoder holds one configured tokenizer per truncation setting, each built
once (under a lock) and only read afterwards (see ``TextEncoder``).
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport._lazy import require
from mlflow_tfexport.errors import BadInputError

#: Beside ``tokenizer.json``: the special tokens transformers saved (the generation tasks read ``bos_token``).
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
#: Bytes of extra configured tokenizers one encoder keeps (truncation lengths other than the model's maximum:
#: text generation truncates prompts at ``max_length - max_new_tokens``). A tokenizer's size is measured as the
#: length of its JSON serialisation. The two tokenizers every model needs are kept outside this budget.
TOKENIZER_CACHE_BYTES = 32 * 1024 * 1024
#: (truncate at this many tokens, side "right" or "left")
Setting = Tuple[int, str]


@dataclass
class EncodedBatch:
    """Model inputs (int64, right-padded) plus what post-processing needs."""

    feeds: Dict[str, np.ndarray]
    encodings: List[Any]  # tokenizers.Encoding, one per row
    mask: np.ndarray  # attention mask, also when the model takes none

    @property
    def attention_mask(self) -> np.ndarray:
        return self.mask

    @cached_property
    def lengths(self) -> np.ndarray:
        """Real tokens per row (computed once, when a post-processor asks: most never do)."""
        out: np.ndarray = self.mask.sum(axis=1)
        return out


def _not_unicode(text: str) -> Optional[int]:
    """The index of the first character UTF-8 cannot encode (a lone surrogate), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return int(exc.start)
    return None


def _check_unicode(texts: Sequence[str], pairs: Optional[Sequence[str]]) -> None:
    for column, values in (("text", texts), ("paired text", pairs or ())):
        for row, text in enumerate(values):
            at = _not_unicode(text)
            if at is not None:
                raise BadInputError(
                    f"Row {row}: the {column} is not valid Unicode text: character {at} is {text[at]!r}, a lone "
                    "surrogate, which UTF-8 cannot encode. Send valid UTF-8 text (in JSON, an escape from "
                    "\\ud800 to \\udfff must be one half of a surrogate pair)."
                )


def _config_value(config_file: Optional[str], name: str) -> Any:
    """A field of ``tokenizer_config.json``, or None."""
    if not config_file or not os.path.isfile(config_file):
        return None
    try:
        with open(config_file, encoding="utf-8") as f:
            return json.load(f).get(name)
    except (OSError, ValueError, AttributeError):
        return None


def _special_token(config_file: Optional[str], name: str) -> Optional[str]:
    """A special token's text from ``tokenizer_config.json`` (a string, or ``{"content": ...}``), if any."""
    value = _config_value(config_file, name)
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


class TextEncoder:
    """Encodes text (or text pairs) into padded numpy inputs for a model; safe to share between threads.

    Why one configured tokenizer per truncation setting, and not "encode without truncation, cut in numpy":
    the tokenizer truncates *before* its post-processor adds the special tokens (``[CLS] ... [SEP]``, a BOS),
    and cuts a pair by the task's strategy (``only_second`` keeps the whole question); doing that in numpy
    would re-implement every tokenizer's post-processor and drift from what the model was trained with.
    Tokenizers are cheap to hold (their vocabulary, a few MB at most) and there are few settings: the
    model's maximum from the right (every task), no truncation (``{"truncation": false}``, kept unpadded so
    one over-long text costs no padding of the whole batch), and, for text generation, the room left for
    the prompt (``max_length - max_new_tokens``, from the left). The first two are built at load; the
    others on first use, under a lock, into a least-recently-used cache bounded in bytes
    (``TOKENIZER_CACHE_BYTES``; a tokenizer larger than the budget is built for its request and dropped).
    No tokenizer is changed after it is built.
    """

    def __init__(
        self,
        tokenizer_file: str,
        *,
        input_names: Sequence[str],
        max_length: int,
        pad_token_id: int,
        pair_strategy: str = "longest_first",
        config_file: Optional[str] = None,
        cache_bytes: int = TOKENIZER_CACHE_BYTES,
    ) -> None:
        tokenizers = require("tokenizers")
        self._tokenizers = tokenizers
        base = tokenizers.Tokenizer.from_file(tokenizer_file)
        base.no_truncation()
        base.no_padding()
        self.input_names = tuple(input_names)
        self.max_length = int(max_length)
        self.pad_token_id = int(pad_token_id)
        self.pad_token = base.id_to_token(self.pad_token_id) or ""
        self.pair_strategy = pair_strategy
        unk = getattr(base.model, "unk_token", None)
        self.unk_token_id: Optional[int] = None if unk is None else base.token_to_id(unk)
        bos = _special_token(config_file, "bos_token")
        self.bos_token_id: Optional[int] = None if bos is None else base.token_to_id(bos)
        self._untruncated = base  # no truncation, no padding: measured before anything is padded
        #: Token ids this tokenizer knows (added tokens included): flavor-block ids are checked against it.
        self.vocab_size = int(base.get_vocab_size(with_added_tokens=True))
        max_len = _config_value(config_file, "model_max_length")
        #: The tokenizer's own longest input (``model_max_length``), when it states a real one.
        self.model_max_length: Optional[int] = max_len if isinstance(max_len, int) and 0 < max_len < 1_000_000 \
            else None
        self.tokenizer_bytes = len(base.to_str())
        self.cache_bytes = int(cache_bytes)
        self._default = self._build((self.max_length, "right"))
        self._lock = threading.Lock()
        self._cache: OrderedDict[Setting, Any] = OrderedDict()

    @property
    def tokenizer(self) -> Any:
        """The tokenizer of the default setting (the model's maximum, from the right). Read it, never change
        it: every request uses it."""
        return self._default

    def _build(self, setting: Setting) -> Any:
        tokenizer = self._tokenizers.Tokenizer.from_str(self._untruncated.to_str())  # reading it is thread-safe
        tokenizer.enable_padding(direction="right", pad_id=self.pad_token_id, pad_token=self.pad_token)
        limit, side = setting
        tokenizer.enable_truncation(limit, strategy=self.pair_strategy, direction=side)
        return tokenizer

    def tokenizer_for(self, setting: Setting) -> Any:
        """The tokenizer truncating at ``setting`` (built once, then shared read-only)."""
        if setting == (self.max_length, "right"):
            return self._default
        with self._lock:
            tokenizer = self._cache.get(setting)
            if tokenizer is not None:
                self._cache.move_to_end(setting)
                return tokenizer
            tokenizer = self._build(setting)
            self._cache[setting] = tokenizer
            while self._cache and len(self._cache) * self.tokenizer_bytes > self.cache_bytes:
                self._cache.popitem(last=False)
            return tokenizer

    @property
    def cached_settings(self) -> List[Setting]:
        """The extra settings held now, least recently used first."""
        with self._lock:
            return list(self._cache)

    def encode(
        self,
        texts: Sequence[str],
        pairs: Optional[Sequence[str]] = None,
        *,
        truncation: bool = True,
        max_length: Optional[int] = None,
        truncation_side: str = "right",
        allow_empty: bool = False,
    ) -> EncodedBatch:
        """Encode a batch, right-padded to its longest row.

        Text longer than the model's maximum (or ``max_length``, if smaller) is
        truncated (keeping its start, or its end with ``truncation_side="left"``),
        or rejected with ``BadInputError`` when ``truncation`` is False. A row
        without any token (empty text, for a tokenizer that adds no special
        tokens) is rejected unless ``allow_empty``.
        """
        limit = self.max_length if not max_length else min(int(max_length), self.max_length)
        # Without truncation the whole text is encoded and measured: whether a tokenizer reports what it cut
        # (``Encoding.overflowing``) differs between tokenizers releases and truncation sides.
        tokenizer = self.tokenizer_for((limit, truncation_side)) if truncation else self._untruncated
        inputs: List[Any] = list(texts) if pairs is None else list(zip(texts, pairs, strict=True))
        try:
            encodings = tokenizer.encode_batch(inputs)
        except Exception as exc:  # tokenizers raises a bare Exception, e.g. when a question fills the window
            _check_unicode(texts, pairs)
            raise BadInputError(
                f"Could not fit the input(s) into the model's maximum of {limit} tokens: {exc}. "
                + (
                    "The first text of a pair (e.g. the question) must leave room for the second; shorten it."
                    if pairs is not None
                    else "Shorten the input(s)."
                )
            ) from exc
        if not encodings:
            empty = np.zeros((0, 0), dtype=np.int64)
            return EncodedBatch({k: empty for k in self.input_names}, [], empty)
        if not truncation:
            sizes = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(encodings))
            too_long = np.flatnonzero(sizes > limit).tolist()
            if too_long:
                raise BadInputError(
                    f"{len(too_long)} input(s) (rows {too_long[:10]}) are longer than the "
                    f"model's maximum of {limit} tokens (the longest has {int(sizes.max())}). Shorten them, or "
                    'send params {"truncation": true} to truncate them.'
                )
            longest = int(sizes.max())
            for encoding in encodings:  # these Encodings belong to this request alone
                encoding.pad(longest, direction="right", pad_id=self.pad_token_id, pad_token=self.pad_token)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        if not allow_empty and (mask.shape[1] == 0 or not mask[:, 0].all()):
            empty_rows = np.flatnonzero(mask[:, 0] == 0).tolist() if mask.shape[1] else list(range(len(mask)))
            raise BadInputError(
                f"{len(empty_rows)} input(s) (rows {empty_rows[:10]}) have no tokens: the text is empty (or only "
                "characters the tokenizer drops). Send at least one word per row."
            )
        feeds = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64), "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        return EncodedBatch(feeds={k: feeds[k] for k in self.input_names}, encodings=encodings, mask=mask)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self._untruncated.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens))

    def id_to_token(self, token_id: int) -> str:
        return str(self._untruncated.id_to_token(int(token_id)))


def split_rows(n: int, batch_size: int) -> List[Tuple[int, int]]:
    """Chunk ``range(n)`` into ``(start, stop)`` slices of at most ``batch_size`` (>= 1)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, received {batch_size}")
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
