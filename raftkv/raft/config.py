"""Tunables of the consensus core, in ticks and bytes."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class UnsafeFaults:
    """Deliberate protocol bugs, for tests that prove the simulator's checks can fail.

    Every switch breaks a rule the Raft paper states; none may be on outside tests.
    """

    # Figure 8 / §5.4.2: commit entries of earlier terms by counting replicas.
    commit_earlier_terms: bool = False
    # §5.2 + Figure 2: acknowledge AppendEntries and grant votes before persisting.
    ack_before_persist: bool = False
    # §5.4.1: grant votes without checking that the candidate's log is up to date.
    vote_without_log_check: bool = False

    @property
    def any(self) -> bool:
        return self.commit_earlier_terms or self.ack_before_persist or self.vote_without_log_check


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Configuration of one node's core.

    The election timeout is drawn at random from
    ``[election_ticks, 2 * election_ticks)`` each time a node resets its timer (§5.2).
    With the driver's default tick of 10 ms the defaults give 150-300 ms elections and
    50 ms heartbeats.
    """

    node_id: int
    election_ticks: int = 15
    heartbeat_ticks: int = 5
    pre_vote: bool = True
    check_quorum: bool = True
    # Flow control per follower: at most this many AppendEntries in flight, holding at
    # most this many bytes of entries; one message carries at most max_message_bytes.
    max_inflight_messages: int = 16
    max_inflight_bytes: int = 8 * 1024 * 1024
    max_message_bytes: int = 1024 * 1024
    # InstallSnapshot chunk size.
    snapshot_chunk_bytes: int = 1024 * 1024
    faults: UnsafeFaults = field(default_factory=UnsafeFaults)

    def __post_init__(self) -> None:
        if self.node_id <= 0:
            raise ValueError("node_id must be positive")
        if self.heartbeat_ticks <= 0:
            raise ValueError("heartbeat_ticks must be positive")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("election_ticks must be larger than heartbeat_ticks")
        if self.max_inflight_messages <= 0 or self.max_inflight_bytes <= 0:
            raise ValueError("inflight limits must be positive")
        if self.max_message_bytes <= 0 or self.snapshot_chunk_bytes <= 0:
            raise ValueError("message and chunk sizes must be positive")
