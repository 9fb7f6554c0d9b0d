"""Leases: the timed half (docs/architecture.md, "Leases").

The state machine (raftkv.kv.leases) knows what the log says about a lease's time: the
TTL a grant or keep-alive started, or the time left a leader recorded in a checkpoint.
This clock turns those into deadlines on this node's own monotonic clock, at the moment
it applies them, on every node and not only the leader:

- A grant or keep-alive applied at ``t`` gives ``t + ttl``. The client sent it before
  any node applied it, so the deadline is never earlier than the TTL measured from when
  the client sent it.
- A checkpoint applied at ``t`` gives ``t + left``: the leader wrote ``left`` before
  anyone applied it, so this is no earlier than the leader's own deadline. A follower
  keeps the earlier of that and what it had (both are safe; the earlier is closer).
- A node that becomes leader adds one election timeout to every deadline it tracked, and
  goes on counting from there: a leader change neither resets a TTL nor shortens one.

Only the leader acts on its deadlines. When one passes, it proposes an Expire naming the
lease's last renewal (a keep-alive committed in between makes it stale), and it records
the time left of leases that nothing recorded for ``checkpoint_interval_s``, so that a
node that restarts or installs a snapshot does not start their countdown again from the
full TTL.

Pure: time comes in as arguments (the host's monotonic seconds, or the simulator's
virtual ones).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from raftkv.kv.leases import TimerEvent

__all__ = ["LeaseClock", "LeaseClockSettings", "LeaseStats"]

_MAX_CHECKPOINT_LEASES = 1000
"""Leases one checkpoint entry records (about 16 KB), so no entry grows without bound."""


class LeaseStats(NamedTuple):
    """What the metrics report of the leases."""

    leases: int
    attached_keys: int
    expired: int
    """Leases this node saw expire (applied Expire entries), since it started."""
    expiries_proposed: int
    """Expire entries this node proposed as leader, since it started."""


@dataclass(frozen=True, slots=True)
class LeaseClockSettings:
    election_timeout_s: float
    """Added to every deadline when this node becomes leader."""
    checkpoint_interval_s: float = 5.0
    """A lease whose time nothing recorded for this long is checkpointed by the leader."""
    expire_retry_s: float = 2.0
    """An Expire not applied this long after it was proposed is proposed again."""


class LeaseClock:
    """Deadlines of every live lease on this node's clock."""

    __slots__ = (
        "_deadlines",
        "_heap",
        "_last_checkpoint",
        "_leading",
        "_proposed",
        "_recorded_at",
        "on_expired",
        "settings",
    )

    def __init__(self, settings: LeaseClockSettings) -> None:
        self.settings = settings
        self._deadlines: dict[int, float] = {}
        self._recorded_at: dict[int, float] = {}
        # (deadline, lease id); entries whose deadline has since moved stay until they
        # reach the top (lazy deletion), and the heap is rebuilt when they pile up.
        self._heap: list[tuple[float, int]] = []
        self._leading = False
        self._proposed: dict[int, float] = {}
        self._last_checkpoint = 0.0
        self.on_expired: Callable[[float], None] | None = None
        """Told, on the leader, how late past its deadline each lease it expired ended
        (seconds from the deadline to the apply of the Expire)."""

    # -- what the log said -------------------------------------------------------------

    def observe(self, events: Iterable[TimerEvent], now: float) -> None:
        """Events taken from the lease table after applying entries at ``now``. After a
        checkpoint the earlier deadline wins; after a grant or keep-alive, the new one."""
        deadlines = self._deadlines
        recorded = self._recorded_at
        for lease_id, remaining_ms, checkpoint in events:
            if remaining_ms is None:
                deadline = deadlines.pop(lease_id, None)
                recorded.pop(lease_id, None)
                asked = self._proposed.pop(lease_id, None)
                if asked is not None and deadline is not None and self.on_expired is not None:
                    self.on_expired(max(0.0, now - deadline))
                continue
            deadline = now + remaining_ms / 1000
            current = deadlines.get(lease_id)
            if checkpoint and current is not None and (self._leading or current <= deadline):
                # The leader's own deadline is the one it recorded; a follower's
                # earlier one is as safe and closer.
                recorded[lease_id] = now
                continue
            self._set(lease_id, deadline)
            recorded[lease_id] = now
            if not checkpoint:
                # A renewal: an Expire proposed before it names an older renewal and
                # changes nothing, so neither its retry time nor its exclusion from
                # checkpoints applies to the new deadline.
                self._proposed.pop(lease_id, None)

    def load(self, timers: Iterable[TimerEvent], now: float) -> None:
        """Forget everything and start from a restored state's recorded times."""
        self._deadlines.clear()
        self._recorded_at.clear()
        self._heap.clear()
        self._proposed.clear()
        self.observe(timers, now)

    def _set(self, lease_id: int, deadline: float) -> None:
        self._deadlines[lease_id] = deadline
        heap = self._heap
        if len(heap) > 2 * len(self._deadlines) + 1024:
            heap[:] = [(d, i) for i, d in self._deadlines.items()]
            heapq.heapify(heap)
        else:
            heapq.heappush(heap, (deadline, lease_id))

    # -- leadership ----------------------------------------------------------------------

    def became_leader(self, now: float) -> None:
        """This node leads from ``now``: every deadline moves one election timeout on."""
        self._leading = True
        self._proposed.clear()
        self._last_checkpoint = now
        extra = self.settings.election_timeout_s
        for lease_id, deadline in list(self._deadlines.items()):
            self._set(lease_id, deadline + extra)

    def stepped_down(self) -> None:
        self._leading = False
        self._proposed.clear()

    @property
    def leading(self) -> bool:
        return self._leading

    # -- the leader's duties --------------------------------------------------------------

    def due(self, now: float) -> list[int]:
        """Leases whose deadline has passed and that need an Expire proposed now (the
        leader only; an Expire already proposed is proposed again after
        ``expire_retry_s``)."""
        if not self._leading:
            return []
        heap = self._heap
        deadlines = self._deadlines
        proposed = self._proposed
        retry = self.settings.expire_retry_s
        out: list[int] = []
        waiting: list[tuple[float, int]] = []
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if deadlines.get(entry[1]) != entry[0]:
                continue  # moved or gone since this entry was pushed
            # Kept until the Expire is applied, to be proposed again should it be lost.
            waiting.append(entry)
            asked = proposed.get(entry[1])
            if asked is None or now - asked >= retry:
                proposed[entry[1]] = now
                out.append(entry[1])
        for entry in waiting:
            heapq.heappush(heap, entry)
        return out

    def to_checkpoint(self, now: float) -> list[tuple[int, int]]:
        """(lease id, ms left) for the leases nothing recorded for a checkpoint interval,
        at most once per interval and ``_MAX_CHECKPOINT_LEASES`` at a time (the leader
        only)."""
        interval = self.settings.checkpoint_interval_s
        if not self._leading or now - self._last_checkpoint < interval:
            return []
        self._last_checkpoint = now
        stale = [
            lease_id
            for lease_id, recorded in self._recorded_at.items()
            if now - recorded >= interval and lease_id not in self._proposed
        ]
        stale.sort()
        deadlines = self._deadlines
        return [
            (lease_id, max(0, int((deadlines[lease_id] - now) * 1000)))
            for lease_id in stale[:_MAX_CHECKPOINT_LEASES]
        ]

    # -- reading --------------------------------------------------------------------------

    def remaining_ms(self, lease_id: int, now: float) -> int:
        """Milliseconds left on this node's clock (0 once past; -1 if unknown). A
        follower's figure is never below the leader's."""
        deadline = self._deadlines.get(lease_id)
        if deadline is None:
            return -1
        return max(0, int((deadline - now) * 1000))

    def __len__(self) -> int:
        return len(self._deadlines)
