"""The native load generator against the Raft process's own client server (IpcServer on
a TCP port) answering through a stand-in ``submit``."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from raftkv.kvbench.native_load import NativeLoad, _drive
from raftkv.kvbench.workloads import Workload

from raftkv.node.ipc_server import IpcServer
from raftkv.wire.protocol import Op, ReplyStatus
from raftkv_ext.codec import ClientReply, ClientRequest

Submit = Callable[[ClientRequest, Callable[[ClientReply], None]], None]


async def drive_against(submit: Submit, load: NativeLoad) -> tuple[list[float], int, float]:
    socket_dir = Path(tempfile.mkdtemp(prefix="rkv-"))
    server = IpcServer(
        socket_dir / "raft.sock", submit, max_frame_size=1 << 20, tcp_address=("127.0.0.1", 0)
    )
    await server.start()
    try:
        assert server.tcp_port is not None
        load.port = server.tcp_port
        return await _drive(load)
    finally:
        await server.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)


def test_a_preload_resends_the_writes_that_failed_until_every_key_is_written() -> None:
    stored: dict[bytes, bytes] = {}
    puts = 0

    def submit(request: ClientRequest, reply: Callable[[ClientReply], None]) -> None:
        nonlocal puts
        assert request.op == Op.PUT
        puts += 1
        if puts % 7 == 0:  # as a deposed leader answers the writes it had in flight
            reply(ClientReply(request.request_id, ReplyStatus.TIMEOUT, body=b"unknown"))
            return
        stored[request.key] = request.value
        reply(ClientReply(request.request_id, ReplyStatus.OK))

    load = NativeLoad("127.0.0.1", 0, 3, 8, 3600.0, 0.0, Workload("write", 10, 500), 0, 0, 500)
    latencies, errors, _ = asyncio.run(drive_against(submit, load))
    assert errors == 0
    assert set(stored) == {b"k%06d" % i for i in range(500)}
    assert puts > 500 and len(latencies) == 500


def test_a_measured_run_counts_failures_as_errors() -> None:
    def submit(request: ClientRequest, reply: Callable[[ClientReply], None]) -> None:
        status = ReplyStatus.UNAVAILABLE if request.key.endswith(b"7") else ReplyStatus.OK
        reply(ClientReply(request.request_id, status))

    load = NativeLoad("127.0.0.1", 0, 2, 4, 0.5, 0.0, Workload("write", 10, 100), 3)
    latencies, errors, measured = asyncio.run(drive_against(submit, load))
    assert errors > 0 and latencies
    assert measured > 0
