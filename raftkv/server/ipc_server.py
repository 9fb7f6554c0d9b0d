"""The Unix-socket server between the HTTP workers and the Raft process.

Each worker keeps one connection and pipelines ClientRequest frames on it; replies go
back as ClientReply frames in whatever order requests finish. Replies made during one
loop turn leave in one write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

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
from raftkv_ext.errors import CodecError

if TYPE_CHECKING:
    from raftkv_ext.codec import Message

SubmitFn = Callable[[ClientRequest, Callable[[ClientReply], None]], None]


class _WorkerConnection(asyncio.Protocol):
    def __init__(self, server: IpcServer) -> None:
        self._server = server
        self._decoder = FrameDecoder(server.max_frame_size)
        self._transport: asyncio.Transport | None = None
        self._outgoing: list[Message] = []
        self._flush_scheduled = False
        self._greeted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except CodecError as exc:
            self._server.logger.warning("closing worker connection: bad frame: %s", exc)
            self.close()
            return
        submit = self._server.submit
        reply = self.reply
        for frame in frames:
            if not self._greeted:
                if not self._greet(frame):
                    return
                continue
            if not isinstance(frame, ClientRequest):
                self._server.logger.warning(
                    "closing worker connection: unexpected %s frame", type(frame).__name__
                )
                self.close()
                return
            submit(frame, reply)

    def _greet(self, frame: Message) -> bool:
        """The first frame must be a handshake from a worker of this cluster."""
        server = self._server
        if not isinstance(frame, Handshake):
            reason = f"expected a handshake, got {type(frame).__name__}"
        elif frame.version != PROTOCOL_VERSION:
            reason = f"protocol version {frame.version}, expected {PROTOCOL_VERSION}"
        elif frame.cluster_id not in (0, server.cluster_id):
            reason = f"cluster id {frame.cluster_id}, expected {server.cluster_id}"
        else:
            self._greeted = True
            assert self._transport is not None
            self._transport.write(encode(HandshakeReply(True, server.node_id)))
            return True
        server.logger.warning("refusing worker connection: %s", reason)
        if self._transport is not None:
            self._transport.write(encode(HandshakeReply(False, server.node_id, reason)))
        self.close()
        return False

    def reply(self, message: ClientReply) -> None:
        if self._transport is None:
            return  # the worker went away; it fails its own requests
        self._outgoing.append(message)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._transport is not None and self._outgoing:
            self._transport.write(encode_batch(self._outgoing))
        self._outgoing = []

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class IpcServer:
    def __init__(
        self,
        path: Path,
        submit: SubmitFn,
        *,
        max_frame_size: int,
        cluster_id: int = 0,
        node_id: int = 0,
        logger: logging.Logger | None = None,
    ) -> None:
        self.path = path
        self.cluster_id = cluster_id
        self.node_id = node_id
        self.submit = submit
        self.max_frame_size = max_frame_size
        self.logger = logger or logging.getLogger("raftkv.ipc")
        self.connections: set[_WorkerConnection] = set()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a process that died
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(
            lambda: _WorkerConnection(self), path=str(self.path)
        )
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for connection in list(self.connections):
                connection.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
