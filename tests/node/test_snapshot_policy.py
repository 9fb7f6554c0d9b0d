"""When the Raft process takes a snapshot: every ``snapshot_entries`` applied entries,
and only once the commands applied since the last one reach ``snapshot_log_ratio`` of
its size (so a large state is not rewritten every few thousand writes)."""

from __future__ import annotations

import asyncio
import itertools
import logging
from pathlib import Path

import pytest

import raftkv.node.local_snapshots as local_snapshots_module
from raftkv.node.node import RaftNode
from raftkv.node.node_config import NodeAddress, NodeConfig
from raftkv.storage.errors import StorageCorruptionError
from raftkv.storage.snapshots import StoredSnapshot
from raftkv.testing.cluster import free_ports
from raftkv.wire.protocol import Op, ReplyStatus
from raftkv_ext.codec import ClientReply, ClientRequest


async def snapshot_indexes(base: Path, ratio: float) -> list[int]:
    http, rpc = free_ports(2)
    cluster = {1: NodeAddress(1, f"127.0.0.1:{http}", f"127.0.0.1:{rpc}")}
    node = RaftNode(NodeConfig(1, cluster, base, snapshot_entries=5, snapshot_log_ratio=ratio))
    await node.start()
    taken: list[int] = []
    try:
        while node.core.leader_id != 1:
            await asyncio.sleep(0.01)
        for i in range(60):
            done: asyncio.Future[ClientReply] = asyncio.get_running_loop().create_future()
            request = ClientRequest(i + 1, Op.PUT, b"key-%03d" % i, b"v" * 200)
            node.submit(request, done.set_result)
            assert (await done).status == ReplyStatus.OK
            # Let a forked snapshot finish before the next write, so each one due is taken.
            for _ in range(200):
                if not node.local_snapshots.busy:
                    break
                await asyncio.sleep(0.01)
                node.local_snapshots.reap()
            if node.latest_snapshot is not None:
                index = node.latest_snapshot.meta.index
                if not taken or taken[-1] != index:
                    taken.append(index)
    finally:
        await node.stop()
    return taken


def test_entries_alone_decide_with_a_zero_ratio(tmp_path: Path) -> None:
    taken = asyncio.run(snapshot_indexes(tmp_path, 0.0))
    # A snapshot about every 5 entries of the 60 writes.
    assert len(taken) >= 10, taken
    assert all(b - a <= 7 for a, b in itertools.pairwise(taken)), taken


def test_a_ratio_waits_for_the_log_to_reach_a_share_of_the_snapshot(tmp_path: Path) -> None:
    taken = asyncio.run(snapshot_indexes(tmp_path, 1.0))
    # Each snapshot holds every key so far (about 230 bytes each); the next waits for as
    # many bytes of new commands, so the gaps grow with the state.
    gaps = [b - a for a, b in itertools.pairwise(taken)]
    assert len(taken) >= 3, taken
    assert gaps == sorted(gaps) and gaps[-1] > 2 * gaps[0], taken


def test_a_snapshot_file_that_fails_its_check_is_removed_and_the_log_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def damaged(path: str) -> StoredSnapshot:
        raise StorageCorruptionError(path, "bad checksum", 4096)

    monkeypatch.setattr(local_snapshots_module, "verify_snapshot_file", damaged)

    async def scenario() -> tuple[RaftNode, list[str], int]:
        http, rpc = free_ports(2)
        cluster = {1: NodeAddress(1, f"127.0.0.1:{http}", f"127.0.0.1:{rpc}")}
        config = NodeConfig(1, cluster, tmp_path, snapshot_entries=5, snapshot_log_ratio=0.0)
        node = RaftNode(config)
        await node.start()
        try:
            while node.core.leader_id != 1:
                await asyncio.sleep(0.01)
            for i in range(12):
                done: asyncio.Future[ClientReply] = asyncio.get_running_loop().create_future()
                node.submit(ClientRequest(i + 1, Op.PUT, b"k%d" % i, b"v"), done.set_result)
                assert (await done).status == ReplyStatus.OK
            while node.local_snapshots.busy:
                await asyncio.sleep(0.01)
                node.local_snapshots.reap()
            files = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
            return node, files, node.core.log.boundary_index
        finally:
            await node.stop()

    with caplog.at_level(logging.ERROR, logger="raftkv"):
        node, files, boundary = asyncio.run(scenario())
    assert node.latest_snapshot is None
    assert files == []
    assert boundary == 0  # nothing compacted behind a snapshot that is not there
    assert "failed its check" in caplog.text
    assert "corrupt at byte offset 4096: bad checksum" in caplog.text


def test_a_storage_error_while_compacting_behind_a_snapshot_stops_the_node(
    tmp_path: Path,
) -> None:
    async def scenario() -> RaftNode:
        http, rpc = free_ports(2)
        cluster = {1: NodeAddress(1, f"127.0.0.1:{http}", f"127.0.0.1:{rpc}")}
        config = NodeConfig(
            1, cluster, tmp_path, snapshot_entries=5, snapshot_log_ratio=0.0, snapshot_retain=1
        )
        node = RaftNode(config)
        await node.start()
        try:
            while node.core.leader_id != 1:
                await asyncio.sleep(0.01)

            def failing_compact(index: int) -> None:
                raise OSError(5, "Input/output error")

            node.core.compact = failing_compact  # type: ignore[method-assign]
            for i in range(12):
                done: asyncio.Future[ClientReply] = asyncio.get_running_loop().create_future()
                node.submit(ClientRequest(i + 1, Op.PUT, b"k%d" % i, b"v"), done.set_result)
                await done
            for _ in range(500):
                if node.stopped.is_set():
                    break
                await asyncio.sleep(0.01)
                node.local_snapshots.reap()
            return node
        finally:
            await node.stop()

    node = asyncio.run(scenario())
    assert isinstance(node.fatal_error, OSError)
    assert "Input/output error" in str(node.fatal_error)
