"""Raft processes that serve watches, for the HTTP worker's watch tests.

``MemoryRaft`` stands in for the worker's IpcClient itself (``open_stream``,
``request``, ``next_request_id``): behind it are a real ``KVStateMachine`` and a real
``WatchHub``, and a stream's messages reach the worker through the event loop, in order,
as they would from the socket. A test writes with ``put``/``delete``/``delete_prefix``
(each a Raft entry applied at once, then the turn's publish), and can hold a stream back
(``backlog``), break every stream (``lose_streams``) or inject a message of its own.

``WatchFakeRaft`` is the socket fake of ``fake_raft.py`` taught the same watches, for
tests through the whole app.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from fake_raft import FakeRaft

from raftkv.http.serving.ipc_client import IpcUnavailable
from raftkv.kv import Delete, DeletePrefix, KVStateMachine, Put, encode_command
from raftkv.node.watch_hub import WatchHub
from raftkv.wire.protocol import Op, ReplyStatus
from raftkv_ext.codec import ClientReply, ClientRequest, encode_batch

T = TypeVar("T")
OnReply = Callable[[ClientReply | None], None]

_WATCH_OPS = (Op.WATCH, Op.WATCH_CANCEL, Op.READ_INDEX)


class Clock:
    """A clock that moves when told, or by ``step`` at every reading."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.step = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class MemoryStream:
    """One WATCH: the hub's sink for it, delivering to the worker's callback."""

    def __init__(self, raft: MemoryRaft, request: ClientRequest, on_reply: OnReply) -> None:
        self.raft = raft
        self.request = request
        self.on_reply = on_reply
        self.backlog = 0
        self.ended = False
        self.received: list[ClientReply] = []

    # -- WatchSink
    def send_watch(self, reply: ClientReply) -> None:
        if reply.request_id == self.request.request_id:
            loop = asyncio.get_running_loop()
            if self.raft.latency:
                loop.call_later(self.raft.latency, self.deliver, reply)
            else:
                loop.call_soon(self.deliver, reply)

    def write_backlog(self) -> int:
        return self.backlog

    def deliver(self, reply: ClientReply | None) -> None:
        if self.ended:
            return
        if reply is not None:
            self.received.append(reply)
        self.on_reply(reply)

    def end(self) -> None:
        """The worker's end of the stream: stop delivering, cancel it in the hub."""
        self.ended = True
        self.raft.ended.append(self.request.request_id)
        self.raft.hub.cancel(self, ClientRequest(0, Op.WATCH_CANCEL, limit=self.request.request_id))


class MemoryRaft:
    """An IpcClient whose Raft process is in memory (see the module's docstring)."""

    def __init__(self, *, history: int = 1000) -> None:
        self.sm = KVStateMachine(watch_history=history)
        self.clock = Clock()
        self.hub = WatchHub(lambda: self.sm, self._read_index, self.clock, progress_s=3600)
        self._ids = itertools.count(1)
        self.streams: list[MemoryStream] = []
        self.ended: list[int] = []
        self.unavailable = False
        self.read_indexes = 0
        self.latency = 0.0
        """Seconds a message takes to reach the worker (0: the next loop turn)."""

    # -- the IpcClient's interface -----------------------------------------------------

    def next_request_id(self) -> int:
        return next(self._ids)

    async def open_stream(self, request: ClientRequest, on_reply: OnReply) -> Callable[[], None]:
        if self.unavailable:
            raise IpcUnavailable("the Raft process is unreachable", sent=False)
        stream = MemoryStream(self, request, on_reply)
        self.streams.append(stream)
        self.hub.open(stream, request)
        return stream.end

    async def request(self, request: ClientRequest, timeout: float) -> ClientReply:
        if self.unavailable:
            raise IpcUnavailable("the Raft process is unreachable", sent=False)
        assert request.op == Op.READ_INDEX, request
        self.read_indexes += 1
        return ClientReply(request.request_id, ReplyStatus.OK, index=self.sm.applied_index)

    def _read_index(self, request: ClientRequest, reply: Callable[[ClientReply], None]) -> None:
        self.read_indexes += 1
        reply(ClientReply(request.request_id, ReplyStatus.OK, index=self.sm.applied_index))

    # -- the store, for tests -----------------------------------------------------------

    def _apply(self, command: Put | Delete | DeletePrefix) -> int:
        index = self.sm.applied_index + 1
        result = self.sm.apply(index, encode_command(command))
        assert result.ok, result
        # Time passes between turns: idle watches get their progress messages.
        self.clock.now += 1
        self.hub.publish()
        return index

    def put(self, key: bytes, value: bytes = b"v") -> int:
        return self._apply(Put(key, value))

    def delete(self, key: bytes) -> int:
        return self._apply(Delete(key))

    def delete_prefix(self, prefix: bytes) -> int:
        return self._apply(DeletePrefix(prefix))

    def noop(self) -> int:
        """An entry that writes no key, then the turn's publish."""
        index = self.sm.applied_index + 1
        self.sm.advance(index)
        self.clock.now += 1
        self.hub.publish()
        return index

    def tick(self) -> None:
        self.clock.now += 1
        self.hub.tick()

    def live_streams(self) -> list[MemoryStream]:
        return [s for s in self.streams if not s.ended]

    def stream_of(self, request_id: int) -> MemoryStream:
        (stream,) = [s for s in self.streams if s.request.request_id == request_id]
        return stream

    def lose_streams(self) -> None:
        """The connection drops: every open stream gets None and is forgotten."""
        for stream in self.live_streams():
            self.hub.drop(stream)
            asyncio.get_running_loop().call_soon(stream.deliver, None)


