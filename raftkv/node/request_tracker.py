"""Where every client request waiting inside the Raft process is, until it is answered.

A request waits in exactly one place at a time: queued for the next proposal batch, in
line for a leader to be known, at its log index (a write this node proposed), in a batch
forwarded to the leader, or in a ReadIndex batch (asked, then waiting for the apply
index to reach the read index). Every waiting request is also in the deadline queue, so
whichever comes first, its outcome or its deadline, answers it, exactly once.

The tracker only keeps the books; the driver (driver.py) decides when things move.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from raftkv.node.request_ids import IncarnationCounter
from raftkv.node.requests import DeadlineQueue, PendingRequest, timeout_message
from raftkv.raft.ready import ForwardResult
from raftkv.wire.errors import WRITE_OUTCOME_UNKNOWN
from raftkv.wire.protocol import ReplyStatus

__all__ = ["ReadBatch", "RequestTracker"]


@dataclass(slots=True)
class ReadBatch:
    """Linearizable reads that share one ReadIndex round; ``index`` is set once the
    leader has confirmed it (0 until then)."""

    requests: list[PendingRequest]
    index: int = 0


class RequestTracker:
    def __init__(self, rng: random.Random) -> None:
        self.deadlines = DeadlineQueue()
        # Writes (command, request) and reads to submit in this turn's batch.
        self.proposals: list[tuple[bytes, PendingRequest]] = []
        self.read_batch: list[PendingRequest] = []
        # Requests that found no leader; submitted again once one is known.
        self.no_leader: list[PendingRequest] = []
        # Writes this node proposed as leader: index -> (term, request).
        self.writes: dict[int, tuple[int, PendingRequest]] = {}
        # Batches forwarded to a leader: batch id -> (that leader, the requests).
        self.forwards: dict[int, tuple[int, list[PendingRequest]]] = {}
        self.reads_by_context: dict[bytes, ReadBatch] = {}
        self.reads_ready: list[ReadBatch] = []
        # Ids of forwarded batches and ReadIndex contexts start at a random point in
        # every incarnation; see request_ids.py for the acknowledged-but-lost writes and
        # the stale reads that counting from zero caused.
        self._batch_ids = IncarnationCounter(rng)
        self._read_ids = IncarnationCounter(rng)

    # ------------------------------------------------------------------ arrivals

    def queue_write(self, command: bytes, pending: PendingRequest) -> None:
        self.deadlines.add(pending)
        self.proposals.append((command, pending))

    def queue_read(self, pending: PendingRequest) -> None:
        self.deadlines.add(pending)
        self.read_batch.append(pending)

    def take_proposals(self) -> list[tuple[bytes, PendingRequest]]:
        """The writes queued since the last batch that are still unanswered."""
        proposals, self.proposals = self.proposals, []
        return [(command, pending) for command, pending in proposals if not pending.done]

    def take_reads(self) -> list[PendingRequest]:
        batch, self.read_batch = self.read_batch, []
        return [pending for pending in batch if not pending.done]

    def take_no_leader(self) -> list[PendingRequest]:
        waiting, self.no_leader = self.no_leader, []
        return [pending for pending in waiting if not pending.done]

    # ------------------------------------------------------------------ writes

    def proposed(
        self, first_index: int, term: int, proposals: list[tuple[bytes, PendingRequest]]
    ) -> None:
        """Writes appended to this leader's log at ``first_index`` onwards."""
        for offset, (command, pending) in enumerate(proposals):
            pending.proposed = True
            pending.command = command
            self.writes[first_index + offset] = (term, pending)

    def forwarded(self, leader: int, proposals: list[tuple[bytes, PendingRequest]]) -> int:
        """Writes sent to ``leader`` as one batch; returns the batch's id."""
        batch_id = self._batch_ids.next()
        for command, pending in proposals:
            pending.proposed = True
            pending.command = command
        self.forwards[batch_id] = (leader, [pending for _, pending in proposals])
        return batch_id

    def forward_answered(self, result: ForwardResult, applied_index: int) -> None:
        """The leader said where a forwarded batch sits (or that it refused it)."""
        forwarded = self.forwards.pop(result.batch_id, None)
        if forwarded is None:
            return
        waiting = forwarded[1]
        if not result.success:
            for pending in waiting:
                pending.fail(
                    ReplyStatus.UNAVAILABLE, "the leader refused the write; it was not applied"
                )
            return
        for offset, pending in enumerate(waiting):
            index = result.index + offset
            if index <= applied_index:
                # Already applied (a snapshot installed in this Ready covers it): its
                # result is gone; a retry with the same tag gets it from the client table.
                pending.fail(ReplyStatus.TIMEOUT, WRITE_OUTCOME_UNKNOWN)
                continue
            self.writes[index] = (result.term, pending)

    def abandon_forwards(self, leader: int) -> None:
        """Batches forwarded to a former leader will get no answer: say so now rather
        than at the deadline. The old leader may have appended them before it fell, so
        the outcome is unknown; a client retrying with the same tag is safe."""
        for batch_id, (sent_to, waiting) in list(self.forwards.items()):
            if sent_to == leader:
                continue
            del self.forwards[batch_id]
            for pending in waiting:
                pending.fail(
                    ReplyStatus.TIMEOUT,
                    f"leadership changed; {WRITE_OUTCOME_UNKNOWN}",
                )

    def write_at(self, index: int) -> tuple[int, PendingRequest] | None:
        """The write registered at ``index``, taken off the books."""
        return self.writes.pop(index, None)

    def fail_writes_through(self, index: int) -> None:
        """Writes waiting at indexes an installed snapshot covers: their results are
        gone, so their outcome is unknown here."""
        for covered in [i for i in self.writes if i <= index]:
            _, pending = self.writes.pop(covered)
            pending.fail(ReplyStatus.TIMEOUT, WRITE_OUTCOME_UNKNOWN)

    # ------------------------------------------------------------------ reads

    def read_asked(self, reads: list[PendingRequest]) -> bytes:
        """A ReadIndex round for ``reads``; returns the context that names it."""
        context = self._read_ids.next().to_bytes(8, "little")
        self.reads_by_context[context] = ReadBatch(reads)
        return context

    def read_confirmed(self, context: bytes, index: int) -> None:
        batch = self.reads_by_context.pop(context, None)
        if batch is not None:
            batch.index = index
            self.reads_ready.append(batch)

    def read_dropped(self, context: bytes) -> None:
        """The round was lost (leadership changed): ask again once a leader is known."""
        batch = self.reads_by_context.pop(context, None)
        if batch is not None:
            self.no_leader.extend(batch.requests)

    def take_servable_reads(self, applied_index: int) -> list[PendingRequest]:
        """Reads whose read index the state machine has reached."""
        if not self.reads_ready:
            return []
        servable: list[PendingRequest] = []
        waiting: list[ReadBatch] = []
        for batch in self.reads_ready:
            if batch.index > applied_index:
                waiting.append(batch)
            else:
                servable.extend(batch.requests)
        self.reads_ready = waiting
        return servable

    # ------------------------------------------------------------------ endings

    def expire(self, now: float) -> None:
        for pending in self.deadlines.expire(now):
            status, message = timeout_message(pending)
            pending.fail(status, message)

    def fail_all(self, message: str) -> None:
        for pending in self.deadlines.drain():
            pending.fail(ReplyStatus.UNAVAILABLE, message)

    def pending_writes(self) -> int:
        """Client writes waiting here, unanswered: queued to be proposed, waiting for a
        leader, proposed and not yet applied, or forwarded to the leader."""
        waiting = [pending for _, pending in self.proposals]
        waiting += (pending for pending in self.no_leader if pending.is_write)
        waiting += (pending for _, pending in self.writes.values())
        for _, forwarded in self.forwards.values():
            waiting += forwarded
        return sum(1 for pending in waiting if not pending.done)
