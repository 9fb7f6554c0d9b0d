"""The fault proxy: forwarding, source identification and every fault, first against
small asyncio servers that speak the handshake, then on the peer links of a real
3-node cluster (docs/architecture.md testing layer 4)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from raftkv.testing.cluster import LocalCluster, free_ports, wait_until
from raftkv.testing.fault_proxy import FaultProxy
from raftkv_ext.codec import (
    PROTOCOL_VERSION,
    FrameDecoder,
    Handshake,
    HandshakeReply,
    TimeoutNow,
    encode,
)
from raftkv_ext.errors import CodecError

if TYPE_CHECKING:
    from raftkv_ext.codec import Message

CLUSTER_ID = 77
# How long "nothing arrives" is watched for: a forwarded frame takes about a millisecond.
QUIET = 0.3
# Client-side writers the current test opened; closed when its harness ends.
_OPEN_WRITERS: list[asyncio.StreamWriter] = []


# ----------------------------------------------------------------------- fake nodes


@dataclass
class Received:
    conn: int  # the node's connection number, in accept order
    message: Message
    at: float


@dataclass
class FakeNode:
    """Accepts connections like a node's transport: answers a handshake, records every
    frame, and closes a connection whose bytes do not decode."""

    node_id: int
    accepted: int = 0
    closed: int = 0
    hellos: list[int] = field(default_factory=list)
    raw: list[bytearray] = field(default_factory=list)
    messages: asyncio.Queue[Received] = field(default_factory=asyncio.Queue)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    server: asyncio.Server | None = None

    async def start(self) -> FakeNode:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return ("127.0.0.1", int(self.server.sockets[0].getsockname()[1]))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.accepted
        self.accepted += 1
        raw = bytearray()
        self.raw.append(raw)
        self.writers.append(writer)
        decoder = FrameDecoder()
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                raw += data
                try:
                    messages = decoder.feed(data)
                except CodecError:
                    break
                for message in messages:
                    if isinstance(message, Handshake):
                        self.hellos.append(message.node_id)
                        writer.write(encode(HandshakeReply(True, self.node_id)))
                    self.messages.put_nowait(Received(number, message, loop.time()))
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.closed += 1
            writer.transport.abort()

    async def next_message(self, timeout: float = 2.0) -> Received:
        return await asyncio.wait_for(self.messages.get(), timeout)

    async def assert_quiet(self, wait: float = QUIET) -> None:
        await asyncio.sleep(wait)
        assert self.messages.empty(), f"node {self.node_id} got {self.messages.get_nowait()}"

    def kill(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()


@dataclass
class Peer:
    """The dialing side of one connection, as a node's transport would open it."""

    src: int
    dst: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    hello: bytes

    def send(self, term: int) -> bytes:
        frame = encode(TimeoutNow(self.src, self.dst, term))
        self.writer.write(frame)
        return frame

    async def reply(self, timeout: float = 2.0) -> Message:
        decoder = FrameDecoder()
        async with asyncio.timeout(timeout):
            while True:
                data = await self.reader.read(4096)
                if not data:
                    raise EOFError("connection closed")
                messages = decoder.feed(data)
                if messages:
                    return messages[0]

    async def closed(self, timeout: float = 2.0) -> str:
        """Wait for the proxy to close this connection, then close it here too (as the
        transport does on EOF); returns "reset" or "eof"."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(4096):
                    pass
        except ConnectionResetError:
            return "reset"
        finally:
            self.writer.close()
        return "eof"


async def connect(address: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*address)
    _OPEN_WRITERS.append(writer)
    return reader, writer


async def dial(proxy: FaultProxy, src: int, dst: int, *, answered: bool = True) -> Peer:
    reader, writer = await connect(proxy.address(dst))
    hello = encode(Handshake(PROTOCOL_VERSION, CLUSTER_ID, src))
    writer.write(hello)
    peer = Peer(src, dst, reader, writer, hello)
    if answered:
        reply = await peer.reply()
        assert isinstance(reply, HandshakeReply) and reply.accepted and reply.node_id == dst
    return peer


@contextlib.asynccontextmanager
async def harness(count: int = 3) -> AsyncIterator[tuple[dict[int, FakeNode], FaultProxy]]:
    nodes = {i: await FakeNode(i).start() for i in range(1, count + 1)}
    proxy = FaultProxy({i: (("127.0.0.1", 0), n.address) for i, n in nodes.items()}, seed=7)
    proxy.start()
    try:
        yield nodes, proxy
    finally:
        proxy.stop()
        for node in nodes.values():
            node.kill()
        close_clients()
    assert proxy.tasks_left_at_stop == 0


def close_clients() -> None:
    while _OPEN_WRITERS:
        _OPEN_WRITERS.pop().close()


def rst_close(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# ------------------------------------------------------------------- unit level


@pytest.mark.timeout(20)
def test_forwards_both_ways_and_identifies_the_source() -> None:
    async def scenario() -> None:
        async with harness() as (nodes, proxy):
            one = await dial(proxy, 1, 2)
            three = await dial(proxy, 3, 2)
            frames = [one.send(term) for term in (5, 6, 7)]
            three_frame = three.send(9)

            got = [await nodes[2].next_message() for _ in range(6)]
            by_conn: dict[int, list[Message]] = {}
            for item in got:
                by_conn.setdefault(item.conn, []).append(item.message)
            assert sorted(nodes[2].hellos) == [1, 3]
            assert by_conn[0] == [Handshake(PROTOCOL_VERSION, CLUSTER_ID, 1)] + [
                TimeoutNow(1, 2, t) for t in (5, 6, 7)
            ]
            assert by_conn[1] == [Handshake(PROTOCOL_VERSION, CLUSTER_ID, 3), TimeoutNow(3, 2, 9)]
            # Byte for byte what was sent, handshake included.
            assert bytes(nodes[2].raw[0]) == one.hello + b"".join(frames)

            stats = proxy.stats()
            reply_size = len(encode(HandshakeReply(True, 2)))
            assert stats[(1, 2)].bytes_forwarded == len(one.hello) + sum(map(len, frames))
            assert stats[(1, 2)].bytes_returned == reply_size
            assert stats[(1, 2)].connections == stats[(1, 2)].open_connections == 1
            assert stats[(3, 2)].bytes_forwarded == len(three.hello) + len(three_frame)
            assert stats[(2, 1)].connections == stats[(2, 1)].bytes_forwarded == 0
            assert nodes[1].accepted == nodes[3].accepted == 0

            # A graceful close by the dialer reaches the node, and the proxy forgets it.
            one.writer.close()
            await asyncio.wait_for(_until(lambda: nodes[2].closed == 1), 2)
            await asyncio.wait_for(_until(lambda: proxy.stats()[(1, 2)].open_connections == 0), 2)

    asyncio.run(scenario())


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


@pytest.mark.timeout(20)
def test_block_is_per_direction_and_unblock_resets_the_held_connections() -> None:
    async def scenario() -> None:
        async with harness() as (nodes, proxy):
            one_to_two = await dial(proxy, 1, 2)
            two_to_one = await dial(proxy, 2, 1)
            await nodes[2].next_message()  # the handshakes
            await nodes[1].next_message()

            proxy.block(1, 2)
            assert proxy.blocked_links() == {(1, 2)}
            one_to_two.send(1)
            await nodes[2].assert_quiet()
            # The reverse link and another source to the same node still work.
            two_to_one.send(2)
            assert (await nodes[1].next_message()).message == TimeoutNow(2, 1, 2)
            three_to_two = await dial(proxy, 3, 2)
            await nodes[2].next_message()
            three_to_two.send(3)
            assert (await nodes[2].next_message()).message == TimeoutNow(3, 2, 3)

            # A connection dialled while blocked is accepted and then held: the node
            # never sees it.
            accepted_before = nodes[2].accepted
            held = await dial(proxy, 1, 2, answered=False)
            with pytest.raises(TimeoutError):
                await held.reply(timeout=QUIET)
            assert nodes[2].accepted == accepted_before
            stats = proxy.stats()[(1, 2)]
            assert stats.blocked and stats.open_connections == 2 and stats.connections == 2

            proxy.unblock(1, 2)
            assert proxy.blocked_links() == set()
            # Held connections are reset, and what they held is never delivered.
            assert await one_to_two.closed() == "reset"
            assert await held.closed() == "reset"
            await nodes[2].assert_quiet()
            assert proxy.stats()[(1, 2)].resets == 2
            # The other links were not touched; a new connection on the link works.
            two_to_one.send(4)
            assert (await nodes[1].next_message()).message == TimeoutNow(2, 1, 4)
            again = await dial(proxy, 1, 2)
            again.send(5)
            await nodes[2].next_message()  # its handshake
            assert (await nodes[2].next_message()).message == TimeoutNow(1, 2, 5)

    asyncio.run(scenario())


@pytest.mark.timeout(20)
def test_latency_delays_each_chunk_and_keeps_order() -> None:
    async def scenario() -> None:
        async with harness() as (nodes, proxy):
            delay, jitter = 0.2, 0.1
            proxy.set_latency(1, 2, delay, jitter)
            loop = asyncio.get_running_loop()

            started = loop.time()
            slow = await dial(proxy, 1, 2)
            round_trip = loop.time() - started
            # Both directions of the link's connection are delayed.
            assert 2 * delay <= round_trip < 2 * (delay + jitter) + 1.0, round_trip
            await nodes[2].next_message()

            sent_at = {}
            for term in range(1, 11):
                sent_at[term] = loop.time()
                slow.send(term)
                # Separate chunks, so that jitter alone would reorder them.
                await asyncio.sleep(0.02)
            arrived = [await nodes[2].next_message() for _ in range(10)]
            terms = [r.message.term for r in arrived if isinstance(r.message, TimeoutNow)]
            assert terms == list(range(1, 11))
            for item, term in zip(arrived, terms, strict=True):
                took = item.at - sent_at[term]
                assert delay <= took < delay + jitter + 1.0, took

            # Another link is not delayed.
            started = loop.time()
            await dial(proxy, 3, 2)
            assert loop.time() - started < delay

            proxy.heal()
            stats = proxy.stats()[(1, 2)]
            assert stats.delay_s == stats.jitter_s == 0.0
            await nodes[2].next_message()  # 3's handshake
            sent = loop.time()
            slow.send(11)
            item = await nodes[2].next_message()
            assert item.message == TimeoutNow(1, 2, 11) and item.at - sent < delay

    asyncio.run(scenario())


@pytest.mark.timeout(20)
def test_set_latency_all_covers_every_link() -> None:
    async def scenario() -> None:
        async with harness() as (_nodes, proxy):
            proxy.set_latency_all(0.15)
            loop = asyncio.get_running_loop()
            for src, dst in ((1, 2), (2, 3), (3, 1)):
                started = loop.time()
                await dial(proxy, src, dst)
                assert loop.time() - started >= 0.3
            assert all(s.delay_s == 0.15 for s in proxy.stats().values())

    asyncio.run(scenario())


@pytest.mark.timeout(20)
def test_reset_closes_matching_connections_with_rst() -> None:
    async def scenario() -> None:
        async with harness() as (nodes, proxy):
            one = await dial(proxy, 1, 2)
            three = await dial(proxy, 3, 2)
            two = await dial(proxy, 2, 3)
            assert proxy.reset(1, 2) == 1
            assert await one.closed() == "reset"
            await asyncio.wait_for(_until(lambda: nodes[2].closed == 1), 2)
            # Other links keep their connections.
            three.send(1)
            two.send(2)
            at_two = [(await nodes[2].next_message()).message for _ in range(3)]
            at_three = [(await nodes[3].next_message()).message for _ in range(2)]
            assert at_two[-1] == TimeoutNow(3, 2, 1) and at_three[-1] == TimeoutNow(2, 3, 2)

            assert proxy.reset(dst=3) == 1
            assert await two.closed() == "reset"
            assert proxy.reset() == 1
            assert await three.closed() == "reset"
            assert proxy.reset() == 0
            assert proxy.stats()[(1, 2)].resets == 1

    asyncio.run(scenario())


@pytest.mark.timeout(20)
def test_garbage_and_early_closes_do_not_break_the_proxy() -> None:
    async def scenario() -> None:
        async with harness() as (nodes, proxy):
            host, port = proxy.address(2)

            # Not a handshake: forwarded unchanged, the node refuses it.
            garbage = b"GET / HTTP/1.1\r\nHost: raftkv\r\n\r\n"
            reader, writer = await connect((host, port))
            writer.write(garbage)
            peer = Peer(0, 2, reader, writer, b"")
            assert await peer.closed() == "eof"
            assert bytes(nodes[2].raw[0]) == garbage
            unknown = proxy.stats()[(None, 2)]
            assert unknown.connections == 1 and unknown.bytes_forwarded == len(garbage)

            # A well-formed frame that is not a handshake: forwarded, source unknown.
            reader, writer = await connect((host, port))
            writer.write(encode(TimeoutNow(1, 2, 3)))
            assert (await nodes[2].next_message()).message == TimeoutNow(1, 2, 3)
            writer.close()

            # Dialers that go away early: at once, mid-handshake, right after it (RST).
            reader, writer = await connect((host, port))
            writer.close()
            reader, writer = await connect((host, port))
            writer.write(encode(Handshake(PROTOCOL_VERSION, CLUSTER_ID, 1))[:10])
            await writer.drain()
            writer.close()
            reader, writer = await connect((host, port))
            writer.write(encode(Handshake(PROTOCOL_VERSION, CLUSTER_ID, 3)))
            await writer.drain()
            rst_close(writer)
            await asyncio.sleep(QUIET)

            # Everything still works, and only the finished dial counts on link 1 -> 2.
            one = await dial(proxy, 1, 2)
            one.send(8)
            while (item := await nodes[2].next_message()).message != TimeoutNow(1, 2, 8):
                assert isinstance(item.message, Handshake | TimeoutNow)
            assert proxy.stats()[(1, 2)].connections == 1
            await asyncio.wait_for(_until(lambda: proxy.stats()[(3, 2)].open_connections == 0), 2)

    asyncio.run(scenario())


@pytest.mark.timeout(20)
def test_a_dead_node_closes_the_dialer() -> None:
    async def scenario() -> None:
        async with harness() as (nodes, proxy):
            (nobody,) = free_ports(1)
            proxy.add_route(4, ("127.0.0.1", 0), ("127.0.0.1", nobody))
            refused = await dial(proxy, 1, 4, answered=False)
            assert await refused.closed() in ("reset", "eof")
            assert proxy.stats()[(1, 4)].connect_failures == 1

            # A node that dies under an open connection: the dialer sees it close.
            live = await dial(proxy, 1, 2)
            nodes[2].kill()
            assert await live.closed() in ("reset", "eof")
            await asyncio.wait_for(_until(lambda: proxy.stats()[(1, 2)].open_connections == 0), 2)
            # The rest of the proxy is unaffected.
            other = await dial(proxy, 2, 3)
            other.send(1)
            await nodes[3].next_message()
            assert (await nodes[3].next_message()).message == TimeoutNow(2, 3, 1)

    asyncio.run(scenario())


@pytest.mark.timeout(20)
def test_add_route_at_run_time() -> None:
    async def scenario() -> None:
        async with harness(2) as (_nodes, proxy):
            late = await FakeNode(3).start()
            try:
                bound = proxy.add_route(3, ("127.0.0.1", 0), late.address)
                assert bound == proxy.address(3) and bound[1] != 0
                assert proxy.nodes == [1, 2, 3]
                with pytest.raises(ValueError):
                    proxy.add_route(3, ("127.0.0.1", 0), late.address)
                peer = await dial(proxy, 1, 3)
                peer.send(4)
                assert (await late.next_message()).message == Handshake(
                    PROTOCOL_VERSION, CLUSTER_ID, 1
                )
                assert (await late.next_message()).message == TimeoutNow(1, 3, 4)
                # The new node's links take part in the group faults.
                proxy.isolate(3)
                assert proxy.blocked_links() == {(1, 3), (2, 3), (3, 1), (3, 2)}
            finally:
                proxy.heal()
                late.kill()
                await asyncio.sleep(0)

    asyncio.run(scenario())


def test_group_helpers_block_the_right_links() -> None:
    proxy = FaultProxy({i: (("127.0.0.1", 0), ("127.0.0.1", 1)) for i in range(1, 6)})

    proxy.partition([{1, 2}, {3, 4, 5}])
    assert proxy.blocked_links() == {(a, b) for a in (1, 2) for b in (3, 4, 5)} | {
        (b, a) for a in (1, 2) for b in (3, 4, 5)
    }
    proxy.heal()
    assert proxy.blocked_links() == set()

    proxy.partition([{1}, {2}])  # nodes 3-5 keep their links
    assert proxy.blocked_links() == {(1, 2), (2, 1)}
    proxy.heal()

    proxy.one_way({1}, {2, 3})
    assert proxy.blocked_links() == {(1, 2), (1, 3)}
    proxy.heal()

    proxy.isolate(3)
    assert proxy.blocked_links() == {(3, n) for n in (1, 2, 4, 5)} | {(n, 3) for n in (1, 2, 4, 5)}
    proxy.heal()

    proxy.bridge({1, 2}, 3, {4, 5})
    blocked = proxy.blocked_links()
    assert blocked == {(a, b) for a in (1, 2) for b in (4, 5)} | {
        (b, a) for a in (1, 2) for b in (4, 5)
    }
    assert not any(3 in link for link in blocked)

    # Additive: a second fault adds to the first.
    proxy.block(3, 1)
    assert (3, 1) in proxy.blocked_links() and len(proxy.blocked_links()) == 9
    proxy.heal()

    with pytest.raises(ValueError):
        proxy.partition([{1, 2}, {2, 3}])
    with pytest.raises(ValueError):
        proxy.bridge({1}, 1, {2})
    with pytest.raises(ValueError):
        proxy.bridge({1, 2}, 3, {2})
    with pytest.raises(ValueError):
        proxy.set_latency(1, 2, -0.1)
    assert proxy.blocked_links() == set()


@pytest.mark.timeout(30)
def test_control_from_many_threads_while_traffic_flows() -> None:
    async def scenario() -> None:
        async with harness() as (nodes, proxy):
            errors: list[BaseException] = []

            def churn(seed: int) -> None:
                try:
                    for i in range(40):
                        src, dst = 1 + (seed + i) % 3, 1 + (seed + i + 1) % 3
                        proxy.block(src, dst)
                        proxy.set_latency(src, dst, 0.001 * (i % 3))
                        proxy.stats()
                        proxy.unblock(src, dst)
                        if i % 10 == 0:
                            proxy.reset(src, dst)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=churn, args=(n,)) for n in range(4)]
            for thread in threads:
                thread.start()
            # Traffic on every link meanwhile; connections may be reset under it.
            for round_ in range(10):
                for src, dst in ((1, 2), (2, 3), (3, 1)):
                    with contextlib.suppress(OSError, EOFError, TimeoutError, CodecError):
                        peer = await dial(proxy, src, dst, answered=False)
                        peer.send(round_)
                        peer.writer.close()
                await asyncio.sleep(0.01)
            while any(t.is_alive() for t in threads):
                await asyncio.sleep(0.05)
            assert errors == []
            proxy.heal()
            assert proxy.blocked_links() == set()
            fresh = await dial(proxy, 1, 2)
            fresh.send(99)
            while (item := await nodes[2].next_message()).message != TimeoutNow(1, 2, 99):
                pass
            assert item.conn == nodes[2].accepted - 1

    asyncio.run(scenario())


@pytest.mark.timeout(20)
def test_stop_closes_everything_and_leaks_no_task() -> None:
    async def scenario() -> None:
        nodes = {i: await FakeNode(i).start() for i in (1, 2, 3)}
        proxy = FaultProxy({i: (("127.0.0.1", 0), n.address) for i, n in nodes.items()})
        proxy.start()
        with pytest.raises(RuntimeError):
            proxy.start()
        try:
            normal = await dial(proxy, 1, 2)
            held_before = await dial(proxy, 2, 3)
            proxy.block(2, 3)
            held_before.send(1)
            held_new = await dial(proxy, 2, 3, answered=False)
            proxy.set_latency(3, 1, 5.0)
            delayed = await dial(proxy, 3, 1, answered=False)
            host, port = proxy.address(1)
            _, partial = await connect((host, port))
            partial.write(b"\x1d\x00")
            await asyncio.sleep(QUIET)
            assert sum(s.open_connections for s in proxy.stats().values()) == 4
        finally:
            proxy.stop()
        assert proxy.tasks_left_at_stop == 0
        assert not proxy.running
        assert not [t for t in threading.enumerate() if t.name == "fault-proxy"]
        for peer in (normal, held_before, held_new, delayed):
            assert await peer.closed() in ("reset", "eof")
        with pytest.raises(ConnectionRefusedError):
            await connect((host, port))
        proxy.stop()  # idempotent
        for node in nodes.values():
            node.kill()
        close_clients()

    asyncio.run(scenario())


# ------------------------------------------------------------------- real cluster

REQUEST_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(
        tmp_path_factory.mktemp("proxied"),
        3,
        proxied=True,
        extra_args=["--request-timeout", str(REQUEST_TIMEOUT)],
    )
    try:
        local.start()
        yield local
    finally:
        local.stop()
    assert local.proxy.tasks_left_at_stop == 0


def _health_leader(cluster: LocalCluster, node_id: int) -> int | None:
    try:
        response = cluster.client.get(f"{cluster.url(node_id)}/health", timeout=1.0)
    except httpx.HTTPError:
        return None
    leader = response.json().get("leader") if response.status_code == 200 else None
    return leader if isinstance(leader, int) else None


def _healed(cluster: LocalCluster) -> int:
    cluster.proxy.heal()
    return cluster.wait_ready(timeout=15)


def _write_for(
    cluster: LocalCluster, prefix: str, seconds: float, through: list[int]
) -> dict[str, tuple[int, str]]:
    """Write unique keys through every node of ``through`` at once (one client thread
    per node, so a node that cannot commit does not slow the others down); returns the
    acknowledged writes (key -> (node, value)). An unacknowledged write may or may not
    have happened, so only acknowledged ones are checked later."""
    acked: dict[str, tuple[int, str]] = {}
    problems: list[str] = []
    deadline = time.monotonic() + seconds

    def writer(node: int) -> None:
        with httpx.Client(timeout=REQUEST_TIMEOUT + 3.0) as client:
            i = 0
            while time.monotonic() < deadline:
                key, value = f"{prefix}/{node}/{i:04d}", f"v{i}"
                i += 1
                try:
                    response = client.post(f"{cluster.url(node)}/kv/{key}", json={"value": value})
                except httpx.HTTPError:
                    continue
                if response.status_code == 200:
                    acked[key] = (node, value)
                elif response.status_code != 503:
                    problems.append(f"{key}: {response.status_code} {response.text}")
                # A steady trickle: enough writes to see, few enough to read back.
                time.sleep(0.05)

    threads = [threading.Thread(target=writer, args=(node,)) for node in through]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert problems == []
    return acked


def _assert_readable_everywhere(cluster: LocalCluster, acked: dict[str, tuple[int, str]]) -> None:
    for node_id in cluster.nodes:
        for key, (_, value) in acked.items():
            got = cluster.get(node_id, key)
            assert got.status_code == 200 and got.text == value, (node_id, key, got.text)


@pytest.mark.timeout(60)
def test_cluster_writes_go_through_the_proxy(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    for node_id in cluster.nodes:
        assert cluster.put(node_id, f"through/{node_id}", str(node_id)).status_code == 200
    for node_id in cluster.nodes:
        assert cluster.get(node_id, "through/3").text == "3"
    stats = cluster.proxy.stats()
    for follower in cluster.followers():
        # Heartbeats and appends one way, their acknowledgements the other.
        assert stats[(leader, follower)].bytes_forwarded > 0
        assert stats[(follower, leader)].bytes_forwarded > 0
        assert stats[(leader, follower)].bytes_returned > 0  # the handshake reply
    assert not any(s.src is None for s in stats.values())


@pytest.mark.timeout(60)
def test_isolated_leader_is_replaced_and_rejoins_after_heal(cluster: LocalCluster) -> None:
    old = cluster.leader()
    others = [n for n in cluster.nodes if n != old]
    assert cluster.put(old, "iso/before", "1").status_code == 200

    cluster.proxy.isolate(old)
    try:
        agreed: list[int] = []

        def majority_has_new_leader() -> bool:
            seen = {_health_leader(cluster, n) for n in others}
            if len(seen) == 1 and (leader := seen.pop()) in others:
                agreed[:] = [leader]
                return True
            return False

        wait_until(majority_has_new_leader, timeout=10, what="the majority to elect a leader")
        new = agreed[0]
        assert cluster.put(new, "iso/during", "2").status_code == 200
        assert cluster.get(others[0], "iso/during").text == "2"

        # The old leader cannot commit: answered 503 within its request timeout.
        started = time.monotonic()
        refused = cluster.put(old, "iso/lost", "3")
        took = time.monotonic() - started
        assert refused.status_code == 503, refused.text
        assert took < REQUEST_TIMEOUT + 2.0, took
        assert cluster.get(old, "iso/during", consistency="stale").status_code == 404
    finally:
        leader = _healed(cluster)

    # Back in the cluster, the old leader catches up and serves the new writes.
    wait_until(
        lambda: cluster.get(old, "iso/during", consistency="stale").status_code == 200,
        timeout=10,
        what="the old leader to catch up",
    )
    assert cluster.get(old, "iso/during").text == "2"
    assert cluster.get(old, "iso/before").text == "1"
    assert cluster.put(old, "iso/after", "4").status_code == 200
    assert cluster.get(leader, "iso/after").text == "4"


@pytest.mark.timeout(60)
def test_one_way_partition_keeps_acknowledged_writes(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    others = [n for n in cluster.nodes if n != leader]
    # The leader's messages are lost; it still hears the others.
    cluster.proxy.one_way({leader}, set(others))
    try:
        acked = _write_for(cluster, "oneway", 4.0, list(cluster.nodes))
    finally:
        _healed(cluster)
    # The two nodes that hear each other form a majority and take writes; nothing the
    # old leader sends gets anywhere, so nothing written through it can commit.
    through = collections.Counter(node for node, _ in acked.values())
    assert all(through[n] > 0 for n in others) and through[leader] == 0, through
    _assert_readable_everywhere(cluster, acked)


@pytest.mark.timeout(60)
def test_bridge_keeps_acknowledged_writes(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    bridge, far = [n for n in cluster.nodes if n != leader]
    # The leader and `far` cannot talk; `bridge` talks to both.
    cluster.proxy.bridge({leader}, bridge, {far})
    try:
        acked = _write_for(cluster, "bridge", 3.0, list(cluster.nodes))
    finally:
        _healed(cluster)
    # The leader keeps its majority through the bridge node.
    through = collections.Counter(node for node, _ in acked.values())
    assert through[bridge] > 0 and through[leader] > 0, through
    _assert_readable_everywhere(cluster, acked)


@pytest.mark.timeout(60)
def test_added_node_is_proxied_too(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    new = cluster.add_node()
    wait_until(
        lambda: _health_leader(cluster, new) == leader,
        timeout=20,
        what=f"node {new} to join",
    )
    assert cluster.put(leader, "added/key", "x").status_code == 200
    assert cluster.get(new, "added/key").text == "x"
    stats = cluster.proxy.stats()
    assert stats[(leader, new)].bytes_forwarded > 0
    assert stats[(new, leader)].bytes_forwarded > 0
    # And its links can be faulted like any other.
    cluster.proxy.isolate(new)
    try:
        assert cluster.put(leader, "added/isolated", "y").status_code == 200
        time.sleep(QUIET)
        assert cluster.get(new, "added/isolated", consistency="stale").status_code == 404
    finally:
        _healed(cluster)
    wait_until(
        lambda: cluster.get(new, "added/isolated", consistency="stale").text == "y",
        timeout=10,
        what=f"node {new} to catch up",
    )


def test_unproxied_cluster_has_no_proxy(tmp_path: Path) -> None:
    plain = LocalCluster(tmp_path, 3)
    try:
        assert all(node.listen_port is None for node in plain.nodes.values())
        assert "--rpc-listen" not in plain.command(plain.nodes[1])
        with pytest.raises(RuntimeError):
            _ = plain.proxy
    finally:
        plain.client.close()
