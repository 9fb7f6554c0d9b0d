"""IpcClient: pipelining, coalesced writes, timeouts, connection loss and reconnection."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop
from fake_raft import FakeRaft

from raftkv.http.serving.ipc_client import MAX_BACKOFF_S, IpcClient, IpcTimeout, IpcUnavailable
from raftkv.wire.protocol import Op, ReplyStatus, decode_key_value
from raftkv_ext.codec import PROTOCOL_VERSION, ClientReply, ClientRequest, Handshake, encode

T = TypeVar("T")
Runner = Callable[[Callable[[], Awaitable[T]]], T]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner[Any]:
    """Runs a scenario on the stock event loop and on uvloop (which the worker uses)."""
    loop_factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def runner(make: Callable[[], Awaitable[Any]]) -> Any:
        async def main() -> Any:
            return await make()

        with asyncio.Runner(loop_factory=loop_factory) as loop_runner:
            return loop_runner.run(main())

    return runner


def put_request(client: IpcClient, key: bytes, value: bytes, seq: int) -> ClientRequest:
    return ClientRequest(
        client.next_request_id(), Op.PUT, key, value, client_id=77, seq=seq, first_incomplete=1
    )


def test_request_and_reply(run: Runner[Any], fake: FakeRaft) -> None:
    async def scenario() -> tuple[ClientReply, ClientReply]:
        client = IpcClient(fake.path, connect_timeout=1.0)
        try:
            put = await client.request(put_request(client, b"k", b"v", 1), 2.0)
            get = await client.request(ClientRequest(client.next_request_id(), Op.GET, b"k"), 2.0)
            return put, get
        finally:
            await client.close()

    put, get = run(scenario)
    assert (put.status, put.index, put.term, put.revision) == (ReplyStatus.OK, 1, 3, 1)
    assert get.status == ReplyStatus.OK
    assert decode_key_value(b"k", get.body).value == b"v"
    assert [r.request_id for r in fake.requests] == [1, 2]


def test_pipelined_requests_coalesce_and_match_out_of_order_replies(
    run: Runner[Any], fake: FakeRaft
) -> None:
    count = 50
    fake.hold = count  # nothing is answered until all fifty are in; then in reverse order

    async def scenario() -> tuple[list[ClientReply], list[ClientRequest], int]:
        client = IpcClient(fake.path)
        await client.connect()
        requests = [put_request(client, f"k{i}".encode(), b"v", i + 1) for i in range(count)]
        replies = await asyncio.gather(*(client.request(r, 5.0) for r in requests))
        in_flight = client.in_flight
        await client.close()
        return replies, requests, in_flight

    replies, requests, in_flight = run(scenario)
    assert [r.request_id for r in replies] == [r.request_id for r in requests]
    # The fake applied them in the order they arrived; each reply carries its own index.
    assert sorted(r.index for r in replies) == list(range(1, count + 1))
    for request, reply in zip(requests, replies, strict=True):
        assert fake.data[request.key].mod_revision == reply.revision
    # Issued in one loop turn: one write, read by the fake in one piece.
    assert fake.frames_per_read == [count]
    assert fake.connections == 1
    assert in_flight == 0


def test_timeout_then_late_reply_is_ignored(run: Runner[Any], fake: FakeRaft) -> None:
    fake.delay = 0.3

    async def scenario() -> tuple[IpcTimeout, ClientReply]:
        client = IpcClient(fake.path)
        try:
            with pytest.raises(IpcTimeout) as caught:
                await client.request(put_request(client, b"slow", b"v", 1), 0.05)
            assert client.in_flight == 0
            await asyncio.sleep(0.4)  # the late reply arrives and is dropped
            fake.delay = 0.0
            reply = await client.request(put_request(client, b"fast", b"v", 2), 2.0)
            return caught.value, reply
        finally:
            await client.close()

    error, reply = run(scenario)
    assert error.sent is True
    assert "no reply from the Raft process within 0.05 s" in str(error)
    assert reply.status == ReplyStatus.OK
    assert reply.request_id == 2
    assert fake.connections == 1


def test_each_request_times_out_at_its_own_deadline(run: Runner[Any], fake: FakeRaft) -> None:
    """Deadlines share one timer while they come in order; a shorter timeout behind a
    longer one, and answered requests in the queue, change nothing."""
    fake.delay = 0.5

    async def scenario() -> list[tuple[str, float]]:
        client = IpcClient(fake.path)
        await client.connect()
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcomes: list[tuple[str, float]] = []

        async def one(seq: int, timeout: float) -> None:
            try:
                await client.request(put_request(client, b"k%d" % seq, b"v", seq), timeout)
                outcomes.append((f"answered {timeout:g}", loop.time() - started))
            except IpcTimeout:
                outcomes.append((f"timed out {timeout:g}", loop.time() - started))

        try:
            await asyncio.gather(one(1, 0.3), one(2, 2.0), one(3, 0.1), one(4, 0.2))
        finally:
            await client.close()
        return outcomes

    outcomes = run(scenario)
    assert [what for what, _ in outcomes] == [
        "timed out 0.1",
        "timed out 0.2",
        "timed out 0.3",
        "answered 2",
    ]
    for what, elapsed in outcomes[:3]:
        # Not early (uvloop's clock counts whole milliseconds).
        assert elapsed >= float(what.split()[-1]) - 0.002, outcomes


def test_connection_loss_fails_everything_in_flight_then_reconnects(
    run: Runner[Any], fake: FakeRaft
) -> None:
    fake.silent = True

    async def scenario() -> tuple[list[BaseException | ClientReply], ClientReply, int]:
        client = IpcClient(fake.path)
        try:
            await client.connect()
            tasks = [
                asyncio.ensure_future(client.request(put_request(client, b"k", b"v", i), 5.0))
                for i in range(1, 6)
            ]
            while len(fake.requests) < 5:
                await asyncio.sleep(0.01)
            started = time.monotonic()
            fake.drop_connections()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            assert time.monotonic() - started < 1.0  # failed at once, not by timeout
            assert not client.connected
            fake.silent = False
            reply = await client.request(put_request(client, b"k", b"v", 6), 2.0)
            return outcomes, reply, client.connections_made
        finally:
            await client.close()

    outcomes, reply, connections_made = run(scenario)
    assert len(outcomes) == 5
    for outcome in outcomes:
        assert isinstance(outcome, IpcUnavailable)
        assert not isinstance(outcome, IpcTimeout)
        assert outcome.sent is True
        assert "connection to the Raft process lost" in str(outcome)
    assert reply.status == ReplyStatus.OK
    assert connections_made == 2
    assert fake.connections == 2


def test_unreachable_server_backs_off_then_recovers(run: Runner[Any], fake: FakeRaft) -> None:
    fake.stop()

    async def scenario() -> None:
        client = IpcClient(fake.path)
        try:
            with pytest.raises(IpcUnavailable) as first:
                await client.request(put_request(client, b"k", b"v", 1), 1.0)
            assert first.value.sent is False
            assert fake.path in str(first.value)
            # Inside the backoff window the request fails at once without a new attempt.
            with pytest.raises(IpcUnavailable) as second:
                await client.request(put_request(client, b"k", b"v", 2), 1.0)
            assert "next connection attempt in" in str(second.value)
            fake.start()
            deadline = time.monotonic() + 3 * MAX_BACKOFF_S
            while True:
                try:
                    reply = await client.request(put_request(client, b"k", b"v", 3), 1.0)
                    break
                except IpcUnavailable:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
            assert reply.status == ReplyStatus.OK
            assert client.connected
        finally:
            await client.close()

    run(scenario)
    assert fake.connections == 1


def test_request_while_requests_wait_unsent_on_a_lost_connection(
    run: Runner[Any], fake: FakeRaft
) -> None:
    """A request still in the write buffer when the connection closes was never sent."""

    async def scenario() -> IpcUnavailable:
        client = IpcClient(fake.path)
        await client.connect()
        task = asyncio.ensure_future(client.request(put_request(client, b"k", b"v", 1), 2.0))
        await asyncio.sleep(0)  # the request is queued; its write is due at the end of turn
        await client.close()
        with pytest.raises(IpcUnavailable) as caught:
            await task
        return caught.value

    error = run(scenario)
    assert error.sent is False
    assert "shutting down" in str(error)
    assert fake.requests == []


async def _garbage_server(path: str, payload: bytes) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Wait past the handshake for the first byte of the first request.
        handshake_size = len(encode(Handshake(PROTOCOL_VERSION, 0, 0)))
        await reader.readexactly(handshake_size + 1)
        writer.write(payload)
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    return await asyncio.start_unix_server(handle, path)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"\x05\x00\x00\x00\xffjunk", "undecodable frame"),
        # A well-formed frame of the wrong kind: a Handshake, which only workers send.
        (None, "unexpected Handshake frame"),
        # The Raft process refusing the handshake, with its reason.
        (b"refused", "refused us: cluster id 7, expected 9"),
    ],
)
def test_bad_frames_close_the_connection(
    run: Runner[Any], socket_dir: Path, payload: bytes | None, fragment: str
) -> None:
    from raftkv_ext.codec import Handshake, HandshakeReply, encode

    if payload is None:
        data = encode(Handshake(1, 0, 1))
    elif payload == b"refused":
        data = encode(HandshakeReply(False, 1, "cluster id 7, expected 9"))
    else:
        data = payload
    path = str(socket_dir / "garbage.sock")

    async def scenario() -> IpcUnavailable:
        server = await _garbage_server(path, data)
        client = IpcClient(path)
        try:
            with pytest.raises(IpcUnavailable) as caught:
                await client.request(ClientRequest(client.next_request_id(), Op.GET, b"k"), 2.0)
            assert not client.connected
            return caught.value
        finally:
            await client.close()
            server.close()

    error = run(scenario)
    assert fragment in str(error)
    assert error.sent is True


def test_oversized_request_is_refused_locally(run: Runner[Any], fake: FakeRaft) -> None:
    async def scenario() -> None:
        client = IpcClient(fake.path, max_frame_size=1024)
        try:
            with pytest.raises(ValueError, match="exceeds the frame limit of 1024 bytes"):
                await client.request(put_request(client, b"k", b"v" * 1000, 1), 1.0)
        finally:
            await client.close()

    run(scenario)
    assert fake.requests == []


def test_duplicate_request_id_in_flight_is_refused(run: Runner[Any], fake: FakeRaft) -> None:
    fake.silent = True

    async def scenario() -> None:
        client = IpcClient(fake.path)
        try:
            request = put_request(client, b"k", b"v", 1)
            first = asyncio.ensure_future(client.request(request, 1.0))
            await asyncio.sleep(0.01)
            with pytest.raises(ValueError, match="already in flight"):
                await client.request(request, 1.0)
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await first
            assert client.in_flight == 0
        finally:
            await client.close()

    run(scenario)


def test_closed_client_refuses_requests(run: Runner[Any], fake: FakeRaft) -> None:
    async def scenario() -> None:
        client = IpcClient(fake.path)
        await client.connect()
        await client.close()
        with pytest.raises(IpcUnavailable, match="closed"):
            await client.request(put_request(client, b"k", b"v", 1), 1.0)

    run(scenario)
