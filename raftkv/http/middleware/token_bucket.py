"""Token buckets, one per client, with bounded memory.

Each client's bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per
second; a request takes one token or is refused, and a refusal says how long until the
next token. A bucket that has been left alone long enough to be full again is the same
as a new one, so it can be forgotten without changing any answer: buckets are kept in
least-recently-used order, and every call drops the full ones from the old end. Under a
flood from many addresses the table holds only the clients seen in the last
``burst / rate`` seconds, and never more than ``max_clients`` (beyond that the least
recently seen client is forgotten early, which can only let it in sooner).

The clock is a parameter, so tests move time by hand instead of sleeping.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

__all__ = ["DEFAULT_MAX_CLIENTS", "TokenBuckets"]

DEFAULT_MAX_CLIENTS = 100_000
"""Enough for every client of a busy node, small enough (tens of MB at worst) to bound
the memory a flood of addresses can take."""


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class TokenBuckets:
    """Per-client token buckets: ``take(client)`` admits a request or says how long to
    wait."""

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if not burst >= 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        if max_clients < 1:
            raise ValueError(f"max_clients must be positive, got {max_clients}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_clients = max_clients
        # Seconds an untouched bucket takes to fill up from empty: after that it is
        # indistinguishable from a new one.
        self._refill_s = burst / rate
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, client: Hashable) -> float:
        """Take a token for ``client``: 0.0 when the request may go ahead, else the
        seconds until the bucket holds a whole token again (nothing is taken then)."""
        now = self._clock()
        self._forget_full(now)
        buckets = self._buckets
        bucket = buckets.get(client)
        if bucket is None:
            if len(buckets) >= self._max_clients:
                buckets.popitem(last=False)
            buckets[client] = _Bucket(self.burst - 1, now)
            return 0.0
        buckets.move_to_end(client)
        tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if tokens >= 1:
            bucket.tokens = tokens - 1
            return 0.0
        bucket.tokens = tokens
        return (1 - tokens) / self.rate

    def wait(self, client: Hashable) -> float:
        """Seconds until ``client`` has a whole token (0.0 when it has one now, or has no
        bucket). Looks only: takes nothing and creates no bucket."""
        bucket = self._buckets.get(client)
        if bucket is None:
            return 0.0
        tokens = bucket.tokens + (self._clock() - bucket.stamp) * self.rate
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        buckets = self._buckets
        horizon = now - self._refill_s
        while buckets:
            oldest = next(iter(buckets.values()))
            if oldest.stamp > horizon:
                return
            buckets.popitem(last=False)
