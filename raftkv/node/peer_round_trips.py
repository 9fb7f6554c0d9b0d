"""Round-trip times from the leader to each follower, measured on AppendEntries.

The wire has no ping and an AppendEntries carries nothing unique that its response
echoes, but each follower answers the AppendEntries of one connection one by one, in
the order they arrived. So the tracker counts, per follower, the AppendEntries sent and
the responses received: the response to the n-th message sent is the n-th received.
It times one message per follower at a time (a probe): the first AppendEntries sent
while no probe is waiting, up to the response that answers it. A heartbeat is an empty
AppendEntries, so an idle cluster is measured too; under load the time includes the
follower's disk write, since it answers only once the entries are durable.

Messages lost with a broken connection would shift the count for good, so the count is
set even again whenever the transport reports the follower unreachable (it does on
every break, failed dial and dropped message), and when a probe got no answer for
``give_up_after`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from raftkv_ext.codec import AppendEntries, AppendEntriesResponse

if TYPE_CHECKING:
    from raftkv_ext.codec import RaftMessage

__all__ = ["PeerRoundTrips"]

# Far longer than any round trip of a cluster that works (an election timeout is a few
# hundred milliseconds), and short enough that a lost probe is soon replaced.
DEFAULT_GIVE_UP_AFTER_S = 5.0


class PeerRoundTrips:
    """Times AppendEntries round trips per follower; ``observe(peer, seconds)`` gets each."""

    def __init__(
        self,
        observe: Callable[[int, float], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        give_up_after: float = DEFAULT_GIVE_UP_AFTER_S,
    ) -> None:
        self._observe = observe
        self._clock = clock
        self._give_up_after = give_up_after
        self._sent: dict[int, int] = {}
        self._answered: dict[int, int] = {}
        # peer -> (number of the message being timed, when it was sent)
        self._probes: dict[int, tuple[int, float]] = {}

    def sent(self, messages: Iterable[RaftMessage]) -> None:
        """Messages handed to the transport (only AppendEntries count)."""
        now: float | None = None
        sent = self._sent
        probes = self._probes
        for message in messages:
            if type(message) is not AppendEntries:
                continue
            peer = message.recipient
            number = sent.get(peer, 0) + 1
            sent[peer] = number
            probe = probes.get(peer)
            if now is None:
                now = self._clock()
            if probe is not None and now - probe[1] <= self._give_up_after:
                continue
            if probe is not None:
                # Its answer is not coming: take what was in flight as lost.
                self._answered[peer] = number - 1
            probes[peer] = (number, now)

    def received(self, messages: Iterable[RaftMessage]) -> None:
        """Messages from a peer (only AppendEntriesResponse counts)."""
        for message in messages:
            if type(message) is not AppendEntriesResponse:
                continue
            peer = message.sender
            sent = self._sent.get(peer, 0)
            answered = min(self._answered.get(peer, 0) + 1, sent)
            self._answered[peer] = answered
            probe = self._probes.get(peer)
            if probe is not None and answered >= probe[0]:
                del self._probes[peer]
                self._observe(peer, max(0.0, self._clock() - probe[1]))

    def lost(self, peer: int) -> None:
        """The transport lost messages to or from ``peer``: start counting afresh."""
        self._answered[peer] = self._sent.get(peer, 0)
        self._probes.pop(peer, None)
