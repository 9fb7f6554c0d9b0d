"""raftkv.wire.pipelined_connection: the handshake, and one connection carrying many requests.

The node side is the Raft process's own server (``native_fakes.serving``), or a bare
asyncio server where the test needs a node that misbehaves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest
from native_fakes import CLUSTER, NODE, ReplyFn, answer_ok, serving

from raftkv.client.http_client import RaftkvError
from raftkv.wire.pipelined_connection import (
    ConnectionLost,
    PipelinedConnection,
    open_native_connection,
    open_pipelined,
)
from raftkv.wire.protocol import Op, ReplyStatus
from raftkv_ext.codec import (
    PROTOCOL_VERSION,
    ClientReply,
    ClientRequest,
    FrameDecoder,
    Handshake,
    HandshakeReply,
    encode,
)

_T = TypeVar("_T")
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(scenario: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run(asyncio.wait_for(scenario, 30.0))


async def bare_server(handler: Handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    return server, port


async def open_to(port: int, cluster_id: int = 0) -> tuple[PipelinedConnection, int]:
    return await open_pipelined(
        "127.0.0.1", port, cluster_id=cluster_id, max_frame_size=1 << 20, timeout=5.0
    )


def test_the_helper_stops_right_after_the_handshake() -> None:
    async def scenario() -> list[object]:
        async with serving(answer_ok) as (_, port):
            reader, writer = await open_native_connection("127.0.0.1", port, cluster_id=CLUSTER)
            writer.write(encode(ClientRequest(77, Op.PUT, key=b"k", value=b"v")))
            decoder = FrameDecoder()
            frames: list[object] = []
            while not frames:
                frames.extend(decoder.feed(await reader.read(65536)))
            writer.close()
            return frames

    # The first frame read is the reply: the handshake reply was consumed, nothing more.
    assert run(scenario()) == [ClientReply(77, ReplyStatus.OK, 77, 1, 77)]


def test_a_refused_handshake_says_why() -> None:
    async def scenario() -> tuple[RaftkvError, RaftkvError]:
        async with serving(answer_ok) as (_, port):
            with pytest.raises(RaftkvError) as by_helper:
                await open_native_connection("127.0.0.1", port, cluster_id=CLUSTER + 1)
            with pytest.raises(RaftkvError) as pipelined:
                await open_to(port, cluster_id=CLUSTER + 1)
            return by_helper.value, pipelined.value

    for refused in run(scenario()):
        assert refused.message.endswith("refused the connection: cluster id 6, expected 5")


def test_a_node_that_hangs_up_during_the_handshake_is_a_connection_error() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)
        writer.close()

    async def scenario() -> None:
        server, port = await bare_server(hang_up)
        async with server:
            with pytest.raises(ConnectionError, match="during the handshake"):
                await open_native_connection("127.0.0.1", port)
            with pytest.raises(ConnectionError, match="lost"):
                await open_to(port)

    run(scenario())


def test_replies_in_any_order_reach_their_own_requests() -> None:
    def reverse(request: ClientRequest, reply: ReplyFn) -> None:
        # Later requests are answered first.
        asyncio.get_running_loop().call_later(
            0.001 * (200 - request.request_id),
            reply,
            ClientReply(request.request_id, ReplyStatus.OK, body=request.key),
        )

    async def scenario() -> tuple[int, list[ClientReply], int]:
        async with serving(reverse) as (_, port):
            connection, node_id = await open_to(port)
            futures = [
                connection.send(ClientRequest(i, Op.GET, key=b"key %d" % i)) for i in range(1, 151)
            ]
            in_flight = connection.in_flight
            replies = await asyncio.gather(*futures)
            connection.close("done")
            return node_id, replies, in_flight

    node_id, replies, in_flight = run(scenario())
    assert node_id == NODE and in_flight == 150
    assert [(r.request_id, r.body) for r in replies] == [(i, b"key %d" % i) for i in range(1, 151)]


def test_a_garbled_reply_fails_every_request_in_flight() -> None:
    async def garble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(len(encode(Handshake(PROTOCOL_VERSION, 0, 0))))
        writer.write(encode(HandshakeReply(True, 4)))
        await reader.read(1)  # a request came: answer it with garbage
        writer.write(b"\x05\x00\x00\x00\xfegarbage")
        await writer.drain()
        await reader.read()

    async def scenario() -> tuple[list[BaseException | ClientReply], str | None]:
        server, port = await bare_server(garble)
        async with server:
            connection, _ = await open_to(port)
            futures = [connection.send(ClientRequest(i, Op.GET, key=b"k")) for i in (1, 2)]
            outcomes = await asyncio.gather(*futures, return_exceptions=True)
            lost = connection.lost
            connection.close("done")
            return outcomes, lost

    outcomes, lost = run(scenario())
    assert lost is not None and "undecodable frame" in lost
    for outcome in outcomes:
        assert isinstance(outcome, ConnectionLost) and outcome.sent
