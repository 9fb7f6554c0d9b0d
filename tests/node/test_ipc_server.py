"""The Raft process's client-frame server, on its Unix socket (the workers) and its TCP port
(native clients): handshake first, then pipelined requests."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from raftkv.node import ipc_server
from raftkv.node.ipc_server import IpcServer
from raftkv.wire.protocol import ReplyStatus
from raftkv_ext.codec import (
    PROTOCOL_VERSION,
    ClientReply,
    ClientRequest,
    FrameDecoder,
    Handshake,
    HandshakeReply,
    encode,
    encode_batch,
)

CLUSTER = 77

Submit = Callable[[ClientRequest, Callable[[ClientReply], None]], None]


def echo_submit(request: ClientRequest, reply: Callable[[ClientReply], None]) -> None:
    # Answer in reverse order of arrival within a turn, to show replies are matched by id.
    asyncio.get_running_loop().call_later(
        0.001 * (100 - request.request_id % 100),
        reply,
        ClientReply(request.request_id, 0, body=request.key),
    )


async def _exchange(path: Path, payload: bytes, expect_frames: int) -> tuple[list[object], bool]:
    """Send ``payload``; read until ``expect_frames`` frames came or the server hung up."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(payload)
    decoder = FrameDecoder()
    frames: list[object] = []
    closed = False
    try:
        async with asyncio.timeout(5):
            while len(frames) < expect_frames:
                data = await reader.read(65536)
                if not data:
                    closed = True
                    break
                frames.extend(decoder.feed(data))
    finally:
        writer.close()
    return frames, closed


def run_with_server(tmp_path: Path, scenario: Callable[[Path], object]) -> object:
    async def main() -> object:
        server = IpcServer(
            tmp_path / "raft.sock",
            echo_submit,
            max_frame_size=1 << 20,
            cluster_id=CLUSTER,
            node_id=3,
        )
        await server.start()
        try:
            return await scenario(server.path)  # type: ignore[misc]
        finally:
            await server.stop()

    return asyncio.run(main())


def test_pipelined_requests_after_a_handshake(tmp_path: Path) -> None:
    requests = [ClientRequest(i, 1, key=b"k%d" % i) for i in range(1, 51)]
    payload = encode(Handshake(PROTOCOL_VERSION, CLUSTER, 3)) + encode_batch(requests)

    async def scenario(path: Path) -> list[object]:
        frames, _ = await _exchange(path, payload, 51)
        return frames

    frames = run_with_server(tmp_path, scenario)
    assert isinstance(frames, list)
    assert frames[0] == HandshakeReply(True, 3)
    replies = {f.request_id: f.body for f in frames[1:] if isinstance(f, ClientReply)}
    assert replies == {i: b"k%d" % i for i in range(1, 51)}


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (Handshake(PROTOCOL_VERSION, CLUSTER + 1, 3), "cluster id"),
        (Handshake(PROTOCOL_VERSION + 1, CLUSTER, 3), "protocol version"),
        (ClientRequest(1, 1, key=b"k"), "expected a handshake"),
    ],
)
def test_a_bad_greeting_is_refused_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, first: object, reason: str
) -> None:
    async def scenario(path: Path) -> tuple[list[object], bool]:
        return await _exchange(path, encode(first), 1)  # type: ignore[arg-type]

    with caplog.at_level(logging.WARNING, logger="raftkv.ipc"):
        result = run_with_server(tmp_path, scenario)
    assert isinstance(result, tuple)
    frames, _ = result
    assert len(frames) == 1 and isinstance(frames[0], HandshakeReply)
    assert not frames[0].accepted and reason in frames[0].reason
    assert reason in caplog.text


def test_garbage_after_the_handshake_closes_only_that_connection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hello = encode(Handshake(PROTOCOL_VERSION, CLUSTER, 3))

    async def scenario(path: Path) -> tuple[bool, list[object]]:
        # Read until the server hangs up (it sends nothing more than a handshake reply).
        _, closed = await _exchange(path, hello + b"\x05\x00\x00\x00\xfegarbage", 10)
        good, _ = await _exchange(path, hello + encode(ClientRequest(9, 1, key=b"ok")), 2)
        return closed, good

    with caplog.at_level(logging.WARNING, logger="raftkv.ipc"):
        result = run_with_server(tmp_path, scenario)
    assert isinstance(result, tuple)
    closed, good = result
    assert closed
    assert "bad frame" in caplog.text
    assert good[1] == ClientReply(9, 0, body=b"ok")


