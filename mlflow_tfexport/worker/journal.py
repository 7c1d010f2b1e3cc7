"""The alias guard's own alias writes, kept in the process: how a user's move that an undo overwrote is found.

MLflow has no compare-and-set for aliases. The guard reads an alias just before it undoes a refused move, but
a user's move or deletion that lands between that read and the guard's write is overwritten by the undo, and
the registry keeps no trace of it. What the worker does get is that move's webhook, and MLflow sends it only
after the move is written (``mlflow.server.handlers``: the store write, then ``deliver_webhook``). So a
delivery received *after* the guard's last read (``Undo.checked_at``) may name such a lost move, while one
received before it cannot: the guard's read saw that move, or one made after it.

The journal keeps, per alias, the guard's last undo (when it last read the alias before writing, and what it
wrote), and the guard's own alias writes whose deliveries have not come back yet: each of them absorbs one
delivery naming the same value, so the guard never takes its own move for a user's (``not_own``).
``overwritten`` then names, per alias, the move a user made last that an undo overwrote: the last delivery
received after the undo's read, not the guard's own, naming another value than the one the undo wrote, while
the alias still holds that value. The guard re-applies it only as any move goes: through the policy
(``guard._Pass.reapply``), so a refused version is never put back.

Limits (MLflow's webhooks carry no sequence number, and are sent by a pool of threads): two moves made
within milliseconds may be delivered in the other order, so "last" is the order the worker received them in;
and a move made just before the guard's read whose delivery reaches the worker only after it is taken for a
lost one. Either way what is re-applied is a move a user did make, judged by the policy in force, and
recorded. Forged or replayed deliveries never get here: the webhook receiver refuses them (``webhook``).
Entries expire after ``UNDO_TTL_S``; nothing is written to disk (the deliveries are not either).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

#: Seconds an undo and an own write are remembered: past it, a delivery is taken as it comes (MLflow gives
#: up on a delivery after its retries, ``MLFLOW_WEBHOOK_REQUEST_TIMEOUT`` 30 s each by default).
UNDO_TTL_S = 180.0
#: Own writes remembered per alias (a guard that writes an alias more often than this per ``UNDO_TTL_S`` has
#: its oldest ones forgotten), and aliases remembered in all.
MAX_OWN_WRITES = 16
MAX_ALIASES = 10_000


@dataclass(frozen=True)
class Told:
    """A move the worker was told of by a webhook: ``version`` None for a deletion; ``at``: when the worker
    received it (``time.monotonic``)."""

    alias: str
    version: Optional[str]
    at: float = field(default_factory=time.monotonic, compare=False)


@dataclass(frozen=True)
class Undo:
    """The guard's last undo of an alias: ``checked_at`` (``time.monotonic``, taken before its last read of
    the alias), the value it wrote (None: removed), and the version it undid (None: a removal put back)."""

    checked_at: float
    wrote: Optional[str]
    undid: Optional[str]
    expires: float


_Key = Tuple[str, str]


class WriteJournal:
    """The guard's own alias writes and undos, per registered model and alias; thread-safe, bounded."""

    def __init__(self, ttl_s: float = UNDO_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._own: Dict[_Key, List[Tuple[Optional[str], float]]] = {}
        self._undos: Dict[_Key, Undo] = {}

    def expect(self, name: str, alias: str, value: Optional[str]) -> None:
        """Note that the guard is about to write ``alias`` (``value`` None: remove it). Call it before the
        write, so that its delivery, which comes after the write, is recognised."""
        with self._lock:
            self._expire()
            writes = self._own.setdefault((name, alias), [])
            writes.append((value, time.monotonic()))
            del writes[:-MAX_OWN_WRITES]
            self._bound(self._own)

    def undone(self, name: str, alias: str, *, checked_at: float, wrote: Optional[str],
               undid: Optional[str]) -> None:
        """Note an undo: the guard read ``alias`` at ``checked_at``, then wrote ``wrote``."""
        with self._lock:
            self._expire()
            self._undos[(name, alias)] = Undo(checked_at, wrote, undid, time.monotonic() + self.ttl_s)
            self._bound(self._undos)

    def forget(self, name: str, alias: str) -> None:
        with self._lock:
            self._undos.pop((name, alias), None)

    def not_own(self, name: str, told: Sequence[Told]) -> List[Told]:
        """``told`` without the deliveries of the guard's own writes (each own write absorbs one delivery of
        the same alias and value received after it was made)."""
        kept: List[Told] = []
        with self._lock:
            self._expire()
            for t in told:
                writes = self._own.get((name, t.alias), [])
                match = next((i for i, (value, at) in enumerate(writes) if value == t.version and at <= t.at), None)
                if match is None:
                    kept.append(t)
                else:
                    del writes[match]
        return kept

    def overwritten(self, name: str, now: Mapping[str, str], told: Sequence[Told]) -> Dict[str, Tuple[Told, Undo]]:
        """alias -> (the user's move an undo overwrote, that undo), from deliveries that are not the guard's own
        (``not_own``). An undo whose value the alias no longer holds is forgotten (a later move replaced it)."""
        found: Dict[str, Tuple[Told, Undo]] = {}
        with self._lock:
            self._expire()
            for key in [k for k in self._undos if k[0] == name and now.get(k[1]) != self._undos[k].wrote]:
                del self._undos[key]
            last: Dict[str, Told] = {}
            for t in told:  # in the order received
                undo = self._undos.get((name, t.alias))
                if undo is not None and t.at > undo.checked_at:
                    last[t.alias] = t
            for alias, t in last.items():
                undo = self._undos[(name, alias)]
                if t.version != undo.wrote:
                    found[alias] = (t, undo)
        return found

    def _expire(self) -> None:
        clock = time.monotonic()
        for key in [k for k, u in self._undos.items() if u.expires < clock]:
            del self._undos[key]
        for key in list(self._own):
            kept = [(v, at) for v, at in self._own[key] if at + self.ttl_s >= clock]
            if kept:
                self._own[key] = kept
            else:
                del self._own[key]

    @staticmethod
    def _bound(table: Dict[_Key, Any]) -> None:
        for key in list(table)[: max(0, len(table) - MAX_ALIASES)]:  # the oldest inserted first
            del table[key]
