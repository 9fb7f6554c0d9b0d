"""Hostile input on the sockets: whatever bytes a stranger sends to the peer port, the
native client port or the workers' Unix socket, the server answers at most a refusal,
closes that connection, raises nothing into its event loop, and keeps serving.

The servers run on one event loop in a background thread for the whole module; each
example is one blocking connection that sends its bytes and then half-closes, so the
server always has a reason to end the connection and no example waits on a timer.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftkv.node.ipc_server import IpcServer
from raftkv.node.transport import PeerTransport
from raftkv_ext import codec
from raftkv_ext.codec import (
    MAGIC,
    PROTOCOL_VERSION,
    ClientReply,
    ClientRequest,
    FrameDecoder,
    Handshake,
    HandshakeReply,
)
from raftkv_ext.errors import CodecError

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLUSTER = 41
HOST = "127.0.0.1"
# A guard against a hang, not a measurement: every example ends in milliseconds.
SOCKET_GUARD_S = 30.0
T = TypeVar("T")

FRAME_TYPES = sorted(codec.MESSAGE_TYPES)


class Servers:
    """A peer transport (node 1 of a cluster with node 2) and an IPC server, on a loop
    in a background thread; anything that escapes into the loop is collected."""

    def __init__(self, directory: Path) -> None:
        self.loop = uvloop.new_event_loop()
        self.escaped: list[str] = []
        self.loop.set_exception_handler(self._escaped)
        self.submitted: list[object] = []
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.socket_path = directory / "raft.sock"
        self.peer = self.run(self._start_peer())
        self.ipc = IpcServer(
            self.socket_path,
            self._submit,
            max_frame_size=1 << 16,
            cluster_id=CLUSTER,
            node_id=1,
            tcp_address=(HOST, 0),
        )
        self.run(self.ipc.start())

    def _escaped(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.escaped.append(f"{context.get('message')}: {context.get('exception')!r}")

    async def _start_peer(self) -> PeerTransport:
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            unused = probe.getsockname()[1]
        transport = PeerTransport(
            1,
            CLUSTER,
            HOST,
            0,
            # Node 2 runs nowhere: it exists so that a handshake can be accepted.
            {2: (HOST, unused)},
            lambda batch: None,
            lambda node: None,
            max_frame_size=1 << 16,
            backoff_initial=1.0,
            backoff_max=5.0,
        )
        await transport.start()
        return transport

    def _submit(self, request: ClientRequest, reply: Callable[[ClientReply], None]) -> None:
        self.submitted.append(request)
        if not isinstance(request, ClientRequest):
            self.escaped.append(f"submitted a {type(request).__name__}")
        reply(ClientReply(request.request_id, 0))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(SOCKET_GUARD_S)

    def stop(self) -> None:
        self.run(self.ipc.stop())
        self.run(self.peer.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(SOCKET_GUARD_S)
        self.loop.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    directory = Path(tempfile.mkdtemp(prefix="rkv-fuzz-"))
    running = Servers(directory)
    try:
        yield running
    finally:
        running.stop()
        shutil.rmtree(directory, ignore_errors=True)
    assert running.escaped == []


def exchange(sock: socket.socket, payload: bytes) -> list[object]:
    """Send ``payload``, half-close, and read what comes back until the server closes."""
    sock.settimeout(SOCKET_GUARD_S)
    received = bytearray()
    try:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, BrokenPipeError):
        pass  # an abort is a close too
    finally:
        sock.close()
    try:
        return list(FrameDecoder().feed(bytes(received)))
    except CodecError as exc:
        raise AssertionError(f"the server sent bytes that are not frames: {exc}") from exc


def tcp(port: int) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=SOCKET_GUARD_S)


def unix(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(SOCKET_GUARD_S)
    sock.connect(str(path))
    return sock


def converse(sock: socket.socket, payload: bytes, frames: int) -> list[object]:
    """Send ``payload`` and read until ``frames`` frames have come back."""
    decoder = FrameDecoder()
    out: list[object] = []
    with sock:
        sock.sendall(payload)
        while len(out) < frames:
            chunk = sock.recv(65536)
            assert chunk, f"closed after {out}"
            out += decoder.feed(chunk)
    return out


def still_serving(servers: Servers) -> None:
    hello = codec.encode(Handshake(PROTOCOL_VERSION, CLUSTER, 2))
    (reply,) = converse(tcp(servers.peer.bound_port), hello, 1)
    assert isinstance(reply, HandshakeReply) and reply.accepted
    assert servers.ipc.tcp_port is not None
    request = codec.encode(ClientRequest(9, 0, b"k"))
    for sock in (tcp(servers.ipc.tcp_port), unix(servers.socket_path)):
        replies = converse(sock, codec.encode(Handshake(PROTOCOL_VERSION, CLUSTER, 0)) + request, 2)
        assert [type(r) for r in replies] == [HandshakeReply, ClientReply]
    assert servers.escaped == []


def send_everywhere(servers: Servers, payload: bytes) -> None:
    peer_replies = exchange(tcp(servers.peer.bound_port), payload)
    # The peer acceptor answers a handshake and nothing else.
    assert all(isinstance(r, HandshakeReply) for r in peer_replies)
    assert servers.ipc.tcp_port is not None
    for sock in (tcp(servers.ipc.tcp_port), unix(servers.socket_path)):
        for reply in exchange(sock, payload):
            assert isinstance(reply, HandshakeReply | ClientReply)
    still_serving(servers)


def framed(type_id: int, body: bytes) -> bytes:
    return struct.pack("<IB", len(body) + 1, type_id) + body


@FUZZ
@given(payload=st.binary(max_size=200))
def test_random_bytes(servers: Servers, payload: bytes) -> None:
    send_everywhere(servers, payload)


@FUZZ
@given(type_id=st.sampled_from(FRAME_TYPES) | st.integers(0, 255), body=st.binary(max_size=100))
def test_random_frames(servers: Servers, type_id: int, body: bytes) -> None:
    send_everywhere(servers, framed(type_id, body))


@FUZZ
@given(
    version=st.sampled_from([PROTOCOL_VERSION, PROTOCOL_VERSION, 0, 2**32 - 1]),
    cluster=st.sampled_from([CLUSTER, CLUSTER, 0, 2**64 - 1]),
    node=st.sampled_from([0, 1, 2, 3, 2**64 - 1]),
    magic=st.sampled_from([MAGIC, MAGIC, 0]),
    after=st.binary(max_size=120),
)
def test_handshakes_followed_by_garbage(
    servers: Servers, version: int, cluster: int, node: int, magic: int, after: bytes
) -> None:
    hello = bytearray(codec.encode(Handshake(version, cluster, node)))
    hello[5:9] = struct.pack("<I", magic)
    send_everywhere(servers, bytes(hello) + after)
