"""Hostile input past the handshake: well-formed frames with arbitrary fields, sent to a
real node's native client port (which reaches the Raft process directly, with no worker
in front to validate). Every request gets exactly one reply, except a WATCH, which gets
one error reply or a stream that starts with START; none is ever INTERNAL (an exception
inside the Raft process), and the node keeps serving."""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftkv.testing.cluster import LocalCluster
from raftkv.wire.protocol import Op, ReplyStatus
from raftkv.wire.watch_frames import WatchKind, message_kind
from raftkv_ext import codec
from raftkv_ext.codec import PROTOCOL_VERSION, ClientReply, ClientRequest, FrameDecoder, Handshake

pytestmark = pytest.mark.timeout(300)
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
# A guard against a hang, not a measurement: a reply takes milliseconds.
SOCKET_GUARD_S = 30.0

U64 = st.integers(0, 2**64 - 1)
SMALL = st.integers(0, 5)
REQUESTS = st.builds(
    ClientRequest,
    request_id=st.just(0),  # numbered per batch below
    op=st.sampled_from([int(op) for op in Op]) | st.integers(0, 255),
    key=st.binary(max_size=12) | st.sampled_from([b"k", b"k/1", b""]),
    value=st.binary(max_size=40),
    client_id=SMALL | U64,
    seq=SMALL | U64,
    prev_revision=st.integers(-1, 5) | st.integers(-(2**63), 2**63 - 1),
    limit=SMALL | U64,
    flags=st.integers(0, 15) | st.integers(0, 2**32 - 1),
    # Short timeouts only: a request may legitimately wait that long for its answer.
    timeout_ms=st.integers(0, 200),
    first_incomplete=SMALL | U64,
)


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[str, int]]:
    base = Path(tempfile.mkdtemp(prefix="rkv-fuzz-"))
    cluster = LocalCluster(base, 1, native=True)
    try:
        cluster.start()
        yield cluster.client_addr(1)
        assert cluster.nodes[1].running, cluster.describe()
        assert "Traceback" not in cluster.nodes[1].log_text()
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


def round_trip(address: tuple[str, int], requests: list[ClientRequest]) -> list[ClientReply]:
    """Every reply read until each request has had at least one (a watch streams more)."""
    with socket.create_connection(address, timeout=SOCKET_GUARD_S) as sock:
        sock.sendall(codec.encode(Handshake(PROTOCOL_VERSION, 0, 0)) + codec.encode_batch(requests))
        decoder = FrameDecoder()
        frames: list[object] = []
        waiting = {r.request_id for r in requests}
        while waiting or not frames:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {frames}"
            for frame in decoder.feed(chunk):
                frames.append(frame)
                if isinstance(frame, ClientReply):
                    waiting.discard(frame.request_id)
    hello, *replies = frames
    assert isinstance(hello, codec.HandshakeReply) and hello.accepted
    assert all(isinstance(r, ClientReply) for r in replies)
    return replies  # type: ignore[return-value]


@FUZZ
@given(batch=st.lists(REQUESTS, min_size=1, max_size=5))
def test_arbitrary_requests_are_answered(node: tuple[str, int], batch: list[ClientRequest]) -> None:
    requests = [
        ClientRequest(
            i + 1, r.op, r.key, r.value, r.client_id, r.seq, r.prev_revision, r.limit,
            r.flags, r.timeout_ms, r.first_incomplete,
        )
        for i, r in enumerate(batch)
    ]  # fmt: skip
    replies = round_trip(node, requests)
    watches = {r.request_id for r in requests if r.op == Op.WATCH}
    firsts: dict[int, ClientReply] = {}
    for reply in replies:
        assert reply.status in set(ReplyStatus)
        assert reply.status != ReplyStatus.INTERNAL, reply.body
        if reply.request_id in firsts:
            # Only a watch that started answers more than once.
            assert reply.request_id in watches, (reply, firsts[reply.request_id])
            assert firsts[reply.request_id].status == ReplyStatus.OK
        else:
            firsts[reply.request_id] = reply
    assert sorted(firsts) == [r.request_id for r in requests]
    for request_id in watches:
        first = firsts[request_id]
        if first.status == ReplyStatus.OK:
            assert message_kind(first.body) == WatchKind.START
    # Still serving: a plain write and read.
    (put,) = round_trip(node, [ClientRequest(1, Op.PUT, b"probe", b"v")])
    (get,) = round_trip(node, [ClientRequest(1, Op.GET, b"probe")])
    assert (put.status, get.status) == (ReplyStatus.OK, ReplyStatus.OK)