async def until(condition: Callable[[], bool], what: str = "the condition") -> None:
    """Run the loop until ``condition`` holds: a bounded number of loop turns, no clock."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{what} never came true")


async def settle() -> None:
    """Let every callback and task that is ready run (a bounded number of turns)."""
    for _ in range(50):
        await asyncio.sleep(0)


def run(scenario: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await scenario()

    return asyncio.run(main())


# -- the socket fake, with watches --------------------------------------------------------


class _TransportSink:
    """A worker connection of the socket fake, as the hub's WatchSink."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def send_watch(self, reply: ClientReply) -> None:
        if not self.transport.is_closing():
            self.transport.write(encode_batch([reply]))

    def write_backlog(self) -> int:
        return self.transport.get_write_buffer_size()


class WatchFakeRaft(FakeRaft):
    """``FakeRaft`` with WATCH, WATCH_CANCEL and READ_INDEX served by a real WatchHub
    over its state machine, published after every request that may have written."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.hub = WatchHub(lambda: self.sm, self._barrier, time.monotonic, progress_s=3600)
        self._sinks: dict[asyncio.Transport, _TransportSink] = {}

    def start(self) -> None:
        super().start()
        loop = self._loop
        assert loop is not None
        loop.call_soon_threadsafe(self._tick)

    def _tick(self) -> None:
        # As the Raft process does (every 0.1 s there): progress for idle watches.
        with self._lock:
            self.hub.tick()
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_later(0.05, self._tick)

    def _barrier(self, request: ClientRequest, reply: Callable[[ClientReply], None]) -> None:
        reply(ClientReply(request.request_id, ReplyStatus.OK, index=self.sm.applied_index))

    def _received(self, transport: asyncio.Transport, requests: list[ClientRequest]) -> None:
        watches = [r for r in requests if r.op in _WATCH_OPS]
        others = [r for r in requests if r.op not in _WATCH_OPS]
        if others:
            super()._received(transport, others)
        sink = self._sinks.get(transport)
        if sink is None:
            sink = self._sinks[transport] = _TransportSink(transport)
        with self._lock:
            self.requests.extend(watches)
            for request in watches:
                if request.op == Op.WATCH:
                    self.hub.open(sink, request)
                elif request.op == Op.WATCH_CANCEL:
                    self.hub.cancel(sink, request)
                else:
                    self._barrier(request, sink.send_watch)
            self.hub.publish()

    def write(self, key: bytes, value: bytes) -> int:
        """A write the worker did not send (test setup), seen by every watch."""
        return self._in_loop(lambda: self._write_now(key, value))

    def _write_now(self, key: bytes, value: bytes) -> int:
        with self._lock:
            result = self.sm.apply(self.sm.applied_index + 1, encode_command(Put(key, value)))
            assert result.ok, result
            self.hub.publish()
            return self.sm.applied_index

    def _in_loop(self, action: Callable[[], T]) -> T:
        loop = self._loop
        assert loop is not None

        async def call() -> T:
            return action()

        future = asyncio.run_coroutine_threadsafe(call(), loop)
        return cast(T, future.result(5))
