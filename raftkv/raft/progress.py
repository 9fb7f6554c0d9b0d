"""What the leader knows of each follower's log, and how fast it may send (§5.3).

A follower is in one of three states, as in etcd's raft:
- PROBE: the leader does not know where the logs agree; it sends one AppendEntries at a
  time and waits for the answer (or the next heartbeat) before trying again.
- REPLICATE: the logs agree up to ``match``; the leader streams entries optimistically,
  bounded by a window of messages and bytes in flight.
- SNAPSHOT: the follower needs entries the leader has compacted; a snapshot is sent in
  chunks, one in flight at a time.
"""

from __future__ import annotations

from collections import deque
from enum import Enum


class ProgressState(Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    __slots__ = (
        "acked_round",
        "commit_sent",
        "inflight",
        "inflight_bytes",
        "match",
        "next",
        "nudged",
        "probe_sent",
        "recent_active",
        "snapshot_index",
        "snapshot_offset",
        "state",
    )

    def __init__(self, next_index: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        # (last index of message, bytes of entries) for each AppendEntries in flight.
        self.inflight: deque[tuple[int, int]] = deque()
        self.inflight_bytes = 0
        self.recent_active = False
        # Whether an empty AppendEntries already went out this heartbeat interval to
        # learn how far the follower got (see RaftCore._handle_append_response).
        self.nudged = False
        self.acked_round = 0
        # The highest commit index sent to this follower, so that an idle follower is
        # told of a new commit index once rather than on every acknowledgement.
        self.commit_sent = 0
        self.snapshot_index = 0
        self.snapshot_offset = 0

    def become_probe(self) -> None:
        # After a snapshot, resume right after it; otherwise right after what matches.
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.snapshot_index + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self._clear_inflight()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self._clear_inflight()

    def become_snapshot(self, index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.snapshot_index = index
        self.snapshot_offset = 0
        self.probe_sent = False
        self._clear_inflight()

    def _clear_inflight(self) -> None:
        self.inflight.clear()
        self.inflight_bytes = 0

    def update(self, index: int) -> bool:
        """Record that the follower matches up to ``index``; True if that is news."""
        updated = index > self.match
        if updated:
            self.match = index
        self.next = max(self.next, index + 1)
        self.free_inflight(index)
        return updated

    def sent(self, last_index: int, size: int) -> None:
        """An AppendEntries ending at ``last_index`` with ``size`` bytes went out."""
        if self.state is ProgressState.REPLICATE:
            if last_index >= self.next:
                self.next = last_index + 1
            self.inflight.append((last_index, size))
            self.inflight_bytes += size
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def free_inflight(self, index: int) -> None:
        while self.inflight and self.inflight[0][0] <= index:
            _, size = self.inflight.popleft()
            self.inflight_bytes -= size

    def free_first(self) -> None:
        """Give up on the oldest message in flight (it was probably lost).

        Lets one more message go out; if the follower is missing the lost entries it
        rejects that one and the leader falls back to probing.
        """
        if self.inflight:
            _, size = self.inflight.popleft()
            self.inflight_bytes -= size

    def is_paused(self, max_messages: int, max_bytes: int) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.SNAPSHOT:
            return True
        return len(self.inflight) >= max_messages or self.inflight_bytes >= max_bytes

    def __repr__(self) -> str:
        return (
            f"Progress(state={self.state.value}, match={self.match}, next={self.next}, "
            f"inflight={len(self.inflight)})"
        )
