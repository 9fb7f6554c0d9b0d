"""Ids a node gives the requests it sends to the leader and matches the answers by:
forwarded write batches (Propose → ProposeResponse) and ReadIndex contexts.

An answer can outlive the process that asked for it. The leader's transport keeps the
messages queued for a peer across reconnections, so a node killed and restarted at once
can receive answers meant for its previous incarnation. While each incarnation counted
from zero, such an answer matched a new, unrelated request: a chaos run saw a restarted
follower answer a batch of writes with the results of an older batch's entries
(acknowledging writes the state machine had refused), and serve a linearizable read at
the read index of a read its previous incarnation had asked for (a stale read).

So every incarnation counts from a random 63-bit start: two incarnations' ranges meet
only with negligible probability, and an answer to an id this incarnation never used
finds nothing and is dropped.
"""

from __future__ import annotations

import random

_SPACE = 1 << 63


class IncarnationCounter:
    """Increasing ids, starting at a random point (``rng`` for tests)."""

    __slots__ = ("_last",)

    def __init__(self, rng: random.Random | None = None) -> None:
        self._last = (rng or random.SystemRandom()).randrange(_SPACE)

    def next(self) -> int:
        # Wraps within 64 bits, the width of the ids on the wire.
        self._last = (self._last + 1) % (1 << 64)
        return self._last
