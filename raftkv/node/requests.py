"""Client requests waiting inside the Raft process, and how their outcomes are told.

A request waits for one of: a leader to be known, its entry to be applied, its read
index to be applied, or its deadline. Whatever comes first answers it, exactly once.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import orjson

from raftkv.kv.results import ApplyResult, Status
from raftkv.kv.txn import encode_txn_result
from raftkv.wire.errors import WRITE_NOT_APPLIED, WRITE_OUTCOME_UNKNOWN
from raftkv.wire.protocol import ReplyStatus
from raftkv_ext.codec import ClientReply, ClientRequest

ReplyFn = Callable[[ClientReply], None]


@dataclass(slots=True, eq=False)
class PendingRequest:
    request: ClientRequest
    reply_fn: ReplyFn
    deadline: float
    is_write: bool
    done: bool = False
    # Set once the write's entry is in some leader's log: from then on a timeout leaves
    # the outcome unknown, where before it the write certainly did not happen.
    proposed: bool = False
    # The command proposed for this write: the entry that answers it must carry exactly
    # these bytes (see Driver._answer_write).
    command: bytes = b""
    # Writes of this process answered by fail(): every way a write ends without a
    # result passes here, so this is where raftkv_proposals_failed_total is counted.
    failed_writes: ClassVar[int] = 0

    def answer(self, reply: ClientReply) -> None:
        if not self.done:
            self.done = True
            self.reply_fn(reply)

    def fail(self, status: ReplyStatus, message: str) -> None:
        if self.is_write and not self.done:
            PendingRequest.failed_writes += 1
        self.answer(ClientReply(self.request.request_id, status, body=message.encode()))


_MIN_COMPACT_AT = 1024


@dataclass(slots=True)
class DeadlineQueue:
    """Requests by deadline, so expired ones are found without scanning them all.

    Most requests are answered long before their deadline, and an answered request
    would otherwise stay in the heap (with its key, value and reply callback) until the
    deadline passes: at 20,000 writes/s and a 5 s timeout that is 100,000 dead requests,
    which cost memory and make every full garbage collection walk them (pauses of over
    100 ms, enough to miss heartbeats). So the heap drops answered requests whenever it
    has doubled since it last did, which keeps it within twice the requests still
    waiting at an amortised constant cost per request.
    """

    _heap: list[tuple[float, int, PendingRequest]] = field(default_factory=list)
    _counter: int = 0
    _compact_at: int = _MIN_COMPACT_AT

    def add(self, pending: PendingRequest) -> None:
        self._counter += 1
        heap = self._heap
        if len(heap) >= self._compact_at:
            heap = self._heap = [entry for entry in heap if not entry[2].done]
            heapq.heapify(heap)
            self._compact_at = max(_MIN_COMPACT_AT, 2 * len(heap))
        heapq.heappush(heap, (pending.deadline, self._counter, pending))

    def expire(self, now: float) -> list[PendingRequest]:
        expired: list[PendingRequest] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            pending = heapq.heappop(heap)[2]
            if not pending.done:
                expired.append(pending)
        return expired

    def drain(self) -> list[PendingRequest]:
        remaining = [entry[2] for entry in self._heap if not entry[2].done]
        self._heap = []
        return remaining

    def __len__(self) -> int:
        return len(self._heap)


def timeout_message(pending: PendingRequest) -> tuple[ReplyStatus, str]:
    if pending.is_write and pending.proposed:
        return (
            ReplyStatus.TIMEOUT,
            f"no quorum answered in time; {WRITE_OUTCOME_UNKNOWN}",
        )
    if pending.is_write:
        return ReplyStatus.UNAVAILABLE, f"no leader in time; {WRITE_NOT_APPLIED}"
    return ReplyStatus.UNAVAILABLE, "no leader or quorum answered in time"


def reply_for_result(request_id: int, term: int, result: ApplyResult) -> ClientReply:
    """The reply for an applied write."""
    status = result.status
    if status == Status.OK:
        if result.txn is not None:
            body = encode_txn_result(result.txn)
        elif result.lease_ttls:
            body = struct.pack(f"<{len(result.lease_ttls)}Q", *result.lease_ttls)
        elif result.lease is not None:
            # A lease's grant, keep-alive, revoke, or a put with a TTL or lease.
            lease_id, ttl_ms = result.lease
            body = orjson.dumps({"lease": lease_id, "ttl_ms": ttl_ms, "deleted": result.deleted})
        elif result.deleted:
            body = orjson.dumps({"deleted": result.deleted})
        else:
            body = b""
        return ClientReply(
            request_id, ReplyStatus.OK, result.entry_index, term, result.revision, body
        )
    if status == Status.NOT_FOUND:
        # An auth change names what it did not find; a key delete has no message.
        body = result.error.encode() if result.error else b"key not found"
        return ClientReply(request_id, ReplyStatus.NOT_FOUND, result.entry_index, term, 0, body)
    if status == Status.CONFLICT and result.error:
        # A lease grant naming an id in use (a key's compare has no message).
        body = result.error.encode()
        return ClientReply(request_id, ReplyStatus.CONFLICT, result.entry_index, term, 0, body)
    if status == Status.CONFLICT:
        return ClientReply(
            request_id,
            ReplyStatus.CONFLICT,
            result.entry_index,
            term,
            result.current_revision,
            b"prev_revision does not match the key's current revision",
        )
    if status == Status.STALE:
        return ClientReply(
            request_id,
            ReplyStatus.STALE_SESSION,
            result.entry_index,
            term,
            0,
            result.error.encode(),
        )
    return ClientReply(
        request_id,
        ReplyStatus.BAD_REQUEST,
        result.entry_index,
        term,
        0,
        (result.error or "bad command").encode(),
    )
