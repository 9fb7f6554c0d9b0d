"""The Raft process's Unix-socket server: handshake first, then pipelined requests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from raftkv.server.ipc_server import IpcServer
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
