"""DeadlineQueue: expiry order, and answered requests not kept until their deadline."""

from __future__ import annotations

from raftkv.node.requests import DeadlineQueue, PendingRequest
from raftkv.wire.protocol import Op, ReplyStatus
from raftkv_ext.codec import ClientReply, ClientRequest


def _pending(request_id: int, deadline: float) -> PendingRequest:
    replies: list[ClientReply] = []
    return PendingRequest(
        ClientRequest(request_id, int(Op.GET), key=b"k"), replies.append, deadline, False
    )


def test_expire_returns_unanswered_requests_past_their_deadline_in_order() -> None:
    queue = DeadlineQueue()
    late, early, answered, future = (
        _pending(1, 3.0),
        _pending(2, 1.0),
        _pending(3, 2.0),
        _pending(4, 9.0),
    )
    for pending in (late, early, answered, future):
        queue.add(pending)
    answered.fail(ReplyStatus.UNAVAILABLE, "answered")
    assert queue.expire(5.0) == [early, late]
    assert queue.drain() == [future]


def test_answered_requests_do_not_pile_up_until_their_deadline() -> None:
    queue = DeadlineQueue()
    waiting = []
    for request_id in range(100_000):
        pending = _pending(request_id, 1000.0)
        queue.add(pending)
        if request_id % 100 == 0:
            waiting.append(pending)  # one in a hundred still waits
        else:
            pending.answer(ClientReply(request_id, 0))
    # Bounded by twice what is still waiting (plus the first compaction's floor), not
    # by the 100,000 requests added.
    assert len(queue) <= max(1024, 2 * len(waiting)) + 1
    assert queue.expire(2000.0) == sorted(waiting, key=lambda p: p.request.request_id)
