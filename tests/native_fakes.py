"""The Raft process's own client server (``IpcServer``) on a free TCP port, answering
through a ``submit`` function the test supplies: a stand-in node for native clients."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from raftkv.kv.results import KeyValue
from raftkv.node.ipc_server import IpcServer
from raftkv.wire.protocol import Op, ReplyStatus, encode_key_value
from raftkv_ext.codec import ClientReply, ClientRequest

CLUSTER = 5
NODE = 9
ReplyFn = Callable[[ClientReply], None]
Submit = Callable[[ClientRequest, ReplyFn], None]


@contextlib.asynccontextmanager
async def serving(submit: Submit) -> AsyncIterator[tuple[IpcServer, int]]:
    """The server and its TCP port, for the duration of the block."""
    # A short directory: a Unix socket path must fit in about 100 bytes.
    socket_dir = Path(tempfile.mkdtemp(prefix="rkv-"))
    server = IpcServer(
        socket_dir / "raft.sock",
        submit,
        max_frame_size=1 << 20,
        cluster_id=CLUSTER,
        node_id=NODE,
        tcp_address=("127.0.0.1", 0),
    )
    await server.start()
    try:
        assert server.tcp_port is not None
        yield server, server.tcp_port
    finally:
        await server.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)


def answer_ok(request: ClientRequest, reply: ReplyFn) -> None:
    """Every write succeeds at index = revision = request id; every GET finds ``value``."""
    if request.op == Op.GET:
        stored = KeyValue(request.key, b"value", 1, 2, 3)
        reply(ClientReply(request.request_id, ReplyStatus.OK, 4, 1, 2, encode_key_value(stored)))
    else:
        rid = request.request_id
        reply(ClientReply(rid, ReplyStatus.OK, rid, 1, rid))
