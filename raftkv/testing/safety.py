"""The five Raft safety properties (Figure 3) checked as a simulation runs.

Every check is incremental: it looks only at what changed since the last step, so it can
run after every step of every simulation.
"""

from __future__ import annotations

from dataclasses import dataclass

from raftkv.raft.core import RaftCore, Role
from raftkv_ext.entry import Entry


class SafetyViolation(AssertionError):
    """A Raft safety property does not hold."""


@dataclass(slots=True)
class _NodeWatch:
    commit: int = 0
    applied: int = 0
    leader_term: int = 0
    leader_last_index: int = 0
    leader_last_term: int = 0


class SafetyChecker:
    def __init__(self) -> None:
        self.leaders: dict[int, int] = {}
        # (index, term) -> (data, term of the previous entry): Log Matching says that two
        # entries with the same index and term hold the same command and follow the same
        # history, which by induction is what the previous entry's term pins down.
        self._entries: dict[tuple[int, int], tuple[bytes, int]] = {}
        self._committed: dict[int, tuple[int, bytes]] = {}
        self._applied: dict[int, tuple[int, bytes]] = {}
        self._watch: dict[int, _NodeWatch] = {}

    def restarted(self, node_id: int) -> None:
        """A node restarted: its volatile commit and applied indexes start over."""
        self._watch.pop(node_id, None)

    def appended(self, node_id: int, core: RaftCore, entries: list[Entry]) -> None:
        """Log Matching: entries a node is about to persist."""
        for entry in entries:
            prev_term = core.log.term(entry.index - 1)
            if prev_term is None:
                continue
            key = (entry.index, entry.term)
            seen = self._entries.setdefault(key, (entry.data, prev_term))
            if seen != (entry.data, prev_term):
                raise SafetyViolation(
                    f"Log Matching: node {node_id} holds a different entry at index "
                    f"{entry.index} term {entry.term} (or a different history before it)"
                )

    def applied(self, node_id: int, entries: list[Entry]) -> None:
        """State Machine Safety: no two nodes apply different entries at one index."""
        for entry in entries:
            seen = self._applied.setdefault(entry.index, (entry.term, entry.data))
            if seen != (entry.term, entry.data):
                raise SafetyViolation(
                    f"State Machine Safety: node {node_id} applied term {entry.term} at "
                    f"index {entry.index}, another node applied term {seen[0]}"
                )

    def check(self, node_id: int, core: RaftCore) -> None:
        """After every step: Election Safety, Leader Append-Only, Leader Completeness,
        monotonic commit, and that committed entries never change."""
        watch = self._watch.setdefault(node_id, _NodeWatch())
        log = core.log
        if core.role is Role.LEADER:
            holder = self.leaders.setdefault(core.term, node_id)
            if holder != node_id:
                raise SafetyViolation(
                    f"Election Safety: nodes {holder} and {node_id} both lead term {core.term}"
                )
            if watch.leader_term != core.term:
                self._check_leader_completeness(node_id, core)
                watch.leader_term = core.term
            elif log.last_index < watch.leader_last_index or (
                log.term(watch.leader_last_index) not in (None, watch.leader_last_term)
            ):
                raise SafetyViolation(
                    f"Leader Append-Only: leader {node_id} of term {core.term} lost or "
                    f"rewrote entry {watch.leader_last_index}"
                )
            watch.leader_last_index = log.last_index
            watch.leader_last_term = log.last_term
        else:
            watch.leader_term = 0
        if log.committed < watch.commit:
            raise SafetyViolation(
                f"commit index of node {node_id} went back from {watch.commit} to {log.committed}"
            )
        for index in range(max(watch.commit, log.boundary_index) + 1, log.committed + 1):
            entry = log.entries[index - log.boundary_index - 1]
            seen = self._committed.setdefault(index, (entry.term, entry.data))
            if seen != (entry.term, entry.data):
                raise SafetyViolation(
                    f"committed entry {index} differs on node {node_id}: term {entry.term}, "
                    f"committed before as term {seen[0]}"
                )
        watch.commit = log.committed

    def _check_leader_completeness(self, node_id: int, core: RaftCore) -> None:
        """§5.4: a leader holds every entry committed in earlier terms."""
        log = core.log
        for index, (term, _data) in self._committed.items():
            if index <= log.boundary_index:
                continue
            if log.term(index) != term:
                raise SafetyViolation(
                    f"Leader Completeness: leader {node_id} of term {core.term} lacks "
                    f"committed entry {index} (term {term}); it has term {log.term(index)}"
                )

    @property
    def committed_count(self) -> int:
        return len(self._committed)
