"""The peer transport over real TCP on loopback, under both asyncio's loop and uvloop."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest
import uvloop

from raftkv.node.transport import PeerTransport
from raftkv_ext.codec import (
    PROTOCOL_VERSION,
    AppendEntries,
    AppendEntriesResponse,
    ClientRequest,
    Handshake,
    HandshakeReply,
    InstallSnapshot,
    InstallSnapshotResponse,
    Propose,
    ProposeResponse,
    ReadIndex,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
    decode,
    encode,
    encode_batch,
)
from raftkv_ext.entry import Entry

if TYPE_CHECKING:
    from raftkv_ext.codec import Message, RaftMessage

pytestmark = pytest.mark.timeout(60)

CLUSTER = 7
HOST = "127.0.0.1"
# Fast retries so that reconnect tests take milliseconds, not seconds.
FAST = {"backoff_initial": 0.01, "backoff_max": 0.2, "connect_timeout": 1.0}

Runner = Callable[..., None]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run an async test body on a fresh loop of the parametrized kind, with a deadline."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(body: Callable[[], Awaitable[None]], timeout: float = 20.0) -> None:
        async def main() -> None:
            async with asyncio.timeout(timeout):
                await body()

        with asyncio.Runner(loop_factory=factory) as r:
            r.run(main())

    return runner


@pytest.fixture(autouse=True)
def _capture_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.INFO)
    yield
    # The event loop reports what escaped the transport (an exception in a callback, a
    # task destroyed while pending, an unretrieved future) through the asyncio logger.
    escaped = [
        r.getMessage()
        for r in caplog.get_records("call")
        if r.name == "asyncio" and r.levelno >= logging.ERROR
    ]
    assert escaped == []


async def eventually(
    predicate: Callable[[], bool], what: str, timeout: float = 5.0, interval: float = 0.005
) -> None:
    """Poll ``predicate`` until it holds, failing after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


