"""The same answer is the same error, whichever way it reaches the client: a reply of the
Raft process as the worker turns it into HTTP and the HTTP client reads it back, or the
same reply read by the native client directly (all through raftkv.wire.errors' table)."""

from __future__ import annotations

import httpx
import pytest

from raftkv.client import http_client, native
from raftkv.http.routes.raft_calls import RaftCalls
from raftkv.wire.errors import ConflictError, RaftkvError, UnavailableError
from raftkv.wire.protocol import ReplyStatus
from raftkv_ext.codec import ClientReply

# Every status a key request's reply can carry but OK, and one nobody knows.
ANSWERS = [
    (ReplyStatus.NOT_FOUND, b"key not found", 0),
    (ReplyStatus.CONFLICT, b"prev_revision does not match", 42),
    (ReplyStatus.CONFLICT, b"prev_revision does not match", 0),
    (ReplyStatus.BAD_REQUEST, b"key is 5000 bytes", 0),
    (ReplyStatus.INTERNAL, b"disk on fire", 0),
    (ReplyStatus.UNAVAILABLE, b"no leader in time; the write was not applied", 0),
    (ReplyStatus.TIMEOUT, b"no quorum; the write may or may not have been applied", 0),
    (99, b"from the future", 0),
]


def _through_http(reply: ClientReply, *, write: bool) -> RaftkvError:
    """The worker's answer to ``reply``, as the HTTP client reads it."""
    api_error = RaftCalls.error_for(reply, write=write, prev_revision=7)
    answer = api_error.to_response()
    response = httpx.Response(
        answer.status_code, headers=dict(answer.headers), content=bytes(answer.body)
    )
    return http_client._error_for(response)


@pytest.mark.parametrize(("status", "body", "revision"), ANSWERS)
@pytest.mark.parametrize("write", [True, False])
def test_the_native_and_http_clients_raise_the_same_error(
    status: int, body: bytes, revision: int, write: bool
) -> None:
    reply = ClientReply(1, status, 5, 2, revision, body)
    direct = native._error_for(reply, "node", write=write)
    if status in (ReplyStatus.UNAVAILABLE, ReplyStatus.TIMEOUT):
        # The HTTP client retries a 503 and raises UnavailableError itself when it gives
        # up; what the worker answers is what it retries on.
        assert RaftCalls.error_for(reply, write=write).status == 503
        assert isinstance(direct, UnavailableError) and direct.status == 503
        return
    via_http = _through_http(reply, write=write)
    assert type(direct) is type(via_http)
    assert direct.status == via_http.status
    if isinstance(direct, ConflictError):
        assert isinstance(via_http, ConflictError)
        assert direct.current_revision == via_http.current_revision == revision
