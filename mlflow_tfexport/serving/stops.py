"""Stop strings: where the first one occurs in a generated text, at a cost that does not grow with the text.

A decoding step adds one token to each row; a stop string found at this step
must end in the text that token added (the row was checked at every earlier
step). So ``StopStrings.stopped`` remembers, per row and token prefix, how long
the text was at the previous step, and searches only the tail that starts
``longest - 1 + SLACK`` characters before that length: each step scans the
stop strings over a window of their own length plus the new token's text, not
over the whole text (``scanned`` counts the characters searched, for tests).
``SLACK`` covers decoders that rewrite the end of the text when a token
follows (an incomplete UTF-8 character shown as U+FFFD, WordPiece's clean-up of
" ." to "."). Rows whose previous text is unknown (the first step, a beam
whose parent this object never saw) are searched whole. The number and length
of stop strings are bounded by ``serving/limits.py`` before decoding starts.
Serving path: no torch, no transformers, Python 3.10.
"""

from __future__ import annotations

from typing import Dict, FrozenSet, Optional, Sequence, Tuple

#: Characters before the previous end of the text that are searched again (see the module doc).
SLACK = 16

_Key = Tuple[int, Tuple[int, ...]]


class StopStrings:
    """The stop strings of one request (empty ones dropped), and the texts of the rows it has checked."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops: Tuple[str, ...] = tuple(dict.fromkeys(s for s in stops if s))
        self.longest = max((len(s) for s in self.stops), default=0)
        self._prefixes: Optional[FrozenSet[str]] = None
        #: Per number of new tokens: (row, tokens) -> (length of that text, whether it holds a stop string); the
        #: entries of this step and the step before are kept.
        self._lengths: Dict[int, Dict[_Key, Tuple[int, bool]]] = {}
        #: Characters searched so far (each stop string over its window counts the window once).
        self.scanned = 0

    def __bool__(self) -> bool:
        return bool(self.stops)

    def find(self, text: str, start: int = 0) -> int:
        """The index of the first stop string in ``text[start:]`` (-1: none)."""
        start = max(0, start)
        window = len(text) - start
        best = -1
        for stop in self.stops:
            self.scanned += max(0, window)
            i = text.find(stop, start)
            if i >= 0 and (best < 0 or i < best):
                best = i
        return best

    def cut(self, text: str, start: int = 0) -> Tuple[str, bool]:
        """``text`` up to its first stop string (excluded), and whether one was found at or after ``start``."""
        i = self.find(text, start) if self.stops else -1
        return (text[:i], True) if i >= 0 else (text, False)

    def search_from(self, previous_length: Optional[int]) -> int:
        """Where a text that was ``previous_length`` long a token ago must be searched from."""
        return 0 if previous_length is None else previous_length - (self.longest - 1) - SLACK

    def stopped(self, row: int, tokens: Sequence[int], text: str) -> bool:
        """Whether ``text`` (row ``row``'s generated text for ``tokens``) holds a stop string, searching only the
        tail the last token can have changed when this row's text a token ago was seen."""
        n = len(tokens)
        key = (row, tuple(tokens))
        seen = self._lengths.get(n, {}).get(key)
        if seen is not None:  # asked again about the same text
            return seen[1]
        previous = self._lengths.get(n - 1, {}).get((row, key[1][:-1])) if n else None
        found = self.find(text, self.search_from(None if previous is None else previous[0])) >= 0
        self._lengths.setdefault(n, {})[key] = (len(text), found)
        for old in [k for k in self._lengths if k < n - 1]:
            del self._lengths[old]
        return found

    def held_back(self, text: str) -> int:
        """How many trailing characters a stream keeps back: an incomplete character, or the start of a stop
        string that the next token may complete."""
        if text.endswith("\ufffd"):
            return len(text) - len(text.rstrip("\ufffd"))
        if self._prefixes is None:
            self._prefixes = frozenset(s[:k] for s in self.stops for k in range(1, len(s)))
        for k in range(min(self.longest - 1, len(text)), 0, -1):
            self.scanned += k
            if text[-k:] in self._prefixes:
                return k
        return 0
