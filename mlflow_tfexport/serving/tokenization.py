"""Tokenize requests with the ``tokenizers`` library from the saved ``tokenizer.json``.

No transformers import: this is the serving path of every variant. Truncation
and padding run inside the tokenizers library (Rust); the arrays are built
once per batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from mlflow_tfexport._lazy import require
from mlflow_tfexport.errors import BadInputError


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


class TextEncoder:
    """Encodes text (or text pairs) into padded numpy inputs for a model."""

    def __init__(
        self,
        tokenizer_file: str,
        *,
        input_names: Sequence[str],
        max_length: int,
        pad_token_id: int,
        pair_strategy: str = "longest_first",
    ) -> None:
        tokenizers = require("tokenizers")
        self._tokenizer = tokenizers.Tokenizer.from_file(tokenizer_file)
        self.input_names = tuple(input_names)
        self.max_length = int(max_length)
        self.pad_token_id = int(pad_token_id)
        self.pair_strategy = pair_strategy
        pad_token = self._tokenizer.id_to_token(self.pad_token_id) or ""
        self._tokenizer.enable_padding(direction="right", pad_id=self.pad_token_id, pad_token=pad_token)
        unk = getattr(self._tokenizer.model, "unk_token", None)
        self.unk_token_id: Optional[int] = None if unk is None else self._tokenizer.token_to_id(unk)
        self._limit: Optional[Tuple[int, str]] = None  # the truncation set on the tokenizer (None: off)
        self._set_limit(self.max_length)

    @property
    def tokenizer(self) -> Any:
        return self._tokenizer

    def _set_limit(self, limit: Optional[int], direction: str = "right") -> None:
        """Truncate at ``limit`` tokens from ``direction``; ``limit=None`` turns truncation off."""
        wanted = None if limit is None else (limit, direction)
        if wanted == self._limit:
            return
        if limit is None:
            self._tokenizer.no_truncation()
        else:
            self._tokenizer.enable_truncation(limit, strategy=self.pair_strategy, direction=direction)
        self._limit = wanted

    def encode(
        self,
        texts: Sequence[str],
        pairs: Optional[Sequence[str]] = None,
        *,
        truncation: bool = True,
        max_length: Optional[int] = None,
        truncation_side: str = "right",
    ) -> EncodedBatch:
        """Encode a batch, right-padded to its longest row.

        Text longer than the model's maximum (or ``max_length``, if smaller) is
        truncated (keeping its start, or its end with ``truncation_side="left"``),
        or rejected with ``BadInputError`` when ``truncation`` is False.
        """
        limit = self.max_length if not max_length else min(int(max_length), self.max_length)
        # Without truncation the whole text is encoded and measured: whether a tokenizer reports what it cut
        # (``Encoding.overflowing``) differs between tokenizers releases and truncation sides.
        self._set_limit(limit if truncation else None, truncation_side)
        inputs: List[Any] = list(texts) if pairs is None else list(zip(texts, pairs, strict=True))
        try:
            encodings = self._tokenizer.encode_batch(inputs)
        except Exception as exc:  # tokenizers raises a bare Exception, e.g. when a question fills the window
            raise BadInputError(
                f"Could not fit the input(s) into the model's maximum of {limit} tokens: {exc}. "
                + (
                    "The first text of a pair (e.g. the question) must leave room for the second; shorten it."
                    if pairs is not None
                    else "Shorten the input(s)."
                )
            ) from exc
        if not truncation:
            too_long = [i for i, e in enumerate(encodings) if sum(e.attention_mask) > limit]
            if too_long:
                raise BadInputError(
                    f"{len(too_long)} input(s) (rows {too_long[:10]}) are longer than the "
                    f"model's maximum of {limit} tokens. Shorten them, or send "
                    'params {"truncation": true} to truncate them.'
                )
        if not encodings:
            empty = np.zeros((0, 0), dtype=np.int64)
            return EncodedBatch({k: empty for k in self.input_names}, [], empty)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64), "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        return EncodedBatch(feeds={k: feeds[k] for k in self.input_names}, encodings=encodings, mask=mask)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens))

    def id_to_token(self, token_id: int) -> str:
        return str(self._tokenizer.id_to_token(int(token_id)))


def split_rows(n: int, batch_size: int) -> List[Tuple[int, int]]:
    """Chunk ``range(n)`` into ``(start, stop)`` slices of at most ``batch_size``."""
    if batch_size <= 0:
        return [(0, n)] if n else []
    return [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
