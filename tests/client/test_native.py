"""raftkv.client.native: the native client of ``kvnode --client-addr``.

Two halves:

* against the Raft process's own server (``IpcServer`` on a TCP port) in this process,
  with a ``submit`` the test controls, for what a cluster does not do on demand: forget a
  session, never answer, drop the connection, answer each error status;
* against one real 3-node cluster serving native clients (``LocalCluster(native=True)``),
  shared by the module: key operations, forwarding from a follower, consistency levels,
  thousands of requests in flight, hostile bytes on the port, the blocking wrapper.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from native_fakes import CLUSTER, NODE, ReplyFn, answer_ok, serving

from raftkv.client.http_client import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    RaftkvError,
    UnavailableError,
)
from raftkv.client.native import AsyncNativeClient, NativeClient, open_native_connection
from raftkv.kv.results import KeyValue
from raftkv.node.ipc_server import IpcServer
from raftkv.node.node_config import cluster_id_for, parse_cluster
from raftkv.testing.cluster import LocalCluster, free_ports, running_cluster, wait_until
from raftkv.wire.protocol import Flag, Op, ReplyStatus
from raftkv_ext.codec import (
    ClientReply,
    ClientRequest,
    FrameDecoder,
    encode,
)

_T = TypeVar("_T")


def run(scenario: Coroutine[Any, Any, _T], timeout: float = 60.0) -> _T:
    return asyncio.run(asyncio.wait_for(scenario, timeout))


# -- against an in-process server --------------------------------------------------------------


def test_writes_carry_an_exactly_once_tag_like_the_workers() -> None:
    seen: list[ClientRequest] = []

    def submit(request: ClientRequest, reply: ReplyFn) -> None:
        seen.append(request)
        answer_ok(request, reply)

    async def scenario() -> int:
        async with serving(submit) as (_, port), AsyncNativeClient("127.0.0.1", port) as kv:
            assert kv.node_id == NODE
            await asyncio.gather(kv.put("a", "1"), kv.put("b", b"2"), kv.delete("c"))
            await kv.put("d", "4", prev_revision=0)
            await kv.get("a")
            return kv.client_id

    client_id = run(scenario())
    writes = [r for r in seen if r.op != Op.GET]
    assert [(r.client_id, r.seq, r.first_incomplete) for r in writes] == [
        (client_id, 1, 1),
        (client_id, 2, 1),
        (client_id, 3, 1),
        (client_id, 4, 4),
    ]
    assert [(r.op, r.key, r.value) for r in writes[:3]] == [
        (Op.PUT, b"a", b"1"),
        (Op.PUT, b"b", b"2"),
        (Op.DELETE, b"c", b""),
    ]
    assert writes[3].flags == Flag.HAS_PREV_REVISION and writes[3].prev_revision == 0
    assert writes[0].flags == 0 and writes[0].prev_revision == -1
    (read,) = [r for r in seen if r.op == Op.GET]
    assert (read.client_id, read.seq) == (0, 0)  # reads are not tagged
    assert all(r.timeout_ms == 5000 for r in seen)  # the server gets the client's deadline


def test_a_forgotten_session_is_renewed_and_the_write_sent_once_more() -> None:
    seen: list[ClientRequest] = []

    def submit(request: ClientRequest, reply: ReplyFn) -> None:
        seen.append(request)
        if len(seen) == 1:
            body = b"client 1: session expired"
            reply(ClientReply(request.request_id, ReplyStatus.STALE_SESSION, 7, 1, 0, body))
        else:
            answer_ok(request, reply)

    async def scenario() -> tuple[int, int]:
        async with serving(submit) as (_, port), AsyncNativeClient("127.0.0.1", port) as kv:
            first_id = kv.client_id
            await kv.put("k", "v")
            await kv.put("k", "w")
            return first_id, kv.client_id

    first_id, renewed_id = run(scenario())
    assert renewed_id != first_id
    assert [(r.client_id, r.seq, r.first_incomplete) for r in seen] == [
        (first_id, 1, 1),
        (renewed_id, 1, 1),
        (renewed_id, 2, 2),
    ]
    assert seen[0].value == seen[1].value == b"v"


@pytest.mark.parametrize(
    ("status", "body", "error", "may_have_applied"),
    [
        (ReplyStatus.NOT_FOUND, b"key not found", NotFoundError, False),
        (ReplyStatus.CONFLICT, b"prev_revision does not match", ConflictError, False),
        (ReplyStatus.BAD_REQUEST, b"key is 5000 bytes", BadRequestError, False),
        (ReplyStatus.UNAVAILABLE, b"no leader in time; the write was not applied", None, False),
        (ReplyStatus.TIMEOUT, b"no quorum; the write may or may not have been applied", None, True),
        (ReplyStatus.UNAVAILABLE, b"the node is shutting down", None, True),
        (ReplyStatus.INTERNAL, b"boom", RaftkvError, False),
    ],
)
def test_reply_statuses_raise_the_http_clients_errors(
    status: ReplyStatus, body: bytes, error: type[RaftkvError] | None, may_have_applied: bool
) -> None:
    def submit(request: ClientRequest, reply: ReplyFn) -> None:
        reply(ClientReply(request.request_id, status, 5, 1, 42, body))

    async def scenario() -> tuple[RaftkvError, RaftkvError]:
        async with serving(submit) as (_, port), AsyncNativeClient("127.0.0.1", port) as kv:
            with pytest.raises(RaftkvError) as write_error:
                await kv.put("k", "v")
            with pytest.raises(RaftkvError) as read_error:
                await kv.get("k")
            return write_error.value, read_error.value

    written, read = run(scenario())
    for raised in (written, read):
        assert type(raised) is (error or UnavailableError)
        assert body.decode() in raised.message
    if error is ConflictError:
        assert isinstance(written, ConflictError) and written.current_revision == 42
        assert written.status == 409
    if error is None:
        assert isinstance(written, UnavailableError) and isinstance(read, UnavailableError)
        assert written.may_have_applied is may_have_applied
        assert read.may_have_applied is False and written.status == 503


def test_a_request_with_no_reply_in_time_raises_unavailable() -> None:
    def never(request: ClientRequest, reply: ReplyFn) -> None:
        pass

    async def scenario() -> tuple[UnavailableError, UnavailableError, int]:
        async with serving(never) as (_, port), AsyncNativeClient("127.0.0.1", port) as kv:
            with pytest.raises(UnavailableError) as write:
                await kv.put("k", "v", timeout=0.1)
            with pytest.raises(UnavailableError) as read:
                await kv.get("k", timeout=0.1)
            return write.value, read.value, kv.in_flight

    write, read, left = run(scenario())
    assert write.may_have_applied and "may or may not have been applied" in write.message
    assert not read.may_have_applied and "no reply from 127.0.0.1:" in read.message
    assert left == 0  # given-up requests are forgotten


def test_a_lost_connection_fails_what_is_in_flight_and_the_next_request_reconnects() -> None:
    async def scenario() -> tuple[UnavailableError, bytes, int]:
        servers: list[IpcServer] = []

        def submit(request: ClientRequest, reply: ReplyFn) -> None:
            if request.op == Op.PUT:
                for connection in list(servers[0].connections):
                    connection.close()  # the node hangs up with the write in flight
            else:
                answer_ok(request, reply)

        async with serving(submit) as (server, port), AsyncNativeClient("127.0.0.1", port) as kv:
            servers.append(server)
            with pytest.raises(UnavailableError) as lost:
                await kv.put("k", "v")
            got = await kv.get("k")
            return lost.value, got.value, kv.connections_made

    lost, value, connections = run(scenario())
    assert lost.may_have_applied and "lost" in lost.message
    assert value == b"value"
    assert connections == 2


def test_a_node_of_another_cluster_is_refused() -> None:
    async def scenario() -> tuple[RaftkvError, int | None]:
        async with serving(answer_ok) as (_, port):
            kv = AsyncNativeClient("127.0.0.1", port, cluster_id=CLUSTER + 1)
            with pytest.raises(RaftkvError) as refused:
                await kv.connect()
            await kv.close()
            # The right id is accepted.
            async with AsyncNativeClient("127.0.0.1", port, cluster_id=CLUSTER) as right:
                return refused.value, right.node_id

    refused, node_id = run(scenario())
    assert "refused the connection: cluster id 6, expected 5" in refused.message
    assert node_id == NODE


def test_nobody_listening_raises_unavailable() -> None:
    port = free_ports(1)[0]

    async def scenario() -> UnavailableError:
        kv = AsyncNativeClient("127.0.0.1", port)
        with pytest.raises(UnavailableError) as refused:
            await kv.put("k", "v")
        await kv.close()
        return refused.value

    refused = run(scenario())
    assert not refused.may_have_applied and f"cannot connect to 127.0.0.1:{port}" in refused.message


def test_arguments_are_checked_before_anything_is_sent() -> None:
    async def scenario() -> None:
        kv = AsyncNativeClient("127.0.0.1", 1)
        with pytest.raises(ValueError, match="key must not be empty"):
            await kv.get("")
        with pytest.raises(TypeError, match="value must be bytes or str"):
            await kv.put("k", 5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="prev_revision"):
            await kv.delete("k", prev_revision=-1)
        with pytest.raises(ValueError, match="consistency"):
            await kv.get("k", consistency="eventual")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="limit"):
            await kv.list("p", 0)
        with pytest.raises(ValueError, match="timeout"):
            await kv.get("k", timeout=0)
        small = AsyncNativeClient("127.0.0.1", 1, max_frame_size=1024)
        with pytest.raises(BadRequestError, match="exceeds the frame limit") as too_big:
            await small.put("k", b"x" * 1024)
        assert too_big.value.status == 413
        assert kv.connections_made == small.connections_made == 0

    run(scenario())


# -- against a real cluster --------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("native-cluster"), 3, native=True) as running:
        yield running


def test_key_operations(cluster: LocalCluster) -> None:
    leader = cluster.leader()

    async def scenario() -> None:
        async with AsyncNativeClient(*cluster.client_addr(leader)) as kv:
            assert kv.node_id == leader
            first = await kv.put("ops/a", b"\x00\xffbinary")
            assert first.key == b"ops/a" and first.revision == first.index > 1
            assert first.term >= 1
            got = await kv.get(b"ops/a")
            assert got == KeyValue(b"ops/a", b"\x00\xffbinary", first.revision, first.revision, 1)

            second = await kv.put("ops/a", "ünïcode")
            assert (await kv.get("ops/a")).value == "ünïcode".encode()

            with pytest.raises(ConflictError) as stale_cas:
                await kv.put("ops/a", "lost", prev_revision=first.revision)
            assert stale_cas.value.current_revision == second.revision
            created = await kv.put("ops/lock", "me", prev_revision=0)
            with pytest.raises(ConflictError) as taken:
                await kv.put("ops/lock", "you", prev_revision=0)
            assert taken.value.current_revision == created.revision
            third = await kv.put("ops/a", "won", prev_revision=second.revision)
            assert third.revision > created.revision

            listed = await kv.list("ops/")
            assert [(i.key, i.value, i.version) for i in listed] == [
                (b"ops/a", b"won", 3),
                (b"ops/lock", b"me", 1),
            ]
            assert [i.key for i in await kv.list("ops/", 1)] == [b"ops/a"]

            with pytest.raises(ConflictError):
                await kv.delete("ops/lock", prev_revision=created.revision + 1000)
            deleted = await kv.delete("ops/lock", prev_revision=created.revision)
            assert deleted.revision > third.revision
            with pytest.raises(NotFoundError) as missing:
                await kv.get("ops/lock")
            assert missing.value.status == 404
            with pytest.raises(NotFoundError):
                await kv.delete("ops/lock")
            assert kv.connections_made == 1

    run(scenario())
    # The same state over HTTP.
    assert cluster.get(leader, "ops/a").content == b"won"
    assert cluster.get(leader, "ops/lock").status_code == 404


def test_the_node_refuses_what_a_worker_would(cluster: LocalCluster) -> None:
    node = cluster.followers()[0]

    async def scenario() -> tuple[BadRequestError, BadRequestError, ClientReply]:
        async with AsyncNativeClient(*cluster.client_addr(node)) as kv:
            with pytest.raises(BadRequestError) as long_key:
                await kv.put("k" * 4097, "v")
            with pytest.raises(BadRequestError) as big_value:
                await kv.put("big", b"x" * (1024 * 1024 + 1))
        # A cluster operation on the native port: answered, not carried out.
        reader, writer = await open_native_connection(*cluster.client_addr(node))
        writer.write(encode(ClientRequest(1, Op.SNAPSHOT)))
        decoder = FrameDecoder()
        frames: list[object] = []
        while not frames:
            frames.extend(decoder.feed(await reader.read(65536)))
        writer.close()
        reply = frames[0]
        assert isinstance(reply, ClientReply)
        return long_key.value, big_value.value, reply

    long_key, big_value, snapshot = run(scenario())
    assert "key is 4097 bytes; the limit is 4096 bytes" in long_key.message
    assert "value is 1048577 bytes" in big_value.message
    assert snapshot.status == ReplyStatus.BAD_REQUEST
    assert snapshot.body == b"operation SNAPSHOT is served over HTTP only"


def test_a_write_to_a_follower_is_committed_and_readable_on_the_leader(
    cluster: LocalCluster,
) -> None:
    leader = cluster.leader()
    follower = cluster.followers()[0]

    async def scenario() -> None:
        async with AsyncNativeClient(*cluster.client_addr(follower)) as kv:
            assert kv.node_id == follower
            written = await kv.put("forwarded/key", "via a follower")
        async with AsyncNativeClient(*cluster.client_addr(leader)) as kv:
            got = await kv.get("forwarded/key")
            assert got.value == b"via a follower" and got.mod_revision == written.revision

    run(scenario())
    over_http = cluster.get(leader, "forwarded/key", consistency="stale")
    assert over_http.content == b"via a follower"


def test_stale_and_linearizable_reads(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    followers = cluster.followers()
    reader_node, other = followers

    async def written_then_read() -> None:
        async with AsyncNativeClient(*cluster.client_addr(leader)) as writer:
            written = await writer.put("reads/key", "fresh")
            # The leader answered after applying it: its own stale read sees it.
            stale = await writer.get("reads/key", consistency="stale")
            assert stale.mod_revision == written.revision
        for node in followers:
            async with AsyncNativeClient(*cluster.client_addr(node)) as kv:
                # Linearizable: never older than an acknowledged write, on any node.
                assert (await kv.get("reads/key")).mod_revision == written.revision
                listed = await kv.list("reads/")
                assert [i.mod_revision for i in listed] == [written.revision]

    run(written_then_read())

    # With the rest of the cluster paused, a follower still serves stale reads from its
    # own state, and a linearizable read cannot be served.
    cluster.pause(leader)
    cluster.pause(other)
    try:

        async def alone() -> tuple[KeyValue, list[KeyValue], UnavailableError]:
            async with AsyncNativeClient(*cluster.client_addr(reader_node)) as kv:
                stale = await kv.get("reads/key", consistency="stale")
                listed = await kv.list("reads/", consistency="stale")
                with pytest.raises(UnavailableError) as no_quorum:
                    await kv.get("reads/key", timeout=1.0)
                return stale, listed, no_quorum.value

        stale, listed, no_quorum = run(alone())
    finally:
        cluster.resume(leader)
        cluster.resume(other)
    assert stale.value == b"fresh" and [i.key for i in listed] == [b"reads/key"]
    assert not no_quorum.may_have_applied
    cluster.wait_ready()


def test_many_requests_in_flight_on_one_connection(cluster: LocalCluster) -> None:
    node = cluster.followers()[0]  # through a follower: every write is forwarded too
    count = 2000

    async def scenario() -> None:
        async with AsyncNativeClient(*cluster.client_addr(node), timeout=30.0) as kv:
            puts = [asyncio.create_task(kv.put(f"many/{i:04}", f"value {i}")) for i in range(count)]
            await asyncio.sleep(0)  # every task has sent its request; none is answered
            assert kv.in_flight == count
            written = await asyncio.gather(*puts)
            assert len({w.revision for w in written}) == count
            gets = [kv.get(f"many/{i:04}") for i in range(count)]
            values = [got.value for got in await asyncio.gather(*gets)]
            assert values == [f"value {i}".encode() for i in range(count)]
            listed = await kv.list("many/", count)
            assert [(i.key, i.mod_revision) for i in listed] == [
                (w.key, w.revision) for w in written
            ]
            assert kv.connections_made == 1

    run(scenario(), timeout=120.0)


def test_hostile_bytes_close_only_their_connection(cluster: LocalCluster) -> None:
    node = cluster.followers()[0]
    host, port = cluster.client_addr(node)
    real_id = cluster_id_for(parse_cluster(cluster.cluster_document(), "cluster.json"))

    async def scenario() -> RaftkvError:
        async with AsyncNativeClient(host, port, cluster_id=real_id) as kept:
            await kept.put("hostile/before", "1")

            # Garbage instead of a handshake: hung up on, with nothing sent back.
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"\x05\x00\x00\x00\xfegarbage")
            assert await reader.read() == b""
            writer.close()
            # Garbage after a good handshake.
            reader, writer = await open_native_connection(host, port)
            writer.write(b"\xff\xff\xff\x7f")  # a frame far above the size limit
            assert await reader.read() == b""
            writer.close()
            # Another cluster's handshake.
            with pytest.raises(RaftkvError) as refused:
                await open_native_connection(host, port, cluster_id=real_id ^ 1)

            # The connection that behaved, and new ones, are served as before.
            await kept.put("hostile/after", "2")
            assert [i.key for i in await kept.list("hostile/")] == [
                b"hostile/after",
                b"hostile/before",
            ]
            async with AsyncNativeClient(host, port) as fresh:
                assert (await fresh.get("hostile/after")).value == b"2"
            return refused.value

    refused = run(scenario())
    assert f"cluster id {real_id ^ 1}, expected {real_id}" in refused.message
    log = cluster.nodes[node]
    wait_until(
        lambda: log.log_text().count("closing client connection from 127.0.0.1:") >= 2,
        10.0,
        what="the bad frames to be logged",
    )
    assert "bad frame: unknown message type 254" in log.log_text()
    assert "exceeds the limit" in log.log_text()
    wait_until(
        lambda: "refusing client connection from 127.0.0.1:" in log.log_text(),
        10.0,
        what="the refused handshake to be logged",
    )
    assert cluster.nodes[node].running


def test_the_blocking_client_is_shared_by_threads(cluster: LocalCluster) -> None:
    node = cluster.followers()[1]
    with NativeClient(*cluster.client_addr(node)) as kv:
        assert kv.node_id == node
        with ThreadPoolExecutor(8) as pool:
            written = list(pool.map(lambda i: kv.put(f"sync/{i:02}", str(i)), range(50)))
        assert len({w.revision for w in written}) == 50
        assert kv.get("sync/07").value == b"7"
        assert len(kv.list("sync/", 100)) == 50
        kv.delete("sync/07")
        with pytest.raises(NotFoundError):
            kv.get("sync/07")
        with pytest.raises(ConflictError):
            kv.put("sync/08", "x", prev_revision=0)
    with pytest.raises(UnavailableError, match="closed"):
        kv.get("sync/08")


def test_status_reports_the_client_address(cluster: LocalCluster) -> None:
    for node_id in cluster.nodes:
        response = cluster.client.get(
            f"{cluster.url(node_id)}/cluster/status", params={"local": "true"}
        )
        host, port = cluster.client_addr(node_id)
        assert response.json()["clientAddr"] == f"{host}:{port}"