# -- the TCP port for native clients (kvnode --client-addr) ---------------------------------


def tcp_server(
    tmp_path: Path,
    submit: Submit = echo_submit,
    check: Callable[[ClientRequest], str | None] | None = None,
    address: tuple[str, int] = ("127.0.0.1", 0),
) -> IpcServer:
    return IpcServer(
        tmp_path / "raft.sock",
        submit,
        max_frame_size=1 << 20,
        cluster_id=CLUSTER,
        node_id=3,
        tcp_address=address,
        tcp_check=check,
    )


async def _tcp_exchange(port: int, payload: bytes, expect_frames: int) -> tuple[list[object], bool]:
    """``_exchange`` over TCP: send ``payload``, read ``expect_frames`` frames or to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    decoder = FrameDecoder()
    frames: list[object] = []
    closed = False
    try:
        async with asyncio.timeout(5):
            while len(frames) < expect_frames:
                data = await reader.read(65536)
                if not data:
                    closed = True
                    break
                frames.extend(decoder.feed(data))
    finally:
        writer.close()
    return frames, closed


def test_the_tcp_port_serves_the_same_protocol_with_nodelay(tmp_path: Path) -> None:
    requests = [ClientRequest(i, 1, key=b"k%d" % i) for i in range(1, 201)]
    payload = encode(Handshake(PROTOCOL_VERSION, CLUSTER, 0)) + encode_batch(requests)

    async def main() -> tuple[list[object], bool]:
        server = tcp_server(tmp_path)
        await server.start()
        try:
            assert server.tcp_port is not None
            reader, writer = await asyncio.open_connection("127.0.0.1", server.tcp_port)
            writer.write(payload)
            decoder = FrameDecoder()
            frames: list[object] = []
            async with asyncio.timeout(5):
                while len(frames) < 201:
                    frames.extend(decoder.feed(await reader.read(65536)))
            # The server's side of the connection has Nagle turned off.
            (connection,) = server.connections
            sock = connection._transport.get_extra_info("socket")  # type: ignore[union-attr]
            nodelay = bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()
            return frames, nodelay
        finally:
            await server.stop()

    frames, nodelay = asyncio.run(main())
    assert frames[0] == HandshakeReply(True, 3)
    replies = {f.request_id: f.body for f in frames[1:] if isinstance(f, ClientReply)}
    assert replies == {i: b"k%d" % i for i in range(1, 201)}
    assert nodelay


def test_tcp_garbage_closes_only_that_connection_and_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    hello = encode(Handshake(PROTOCOL_VERSION, CLUSTER, 0))

    async def main() -> tuple[bool, bool, object, object]:
        server = tcp_server(tmp_path)
        await server.start()
        try:
            port = server.tcp_port
            assert port is not None
            # A client that stays connected throughout.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(hello + encode(ClientRequest(1, 1, key=b"before")))
            decoder = FrameDecoder()
            frames: list[object] = []
            while len(frames) < 2:
                frames.extend(decoder.feed(await reader.read(65536)))
            # Garbage instead of a handshake, and garbage after one: both hung up on.
            _, closed_at_once = await _tcp_exchange(port, b"\x05\x00\x00\x00\xfegarbage", 10)
            _, closed_later = await _tcp_exchange(port, hello + b"\x00\x00\x00\x00", 10)
            # The first client is still served.
            writer.write(encode(ClientRequest(2, 1, key=b"after")))
            while len(frames) < 3:
                frames.extend(decoder.feed(await reader.read(65536)))
            writer.close()
            return closed_at_once, closed_later, frames[1], frames[2]
        finally:
            await server.stop()

    with caplog.at_level(logging.WARNING, logger="raftkv.ipc"):
        closed_at_once, closed_later, before, after = asyncio.run(main())
    assert closed_at_once and closed_later
    assert before == ClientReply(1, 0, body=b"before")
    assert after == ClientReply(2, 0, body=b"after")
    assert "closing client connection from 127.0.0.1:" in caplog.text
    assert "bad frame: unknown message type 254" in caplog.text
    assert "bad frame: zero-length frame" in caplog.text


def test_a_tcp_client_of_another_cluster_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> tuple[list[object], bool]:
        server = tcp_server(tmp_path)
        await server.start()
        try:
            assert server.tcp_port is not None
            hello = encode(Handshake(PROTOCOL_VERSION, CLUSTER + 1, 0))
            return await _tcp_exchange(server.tcp_port, hello, 2)
        finally:
            await server.stop()

    with caplog.at_level(logging.WARNING, logger="raftkv.ipc"):
        frames, closed = asyncio.run(main())
    assert closed
    assert len(frames) == 1 and isinstance(frames[0], HandshakeReply)
    assert not frames[0].accepted and "cluster id" in frames[0].reason
    assert "refusing client connection from 127.0.0.1:" in caplog.text


def test_tcp_requests_pass_the_check_and_unix_ones_do_not(tmp_path: Path) -> None:
    submitted: list[bytes] = []

    def submit(request: ClientRequest, reply: Callable[[ClientReply], None]) -> None:
        submitted.append(request.key)
        reply(ClientReply(request.request_id, 0, body=request.key))

    def check(request: ClientRequest) -> str | None:
        return "too long" if len(request.key) > 3 else None

    async def main() -> tuple[list[object], list[object]]:
        server = tcp_server(tmp_path, submit, check)
        await server.start()
        try:
            assert server.tcp_port is not None
            payload = encode(Handshake(PROTOCOL_VERSION, CLUSTER, 0)) + encode_batch(
                [ClientRequest(1, 1, key=b"ok"), ClientRequest(2, 1, key=b"long")]
            )
            over_tcp, _ = await _tcp_exchange(server.tcp_port, payload, 3)
            over_unix, _ = await _exchange(server.path, payload, 3)
            return over_tcp, over_unix
        finally:
            await server.stop()

    over_tcp, over_unix = asyncio.run(main())
    assert sorted(over_tcp[1:], key=lambda reply: reply.request_id) == [  # type: ignore[attr-defined]
        ClientReply(1, 0, body=b"ok"),
        ClientReply(2, ReplyStatus.BAD_REQUEST, body=b"too long"),
    ]
    assert ClientReply(2, 0, body=b"long") in over_unix
    assert submitted == [b"ok", b"ok", b"long"]


def test_a_connection_with_too_many_requests_waiting_is_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ipc_server, "MAX_IN_FLIGHT", 4)
    held: list[tuple[ClientRequest, Callable[[ClientReply], None]]] = []

    def hold(request: ClientRequest, reply: Callable[[ClientReply], None]) -> None:
        held.append((request, reply))

    async def main() -> tuple[bool, bool, int]:
        server = tcp_server(tmp_path, hold)
        await server.start()
        try:
            assert server.tcp_port is not None
            reader, writer = await asyncio.open_connection("127.0.0.1", server.tcp_port)
            writer.write(
                encode(Handshake(PROTOCOL_VERSION, CLUSTER, 0))
                + encode_batch([ClientRequest(i, 1, key=b"k") for i in range(1, 6)])
            )
            async with asyncio.timeout(5):
                while len(held) < 5:
                    await asyncio.sleep(0.01)
            (connection,) = server.connections
            transport = connection._transport
            assert transport is not None
            paused = not transport.is_reading()
            for request, reply in held[:2]:
                reply(ClientReply(request.request_id, 0))
            resumed = transport.is_reading()
            decoder = FrameDecoder()
            frames: list[object] = []
            async with asyncio.timeout(5):
                while len(frames) < 3:
                    frames.extend(decoder.feed(await reader.read(65536)))
            writer.close()
            return paused, resumed, len(frames)
        finally:
            await server.stop()

    paused, resumed, replies = asyncio.run(main())
    assert paused, "reading goes on with MAX_IN_FLIGHT requests waiting"
    assert resumed, "reading did not resume once replies drained"
    assert replies == 3  # the handshake reply and the two answers


def test_a_tcp_address_in_use_is_a_clear_error(tmp_path: Path) -> None:
    async def main(port: int) -> tuple[str, bool]:
        server = tcp_server(tmp_path, address=("127.0.0.1", port))
        with pytest.raises(OSError) as failure:
            await server.start()
        return str(failure.value), server.path.exists()

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        message, unix_socket_left = asyncio.run(main(port))
    assert f"cannot listen for native clients on 127.0.0.1:{port}" in message
    assert not unix_socket_left
