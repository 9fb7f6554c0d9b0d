"""How the leader judges each follower: the ``health`` word of ``/cluster/status`` and
``/cluster/nodes``.

Three words, from worst to best:

``unreachable``
    No live connection to or from the follower, or nothing heard from it for longer
    than an election timeout. The leader heartbeats every follower several times per
    election timeout and each heartbeat is answered, so silence that long means the
    follower (or the link) is down; it is the same window check-quorum uses.
``lagging``
    Heard from recently, but more than ``LAGGING_ENTRIES`` entries behind the leader's
    last index, or being sent a snapshot (it fell behind the compacted log).
``healthy``
    Heard from within an election timeout and at most ``LAGGING_ENTRIES`` behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

HEALTHY: Final = "healthy"
LAGGING: Final = "lagging"
UNREACHABLE: Final = "unreachable"

# A follower that keeps up trails the leader by what is in flight: one round trip's
# worth of writes, tens to a few hundred entries even at the throughput of a busy
# cluster. A thousand entries behind means it is not keeping up (a slow disk, a
# saturated link, a restart still catching up), while a burst does not make a healthy
# follower flap.
LAGGING_ENTRIES: Final = 1000


@dataclass(frozen=True, slots=True)
class FollowerHealth:
    """The leader's view of one follower."""

    lag_entries: int
    # Seconds since the leader last received a message from it; None: never (since the
    # leader's process started).
    last_contact_s: float | None
    health: str


def classify(
    *,
    lag_entries: int,
    last_contact_s: float | None,
    connected: bool,
    sending_snapshot: bool,
    election_timeout_s: float,
) -> str:
    """The health word of a follower (see the module docstring for the rules)."""
    if not connected or last_contact_s is None or last_contact_s > election_timeout_s:
        return UNREACHABLE
    if sending_snapshot or lag_entries > LAGGING_ENTRIES:
        return LAGGING
    return HEALTHY


def follower_health(
    *,
    leader_last_index: int,
    match_index: int,
    heard_at: float | None,
    now: float,
    connected: bool,
    sending_snapshot: bool,
    election_timeout_s: float,
) -> FollowerHealth:
    """Lag, time since last contact and health of one follower; ``heard_at`` and ``now``
    are monotonic clock readings."""
    lag = max(0, leader_last_index - match_index)
    last_contact = None if heard_at is None else max(0.0, now - heard_at)
    health = classify(
        lag_entries=lag,
        last_contact_s=last_contact,
        connected=connected,
        sending_snapshot=sending_snapshot,
        election_timeout_s=election_timeout_s,
    )
    return FollowerHealth(lag, last_contact, health)