def free_port() -> int:
    """A port nothing listens on right now (for peers that start later)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Node:
    """A transport plus everything its callbacks reported."""

    def __init__(
        self,
        node_id: int,
        peers: Mapping[int, tuple[str, int]] | None = None,
        *,
        cluster_id: int = CLUSTER,
        port: int = 0,
        **options: Any,
    ) -> None:
        self.id = node_id
        self.received: list[RaftMessage] = []
        self.batches: list[list[RaftMessage]] = []
        self.unreachable: list[int] = []
        self.log = logging.getLogger(f"test.transport.node{node_id}")
        settings: dict[str, Any] = {**FAST, **options}
        self.transport = PeerTransport(
            node_id,
            cluster_id,
            HOST,
            port,
            peers or {},
            self._on_messages,
            self.unreachable.append,
            logger=self.log,
            **settings,
        )

    def _on_messages(self, batch: list[RaftMessage]) -> None:
        self.batches.append(batch)
        self.received.extend(batch)

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.transport.bound_port)

    def from_(self, sender: int) -> list[RaftMessage]:
        return [m for m in self.received if m.sender == sender]


async def start_cluster(*ids: int, **options: Any) -> dict[int, Node]:
    """Start one node per id and tell each about all the others."""
    nodes = {i: Node(i, **options) for i in ids}
    for node in nodes.values():
        await node.transport.start()
    for node in nodes.values():
        node.transport.update_peers({i: n.address for i, n in nodes.items()})
    return nodes


async def stop_all(nodes: Mapping[int, Node] | list[Node]) -> None:
    for node in nodes.values() if isinstance(nodes, Mapping) else nodes:
        await node.transport.stop()


def conversation(sender: int, recipient: int, start: int, count: int) -> list[RaftMessage]:
    """``count`` messages of every kind, numbered from ``start`` so order is checkable."""
    out: list[RaftMessage] = []
    for i in range(start, start + count):
        kind = i % 11
        if kind == 0:
            entries = [Entry(i + k, 3, 0, f"cmd-{i}-{k}".encode()) for k in range(1, 4)]
            out.append(AppendEntries(sender, recipient, 3, i, 3, i, entries, round=i))
        elif kind == 1:
            out.append(AppendEntriesResponse(sender, recipient, 3, True, i, round=i))
        elif kind == 2:
            out.append(RequestVote(sender, recipient, i, i, 2, pre_vote=bool(i % 2)))
        elif kind == 3:
            out.append(RequestVoteResponse(sender, recipient, i, granted=True))
        elif kind == 4:
            out.append(InstallSnapshot(sender, recipient, 3, i, 2, b"cfg", 0, 10, b"x" * 10, True))
        elif kind == 5:
            out.append(InstallSnapshotResponse(sender, recipient, 3, i, 10, True, done=True))
        elif kind == 6:
            out.append(TimeoutNow(sender, recipient, i))
        elif kind == 7:
            out.append(ReadIndex(sender, recipient, 3, f"ctx{i}".encode()))
        elif kind == 8:
            out.append(ReadIndexResponse(sender, recipient, 3, f"ctx{i}".encode(), i, True))
        elif kind == 9:
            out.append(Propose(sender, recipient, 3, i, [b"a", b"bb"]))
        else:
            out.append(ProposeResponse(sender, recipient, 3, i, i, True))
    return out


# -- raw sockets for misbehaving peers ----------------------------------------------------


async def read_frame(reader: asyncio.StreamReader) -> Message:
    header = await reader.readexactly(4)
    (length,) = struct.unpack("<I", header)
    return decode(header + await reader.readexactly(length))


async def raw_handshake(
    port: int, node_id: int, *, cluster_id: int = CLUSTER, version: int = PROTOCOL_VERSION
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, HandshakeReply]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(encode(Handshake(version, cluster_id, node_id)))
    reply = await read_frame(reader)
    assert isinstance(reply, HandshakeReply)
    return reader, writer, reply


async def assert_closed_by_peer(reader: asyncio.StreamReader, timeout: float = 3.0) -> None:
    """The other end closes (or resets) the connection, sending nothing more."""
    try:
        rest = await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return
    assert rest == b""


def local_address(writer: asyncio.StreamWriter) -> str:
    host, port = writer.get_extra_info("sockname")[:2]
    return f"{host}:{port}"


def warnings_of(caplog: pytest.LogCaptureFixture, node: Node) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == node.log.name and r.levelno >= logging.WARNING
    ]


# -- tests -------------------------------------------------------------------------------


def test_three_nodes_exchange_every_message_kind_in_order(run: Runner) -> None:
    async def body() -> None:
        nodes = await start_cluster(1, 2, 3)
        try:
            expected: dict[tuple[int, int], list[RaftMessage]] = {}
            rounds, per_round = 20, 11
            for r in range(rounds):
                for sender in nodes.values():
                    batch: list[RaftMessage] = []
                    for recipient in nodes:
                        if recipient == sender.id:
                            continue
                        msgs = conversation(sender.id, recipient, r * per_round, per_round)
                        expected.setdefault((sender.id, recipient), []).extend(msgs)
                        batch.extend(msgs)
                    # One call carries messages for both peers: the transport splits them.
                    sender.transport.send(batch)
                if r % 5 == 0:
                    await asyncio.sleep(0)
            # Frames far above the handshake's small limit still pass once authenticated.
            for sender in nodes.values():
                for recipient in nodes:
                    if recipient != sender.id:
                        big = InstallSnapshot(
                            sender.id, recipient, 3, 99, 3, b"c", 0, 1 << 20, b"b" * (1 << 20), True
                        )
                        expected[(sender.id, recipient)].append(big)
                        sender.transport.send([big])
            total = rounds * per_round + 1
            await eventually(
                lambda: all(len(n.received) == 2 * total for n in nodes.values()),
                "every message to arrive",
            )
            for node in nodes.values():
                for conn in node.transport._connections:
                    assert conn.transport is not None
                    sock = conn.transport.get_extra_info("socket")
                    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            for (sender_id, recipient_id), msgs in expected.items():
                assert nodes[recipient_id].from_(sender_id) == msgs
            for node in nodes.values():
                stats = node.transport.stats()
                assert sorted(stats) == sorted(set(nodes) - {node.id})
                for peer_id, s in stats.items():
                    assert s.connected and s.inbound_connected
                    assert s.messages_sent == total
                    assert s.messages_received == total
                    assert s.bytes_sent == nodes[peer_id].transport.stats()[node.id].bytes_received
                    assert s.messages_dropped == 0 and s.buffered_bytes == 0
                assert node.unreachable == []
        finally:
            await stop_all(nodes)

    run(body)


class WriteSpy:
    """Stands in for an asyncio transport and records every write()."""

    def __init__(self, real: asyncio.Transport, log: list[bytes]) -> None:
        self._real, self._log = real, log

    def write(self, data: bytes) -> None:
        self._log.append(data)
        self._real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_one_send_is_one_write_per_peer(run: Runner) -> None:
    async def body() -> None:
        nodes = await start_cluster(1, 2, 3)
        try:
            a = nodes[1]
            a.transport.send(conversation(1, 2, 0, 1) + conversation(1, 3, 0, 1))
            await eventually(
                lambda: all(a.transport.stats()[p].connected for p in (2, 3)), "links up"
            )
            writes: dict[int, list[bytes]] = {2: [], 3: []}
            links = a.transport._links
            for peer_id in (2, 3):
                conn = links[peer_id].connection
                assert conn is not None and conn.transport is not None
                conn.transport = WriteSpy(conn.transport, writes[peer_id])  # type: ignore[assignment]
            to_2 = conversation(1, 2, 1, 30)
            to_3 = conversation(1, 3, 1, 12)
            mixed = [m for pair in zip(to_2, to_3, strict=False) for m in pair] + to_2[12:]
            a.transport.send(mixed)
            assert writes == {2: [encode_batch(to_2)], 3: [encode_batch(to_3)]}
            await eventually(
                lambda: len(nodes[2].received) == 31 and len(nodes[3].received) == 13,
                "delivery",
            )
            assert nodes[2].received[1:] == to_2 and nodes[3].received[1:] == to_3
        finally:
            await stop_all(nodes)

    run(body)


def test_frames_from_one_read_are_delivered_in_one_call(run: Runner) -> None:
    async def body() -> None:
        b = Node(2, {9: (HOST, free_port())})
        await b.transport.start()
        try:
            _reader, writer, reply = await raw_handshake(b.transport.bound_port, 9)
            assert reply.accepted and reply.node_id == 2
            msgs = conversation(9, 2, 0, 5)
            writer.write(encode_batch(msgs))
            await eventually(lambda: len(b.received) == 5, "delivery")
            assert b.batches == [msgs]
            writer.close()
        finally:
            await b.transport.stop()

    run(body)


def test_peer_that_starts_later_and_restarts_is_reached(run: Runner) -> None:
    async def body() -> None:
        port_b = free_port()
        a = Node(1, {2: (HOST, port_b)})
        await a.transport.start()
        nodes = [a]
        try:
            early = conversation(1, 2, 0, 5)
            a.transport.send(early)
            # Nobody listens yet: the dial fails, is reported, and the messages wait.
            await eventually(lambda: 2 in a.unreachable, "the failed dial to be reported")
            stats = a.transport.stats()[2]
            assert not stats.connected and stats.dial_failures >= 1
            assert stats.buffered_bytes == len(encode_batch(early))

            b = Node(2, {1: a.address}, port=port_b)
            await b.transport.start()
            nodes.append(b)
            await eventually(lambda: len(b.received) == 5, "buffered messages after start")
            assert b.received == early
            b.transport.send(conversation(2, 1, 0, 3))
            await eventually(lambda: len(a.received) == 3, "the reverse direction")

            # Restart b on the same port: a's link breaks, is reported once, and comes back.
            await b.transport.stop()
            nodes.remove(b)
            await eventually(
                lambda: not a.transport.stats()[2].connected, "a to notice the broken link"
            )
            a.unreachable.clear()
            later = conversation(1, 2, 5, 7)
            a.transport.send(later)
            b2 = Node(2, {1: a.address}, port=port_b)
            await b2.transport.start()
            nodes.append(b2)
            await eventually(lambda: len(b2.received) == 7, "delivery to the restarted peer")
            assert b2.received == later
            assert a.transport.stats()[2].reconnects >= 1
            b2.transport.send(conversation(2, 1, 3, 2))
            await eventually(lambda: len(a.received) == 5, "the restarted peer's messages")
            assert a.received[3:] == conversation(2, 1, 3, 2)
        finally:
            await stop_all(nodes)

    run(body)


def test_broken_connection_is_reported_once(run: Runner) -> None:
    async def body() -> None:
        nodes = await start_cluster(1, 2, backoff_initial=0.5, backoff_max=2.0)
        a, b = nodes[1], nodes[2]
        try:
            a.transport.send(conversation(1, 2, 0, 1))
            await eventually(lambda: len(b.received) == 1, "first delivery")
            await b.transport.stop()
            # Reported at once, not only when the first redial (after ~0.5 s) fails.
            await eventually(lambda: 2 in a.unreachable, "the break to be reported", 0.3)
            await asyncio.sleep(0.1)
            assert a.unreachable == [2]
            assert a.transport.stats()[2].last_error is not None
        finally:
            await stop_all(nodes)

    run(body)


def test_other_cluster_is_refused_and_logged_on_both_sides(
    run: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        a = Node(1, cluster_id=7)
        b = Node(2, cluster_id=8)
        try:
            await a.transport.start()
            await b.transport.start()
            a.transport.update_peers({2: b.address})
            b.transport.update_peers({1: a.address})
            a.transport.send(conversation(1, 2, 0, 3))
            await eventually(lambda: 2 in a.unreachable, "the refusal to be reported")
            await eventually(
                lambda: any("cluster id 7" in w for w in warnings_of(caplog, b)),
                "the acceptor's log",
            )
            await eventually(
                lambda: any("handshake refused" in w for w in warnings_of(caplog, a)),
                "the dialer's log",
            )
            dialer_log = " ".join(warnings_of(caplog, a))
            assert "does not match this node's cluster id 8" in dialer_log
            assert b.received == []
            stats = a.transport.stats()[2]
            assert not stats.connected
            assert stats.last_error is not None and "cluster id" in stats.last_error
            assert not b.transport.stats()[1].inbound_connected
        finally:
            await stop_all([a, b])

    run(body)


def test_unknown_node_id_is_refused(run: Runner, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        b = Node(2, {1: (HOST, free_port())})
        await b.transport.start()
        stranger = Node(9, {2: b.address})
        await stranger.transport.start()
        try:
            stranger.transport.send(conversation(9, 2, 0, 2))
            await eventually(lambda: 2 in stranger.unreachable, "the refusal")
            await eventually(
                lambda: any("not a known member" in w for w in warnings_of(caplog, stranger)),
                "the dialer's log",
            )
            assert any("node 9" in w and "not a known member" in w for w in warnings_of(caplog, b))
            assert b.received == []
        finally:
            await stop_all([b, stranger])

    run(body)


@pytest.mark.parametrize(
    ("hello", "reason"),
    [
        (Handshake(PROTOCOL_VERSION + 1, CLUSTER, 1), "protocol version"),
        (Handshake(PROTOCOL_VERSION, CLUSTER + 1, 1), "cluster id"),
        (Handshake(PROTOCOL_VERSION, CLUSTER, 5), "not a known member"),
        (Handshake(PROTOCOL_VERSION, CLUSTER, 2), "own id"),
    ],
    ids=["version", "cluster", "unknown-node", "own-id"],
)
def test_refusal_reply_carries_the_reason(
    run: Runner, caplog: pytest.LogCaptureFixture, hello: Handshake, reason: str
) -> None:
    async def body() -> None:
        b = Node(2, {1: (HOST, free_port())})
        await b.transport.start()
        try:
            reader, writer = await asyncio.open_connection(HOST, b.transport.bound_port)
            writer.write(encode(hello))
            reply = await read_frame(reader)
            assert isinstance(reply, HandshakeReply)
            assert not reply.accepted and reply.node_id == 2 and reason in reply.reason
            await assert_closed_by_peer(reader)
            logged = warnings_of(caplog, b)
            assert any(reason in w and local_address(writer) in w for w in logged)
            writer.close()
        finally:
            await b.transport.stop()

    run(body)


def test_address_of_another_node_is_refused(run: Runner, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        nodes = await start_cluster(1, 2, 3)
        try:
            # Node 1 believes node 2 lives where node 3 listens.
            nodes[1].transport.update_peers({2: nodes[3].address, 3: nodes[3].address})
            nodes[1].transport.send(conversation(1, 2, 0, 1))
            await eventually(lambda: 2 in nodes[1].unreachable, "the mismatch to be reported")
            await eventually(
                lambda: any("belongs to node 3" in w for w in warnings_of(caplog, nodes[1])),
                "the mismatch to be logged",
            )
            assert nodes[3].received == []
        finally:
            await stop_all(nodes)

    run(body)


def _frame_header(length: int, type_id: int) -> bytes:
    return struct.pack("<IB", length, type_id)


BAD_STREAMS: list[tuple[str, bool, Callable[[], bytes], str]] = [
    # (id, handshake first, bytes to send, reason in the log)
    ("garbage", False, lambda: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "invalid frame"),
    ("unknown-type", False, lambda: _frame_header(3, 250) + b"abc", "invalid frame"),
    ("oversized-before-handshake", False, lambda: _frame_header(1 << 30, 64), "exceeds"),
    ("client-frame-first", False, lambda: encode(ClientRequest(1, 1)), "expected a handshake"),
    (
        "pipelined-before-reply",
        False,
        lambda: encode(Handshake(PROTOCOL_VERSION, CLUSTER, 3)) + encode(TimeoutNow(3, 2, 1)),
        "before its handshake was answered",
    ),
    ("garbage-after-handshake", True, lambda: b"\x00\x00\x00\x00junk", "invalid frame"),
    ("oversized-after-handshake", True, lambda: _frame_header(1 << 20, 1), "exceeds"),
    ("client-frame", True, lambda: encode(ClientRequest(1, 1, b"k")), "unexpected ClientRequest"),
    ("second-handshake", True, lambda: encode(Handshake(1, CLUSTER, 3)), "unexpected Handshake"),
    ("spoofed-sender", True, lambda: encode(TimeoutNow(1, 2, 9)), "claims sender 1"),
    ("wrong-recipient", True, lambda: encode(TimeoutNow(3, 1, 9)), "addressed to node 1"),
]


@pytest.mark.parametrize(
    ("handshake_first", "payload", "reason"),
    [case[1:] for case in BAD_STREAMS],
    ids=[case[0] for case in BAD_STREAMS],
)
def test_bad_stream_closes_only_that_connection(
    run: Runner,
    caplog: pytest.LogCaptureFixture,
    handshake_first: bool,
    payload: Callable[[], bytes],
    reason: str,
) -> None:
    async def body() -> None:
        # Node 3 is a member nobody runs: the misbehaving client speaks as node 3.
        nodes = await start_cluster(1, 2, max_frame_size=64 * 1024)
        a, b = nodes[1], nodes[2]
        for node in nodes.values():
            node.transport.update_peers({1: a.address, 2: b.address, 3: (HOST, free_port())})
        try:
            a.transport.send(conversation(1, 2, 0, 4))
            b.transport.send(conversation(2, 1, 0, 4))
            await eventually(lambda: len(a.received) == len(b.received) == 4, "warm-up")

            if handshake_first:
                reader, writer, reply = await raw_handshake(b.transport.bound_port, 3)
                assert reply.accepted
            else:
                reader, writer = await asyncio.open_connection(HOST, b.transport.bound_port)
            writer.write(payload())
            await assert_closed_by_peer(reader)
            logged = warnings_of(caplog, b)
            assert any(reason in w and local_address(writer) in w for w in logged), logged
            writer.close()

            # The real peers never noticed.
            a.transport.send(conversation(1, 2, 4, 11))
            b.transport.send(conversation(2, 1, 4, 11))
            await eventually(lambda: len(a.received) == len(b.received) == 15, "more traffic")
            assert b.received == conversation(1, 2, 0, 15)
            assert a.received == conversation(2, 1, 0, 15)
            assert a.unreachable == [] and b.unreachable == []
            assert a.transport.stats()[2].reconnects == 0
        finally:
            await stop_all(nodes)

    run(body)


def test_spoofed_messages_are_not_delivered(run: Runner, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        b = Node(2, {1: (HOST, free_port()), 3: (HOST, free_port())})
        await b.transport.start()
        try:
            reader, writer, reply = await raw_handshake(b.transport.bound_port, 3)
            assert reply.accepted
            good = conversation(3, 2, 0, 2)
            spoofed = RequestVote(1, 2, 50, 10, 9)
            # Messages before the forged one are the authenticated peer's own; the forged
            # one and everything after it are discarded with the connection.
            writer.write(encode_batch([*good, spoofed, *conversation(3, 2, 2, 2)]))
            await assert_closed_by_peer(reader)
            assert b.received == good
            assert all(m.sender == 3 for m in b.received)
            assert any("claims sender 1" in w for w in warnings_of(caplog, b))
            writer.close()
        finally:
            await b.transport.stop()

    run(body)


def test_silent_connection_is_closed_after_handshake_timeout(
    run: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        b = Node(2, {1: (HOST, free_port())}, handshake_timeout=0.2)
        await b.transport.start()
        try:
            reader, writer = await asyncio.open_connection(HOST, b.transport.bound_port)
            # Half a handshake, then silence.
            writer.write(encode(Handshake(PROTOCOL_VERSION, CLUSTER, 1))[:7])
            await assert_closed_by_peer(reader, timeout=3.0)
            assert any("no handshake within" in w for w in warnings_of(caplog, b))
            writer.close()
        finally:
            await b.transport.stop()

    run(body)


async def _silent_acceptor(
    *, answer: bool
) -> tuple[asyncio.Server, list[asyncio.StreamWriter], asyncio.Event]:
    """A fake peer that accepts connections and never reads after the handshake (or,
    with ``answer=False``, never answers it)."""
    writers: list[asyncio.StreamWriter] = []
    handshaken = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        hello = await read_frame(reader)
        assert isinstance(hello, Handshake)
        if answer:
            writer.write(encode(HandshakeReply(True, 2)))
            handshaken.set()

    server = await asyncio.start_server(handle, HOST, 0)
    return server, writers, handshaken


def test_overflow_while_connecting_reports_once_and_bounds_the_buffer(run: Runner) -> None:
    async def body() -> None:
        server, writers, _ = await _silent_acceptor(answer=False)
        port = server.sockets[0].getsockname()[1]
        limit = 64 * 1024
        a = Node(1, {2: (HOST, port)}, max_buffered_bytes=limit, connect_timeout=10.0)
        await a.transport.start()
        try:

            def big(i: int) -> AppendEntries:
                return AppendEntries(1, 2, 1, i, 1, i, [Entry(i + 1, 1, 0, b"v" * 4000)])

            frame = len(encode(big(0)))  # every one of them encodes to this size
            for i in range(100):
                a.transport.send([big(i)])
            kept = limit // frame
            stats = a.transport.stats()[2]
            assert stats.buffered_bytes == kept * frame <= limit
            assert stats.messages_dropped == 100 - kept
            await eventually(lambda: a.unreachable == [2], "the overflow to be reported")
            # Still full: further drops do not report again.
            a.transport.send([TimeoutNow(1, 2, 5)] * 40)
            await asyncio.sleep(0.05)
            assert a.unreachable == [2]
        finally:
            await a.transport.stop()
            for w in writers:
                w.close()
            server.close()
            await server.wait_closed()

    run(body)


def test_overflow_is_reported_once_per_episode(
    run: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        port_b = free_port()
        limit = 16 * 1024
        a = Node(1, {2: (HOST, port_b)}, max_buffered_bytes=limit)
        await a.transport.start()
        nodes = [a]

        def overflow_warnings() -> int:
            return sum("buffer for node 2 is full" in w for w in warnings_of(caplog, a))

        def message(i: int) -> ReadIndex:
            return ReadIndex(1, 2, 1, bytes([i]) * 2000)

        def fill() -> None:
            for i in range(20):
                a.transport.send([message(i)])

        kept = limit // len(encode(message(0)))
        try:
            fill()
            assert a.transport.stats()[2].messages_dropped == 20 - kept
            assert overflow_warnings() == 1
            b = Node(2, {1: a.address}, port=port_b)
            await b.transport.start()
            nodes.append(b)
            await eventually(lambda: len(b.received) == kept, "the buffered messages")
            assert b.received == [message(i) for i in range(kept)]
            assert a.transport.stats()[2].buffered_bytes == 0
            await b.transport.stop()
            nodes.remove(b)
            await eventually(lambda: not a.transport.stats()[2].connected, "the break")
            fill()
            # The drained buffer started a new episode: a second warning, and its own drops.
            assert overflow_warnings() == 2
            assert a.transport.stats()[2].messages_dropped == 2 * (20 - kept)
        finally:
            await stop_all(nodes)

    run(body)


def test_peer_that_stops_reading_bounds_memory(run: Runner) -> None:
    async def body() -> None:
        server, writers, handshaken = await _silent_acceptor(answer=True)
        port = server.sockets[0].getsockname()[1]
        limit = 1024 * 1024
        a = Node(1, {2: (HOST, port)}, max_buffered_bytes=limit)
        await a.transport.start()
        try:
            chunk = b"s" * (128 * 1024)
            a.transport.send([TimeoutNow(1, 2, 1)])
            await handshaken.wait()
            await eventually(lambda: a.transport.stats()[2].connected, "the link")
            link = a.transport._links[2]
            # Enough to fill the kernel's socket buffers many times over.
            for i in range(400):
                a.transport.send([InstallSnapshot(1, 2, 1, 5, 1, b"", i, 0, chunk, False)])
                if a.transport.stats()[2].messages_dropped:
                    break
                await asyncio.sleep(0)
            stats = a.transport.stats()[2]
            assert stats.messages_dropped > 0, "flow control never pushed back"
            assert stats.buffered_bytes <= limit
            conn = link.connection
            assert conn is not None and conn.paused and conn.transport is not None
            # The transport's own buffer stops growing at about one batch past its mark.
            assert conn.transport.get_write_buffer_size() < 4 * len(chunk) + 256 * 1024
            await eventually(lambda: a.unreachable == [2], "the overflow to be reported")
            # stop() does not wait for a peer that will never read what is queued.
            loop = asyncio.get_running_loop()
            started = loop.time()
            await a.transport.stop()
            assert loop.time() - started < 0.5
        finally:
            await a.transport.stop()
            for w in writers:
                w.close()
            server.close()
            await server.wait_closed()

    run(body)


def test_oversized_message_is_dropped_by_the_sender(
    run: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        nodes = await start_cluster(1, 2, max_frame_size=16 * 1024)
        a, b = nodes[1], nodes[2]
        try:
            small = conversation(1, 2, 0, 3)
            huge = InstallSnapshot(1, 2, 1, 5, 1, b"", 0, 20_000, b"z" * 20_000, True)
            a.transport.send([small[0], huge, *small[1:]])
            await eventually(lambda: len(b.received) == 3, "the small messages")
            assert b.received == small
            assert a.transport.stats()[2].messages_dropped == 1
            await eventually(lambda: a.unreachable == [2], "the drop to be reported")
            assert any("exceeds max_frame_size" in r.getMessage() for r in caplog.records)
            assert a.transport.stats()[2].reconnects == 0
        finally:
            await stop_all(nodes)

    run(body)


def test_failing_on_messages_does_not_break_the_link(
    run: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        nodes = await start_cluster(1, 2)
        a, b = nodes[1], nodes[2]
        calls: list[int] = []

        def explode(batch: list[RaftMessage]) -> None:
            calls.append(len(batch))
            if len(calls) == 1:
                raise RuntimeError("driver bug")
            b.received.extend(batch)

        b.transport._on_messages = explode
        try:
            a.transport.send(conversation(1, 2, 0, 1))
            await eventually(lambda: calls == [1], "the failing call")
            a.transport.send(conversation(1, 2, 1, 2))
            await eventually(lambda: len(b.received) == 2, "later messages")
            assert any("on_messages raised" in r.getMessage() for r in caplog.records)
            assert a.unreachable == [] and a.transport.stats()[2].reconnects == 0
        finally:
            await stop_all(nodes)

    run(body)


def test_update_peers_adds_removes_and_moves(run: Runner, caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        nodes = await start_cluster(1, 2, 3)
        a, b, c = nodes[1], nodes[2], nodes[3]
        extra: list[Node] = []
        try:
            for sender in (b, c):
                sender.transport.send(conversation(sender.id, 1, 0, 1))
            await eventually(lambda: len(a.received) == 2, "initial traffic")

            # Remove node 3 from node 1's view: its connection to us is closed and it is
            # refused when it dials again.
            a.transport.update_peers({2: b.address})
            assert sorted(a.transport.stats()) == [2]
            await eventually(
                lambda: not c.transport.stats()[1].connected, "node 3's link to be dropped"
            )
            c.transport.send(conversation(3, 1, 1, 1))
            await eventually(
                lambda: any("not a known member" in w for w in warnings_of(caplog, a)),
                "node 3 to be refused",
            )
            assert len(a.from_(3)) == 1
            # Sending to a removed peer is a silent drop, not an error.
            a.transport.send(conversation(1, 3, 0, 1))

            # Node 2 moves to a new address. The old process is still up and connected,
            # so the link must be torn down and dialled anew.
            a.transport.send(conversation(1, 2, 0, 1))
            await eventually(lambda: a.transport.stats()[2].connected, "the link to node 2")
            b2 = Node(2, {1: a.address})
            await b2.transport.start()
            extra.append(b2)
            a.transport.update_peers({2: b2.address})
            a.transport.send(conversation(1, 2, 1, 3))
            await eventually(lambda: len(b2.received) == 3, "delivery at the new address")
            assert b2.received == conversation(1, 2, 1, 3)
            assert b.received == conversation(1, 2, 0, 1)
            assert a.transport.stats()[2].address == b2.address
            await b.transport.stop()

            # Node 4 joins.
            d = Node(4, {1: a.address})
            await d.transport.start()
            extra.append(d)
            a.transport.update_peers({2: b2.address, 4: d.address})
            a.transport.send(conversation(1, 4, 0, 2))
            d.transport.send(conversation(4, 1, 0, 2))
            await eventually(lambda: len(d.received) == 2, "delivery to the new member")
            await eventually(lambda: len(a.from_(4)) == 2, "the new member's messages")
        finally:
            await stop_all([*nodes.values(), *extra])

    run(body)


def test_port_in_use_raises_a_clear_oserror(run: Runner) -> None:
    async def body() -> None:
        a = Node(1)
        await a.transport.start()
        try:
            b = Node(2, port=a.transport.bound_port)
            with pytest.raises(OSError, match=rf"cannot listen .*:{a.transport.bound_port}"):
                await b.transport.start()
        finally:
            await a.transport.stop()

    run(body)


def test_stop_leaves_no_tasks_and_closes_everything(run: Runner) -> None:
    async def body() -> None:
        nodes = await start_cluster(1, 2, 3)
        # Node 1 also has a peer that never comes up, so a dial/backoff task is running.
        nodes[1].transport.update_peers(
            {2: nodes[2].address, 3: nodes[3].address, 4: (HOST, free_port())}
        )
        server, writers, _ = await _silent_acceptor(answer=False)
        nodes[2].transport.update_peers(
            {1: nodes[1].address, 3: nodes[3].address, 5: server.sockets[0].getsockname()[:2]}
        )
        for node in nodes.values():
            node.transport.send(
                [m for p in (1, 2, 3, 4, 5) if p != node.id for m in conversation(node.id, p, 0, 3)]
            )
        await eventually(
            lambda: all(len(n.received) == 6 for n in nodes.values()), "traffic before stop"
        )
        # A stranger stuck before its handshake.
        reader, writer = await asyncio.open_connection(HOST, nodes[3].transport.bound_port)
        await asyncio.sleep(0.02)
        ports = [n.transport.bound_port for n in nodes.values()]
        await stop_all(nodes)
        try:
            assert asyncio.all_tasks() == {asyncio.current_task()}
            for node in nodes.values():
                assert node.transport._connections == set()
                assert not any(
                    s.connected or s.inbound_connected for s in node.transport.stats().values()
                )
            await assert_closed_by_peer(reader)
            for port in ports:
                with pytest.raises(OSError):
                    await asyncio.open_connection(HOST, port)
            # Stopping again is harmless; sending after stop is a no-op.
            await nodes[1].transport.stop()
            nodes[1].transport.send(conversation(1, 2, 0, 1))
            assert asyncio.all_tasks() == {asyncio.current_task()}
        finally:
            writer.close()
            for w in writers:
                w.close()
            server.close()
            await server.wait_closed()

    run(body)


def test_no_callbacks_after_stop(run: Runner) -> None:
    async def body() -> None:
        a = Node(1, {2: (HOST, free_port())}, max_buffered_bytes=100)
        await a.transport.start()
        # The overflow report is deferred to a loop callback, which runs only after
        # stop() has begun.
        a.transport.send(conversation(1, 2, 0, 20))
        assert a.transport.stats()[2].messages_dropped > 0
        await a.transport.stop()
        await asyncio.sleep(0.01)
        assert a.unreachable == []

    run(body)


def test_newer_connection_from_a_peer_replaces_the_older(
    run: Runner, caplog: pytest.LogCaptureFixture
) -> None:
    async def body() -> None:
        b = Node(2, {3: (HOST, free_port())})
        await b.transport.start()
        try:
            old_reader, old_writer, reply = await raw_handshake(b.transport.bound_port, 3)
            assert reply.accepted
            _, new_writer, reply = await raw_handshake(b.transport.bound_port, 3)
            assert reply.accepted
            # The old one is what a restarted peer leaves half-open: closed for it.
            await assert_closed_by_peer(old_reader)
            assert b.transport.stats()[3].inbound_connected
            new_writer.write(encode(TimeoutNow(3, 2, 4)))
            await eventually(lambda: b.received == [TimeoutNow(3, 2, 4)], "delivery")
            assert any("closing its previous connection" in r.getMessage() for r in caplog.records)
            old_writer.close()
            new_writer.close()
        finally:
            await b.transport.stop()

    run(body)


def test_stop_without_start_and_before_any_traffic(run: Runner) -> None:
    async def body() -> None:
        idle = Node(1, {2: (HOST, free_port())})
        await idle.transport.stop()
        started = Node(3, {2: (HOST, free_port())})
        await started.transport.start()
        await started.transport.stop()
        assert asyncio.all_tasks() == {asyncio.current_task()}
        with pytest.raises(RuntimeError):
            await started.transport.start()

    run(body)
