"""The Raft process answers a write only with the result of the entry that carries it.

Three RaftNode drivers run in this process on loopback (real transports, real logs).
The scenario of chaos campaign 3: a follower receives, for a batch it forwarded, an
answer naming an index where another command will sit (there, an answer meant for its
previous incarnation). Before the fix the follower answered its write with that other
command's result: "ok" for a write that was never applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from raftkv.node.node import RaftNode
from raftkv.node.node_config import NodeAddress, NodeConfig
from raftkv.testing.cluster import free_ports
from raftkv.wire.protocol import Op, ReplyStatus
from raftkv_ext.codec import ClientReply, ClientRequest, ProposeResponse


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.01)


async def start_cluster(base: Path) -> dict[int, RaftNode]:
    ports = free_ports(6)
    cluster = {
        i: NodeAddress(i, f"127.0.0.1:{ports[2 * i - 2]}", f"127.0.0.1:{ports[2 * i - 1]}")
        for i in (1, 2, 3)
    }
    nodes = {i: RaftNode(NodeConfig(i, cluster, base / f"node-{i}")) for i in cluster}
    for node in nodes.values():
        await node.start()

    def one_leader() -> bool:
        leaders = {n.core.leader_id for n in nodes.values()}
        return len(leaders) == 1 and 0 not in leaders

    await wait_for(one_leader, "a leader")
    return nodes


async def scenario(base: Path) -> None:
    nodes = await start_cluster(base)
    try:
        leader_id = next(iter(nodes.values())).core.leader_id
        leader = nodes[leader_id]
        follower_id = next(i for i in nodes if i != leader_id)
        follower = nodes[follower_id]
        replies: dict[int, ClientReply] = {}

        def submit(node: RaftNode, request_id: int, key: bytes, value: bytes) -> None:
            request = ClientRequest(request_id, Op.PUT, key, value, timeout_ms=5000)
            node.submit(request, lambda reply: replies.__setitem__(reply.request_id, reply))

        # A write through the follower works end to end.
        submit(follower, 1, b"first", b"1")
        await wait_for(lambda: 1 in replies, "the first write")
        assert replies[1].status == ReplyStatus.OK

        # The follower's next forwarded batch is held back from the leader, and an answer
        # for it arrives naming the index the leader will give to another write.
        held: list[int] = []
        core = follower.core
        core.forward = lambda batch_id, commands: held.append(batch_id)  # type: ignore[method-assign]
        submit(follower, 2, b"never-applied", b"2")
        await wait_for(lambda: bool(held), "the forward")
        next_index = leader.core.log.last_index + 1
        follower._on_messages(
            [ProposeResponse(leader_id, follower_id, core.term, held[0], next_index, True)]
        )
        submit(leader, 3, b"other", b"3")
        await wait_for(lambda: 3 in replies and 2 in replies, "both answers")

        assert replies[3].status == ReplyStatus.OK
        assert replies[3].index == next_index
        # The follower must not pass the other write's result off as its own.
        assert replies[2].status == ReplyStatus.TIMEOUT, replies[2]
        assert follower.sm.get(b"never-applied") is None
        assert follower.sm.get(b"other") is not None
    finally:
        for node in nodes.values():
            await node.stop()


def test_a_write_is_never_answered_with_another_entrys_result(tmp_path: Path) -> None:
    asyncio.run(scenario(tmp_path))
