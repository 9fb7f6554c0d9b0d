"""A simulated network between Raft cores: latency, loss, duplication, partitions.

Delivery order follows from random latencies, so messages are reordered as a real
network (or a reconnecting transport) would reorder them. Partitions block directed
links, so one-way partitions are as easy to make as symmetric ones.

Raft's own messages may be duplicated: the core must tolerate it. Forwarded proposals
and their answers are not: kvnode's transport writes each message once on a TCP
connection (at most once, never twice), and the driver relies on that when it tells a
client that a refused forwarded write was not applied.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from raftkv_ext.codec import Propose, ProposeResponse, decode, encode

if TYPE_CHECKING:
    from raftkv_ext.codec import RaftMessage


_DELIVERED_AT_MOST_ONCE = (Propose, ProposeResponse)


@dataclass(slots=True)
class LinkFaults:
    """How unreliable the network is right now."""

    drop: float = 0.0
    duplicate: float = 0.0
    min_latency: int = 1
    max_latency: int = 2


@dataclass(order=True, slots=True)
class _InFlight:
    deliver_at: int
    seq: int
    message: RaftMessage = field(compare=False)


class Network:
    def __init__(self, rng: random.Random, wire_codec: bool = True) -> None:
        self._rng = rng
        self._queue: list[_InFlight] = []
        self._seq = 0
        self.faults = LinkFaults()
        self.blocked: set[tuple[int, int]] = set()
        # Pass every message through the binary codec, as the real transport does, so
        # the simulation exercises the encoding of every message it sends.
        self._wire_codec = wire_codec
        self.sent = 0
        self.dropped = 0
        self.duplicated = 0

    def send(self, now: int, message: RaftMessage) -> None:
        self.sent += 1
        if self._rng.random() < self.faults.drop:
            self.dropped += 1
            return
        copies = 1
        duplicate = self._rng.random() < self.faults.duplicate
        if duplicate and not isinstance(message, _DELIVERED_AT_MOST_ONCE):
            copies = 2
            self.duplicated += 1
        for _ in range(copies):
            latency = self._rng.randint(self.faults.min_latency, self.faults.max_latency)
            if self._wire_codec:
                decoded = decode(encode(message))
                assert not isinstance(decoded, tuple)
                message = decoded  # type: ignore[assignment]
            self._seq += 1
            heapq.heappush(self._queue, _InFlight(now + latency, self._seq, message))

    def due(self, now: int) -> list[RaftMessage]:
        """Messages that arrive at ``now`` over links that are not blocked."""
        arrived: list[RaftMessage] = []
        while self._queue and self._queue[0].deliver_at <= now:
            message = heapq.heappop(self._queue).message
            if (message.sender, message.recipient) in self.blocked:
                self.dropped += 1
                continue
            arrived.append(message)
        return arrived

    def partition(self, groups: list[set[int]]) -> None:
        """Cut every link between nodes of different groups, both ways."""
        self.blocked = {
            (a, b)
            for group_a in groups
            for group_b in groups
            if group_a is not group_b
            for a in group_a
            for b in group_b
        }

    def block_one_way(self, senders: set[int], receivers: set[int]) -> None:
        self.blocked |= {(a, b) for a in senders for b in receivers if a != b}

    def heal(self) -> None:
        self.blocked = set()
        self.faults = LinkFaults()
