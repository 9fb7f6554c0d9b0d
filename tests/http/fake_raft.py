"""A stand-in for the Raft process, for testing the HTTP worker alone.

It serves the worker↔Raft Unix-socket protocol from an in-memory dict with real revision
semantics (every write takes the next log index; revisions are indexes), remembers every
request it got, and can be told to misbehave: answer UNAVAILABLE, answer late or never,
drop the connection, refuse sessions as stale, or hold replies and send them in reverse.

It runs its own event loop in a background thread, so a test can drive the worker from
any loop (Starlette's TestClient runs the app in a thread of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from dataclasses import dataclass, field
from typing import cast

import orjson

from raftkv.kv.auth_tables import AuthChangeRefused, AuthTables
from raftkv.kv.results import KeyValue
from raftkv.wire.protocol import (
    Flag,
    Op,
    ReplyStatus,
    encode_key_value,
    encode_key_values,
)
from raftkv_ext.codec import (
    ClientReply,
    ClientRequest,
    FrameDecoder,
    Handshake,
    HandshakeReply,
    encode,
    encode_batch,
)

WRITE_OPS = frozenset({Op.PUT, Op.DELETE, Op.DELETE_PREFIX, Op.AUTH_CHANGE})


@dataclass
class Forced:
    status: ReplyStatus
    body: bytes = b""
    revision: int = 0


@dataclass
class FakeRaft:
    path: str
    term: int = 3
    node_id: int = 1
    leader: int | None = 1
    # -- knobs a test may turn -----------------------------------------------------------
    unavailable: bool = False
    """Answer every KV request UNAVAILABLE (STATUS still answers, reporting no leader)."""
    delay: float = 0.0
    """Seconds to wait before answering each request."""
    silent: bool = False
    """Never answer (the worker's own timeout must fire)."""
    drop_next: bool = False
    """Close the connection when the next request arrives, without answering it."""
    stale_clients: set[int] = field(default_factory=set)
    """Answer STALE_SESSION to writes from these client ids (as an evicted session)."""
    hold: int = 0
    """Keep replies until this many are waiting, then send them all in reverse order."""
    forced: list[Forced] = field(default_factory=list)
    """Answers to give, in order, to the next KV requests instead of executing them."""
    metrics_text: bytes = (
        b"# HELP raftkv_is_leader 1 if this node is the leader, else 0.\n"
        b"# TYPE raftkv_is_leader gauge\nraftkv_is_leader 1.0\n"
    )
    """The Raft process's metrics, the answer to METRICS (while not ``unavailable``)."""
    # -- what happened -------------------------------------------------------------------
    requests: list[ClientRequest] = field(default_factory=list)
    handshakes: list[Handshake] = field(default_factory=list)
    frames_per_read: list[int] = field(default_factory=list)
    connections: int = 0
    data: dict[bytes, KeyValue] = field(default_factory=dict)
    index: int = 0
    auth: AuthTables = field(default_factory=AuthTables)
    auth_polls: int = 0
    """The access-control tables, changed by AUTH_CHANGE as the state machine does."""

    def __post_init__(self) -> None:
        self._sessions: dict[int, dict[int, ClientReply]] = {}
        self._held: list[tuple[asyncio.Transport, ClientReply]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._transports: set[asyncio.Transport] = set()
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Listen (again) on ``path``; returns once the socket accepts connections."""
        assert self._thread is None, "already running"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def serve() -> None:
            self._server = await loop.create_unix_server(lambda: _Conn(self), self.path)
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(serve())
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-raft", daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("fake Raft process did not start")

    def stop(self) -> None:
        """Close the listening socket and every connection (the worker sees them drop)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for transport in list(self._transports):
                transport.abort()
            self._held.clear()
            await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        self._loop = self._thread = self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def drop_connections(self) -> None:
        """Abort every open connection but keep listening."""
        loop = self._loop
        assert loop is not None

        def abort() -> None:
            for transport in list(self._transports):
                transport.abort()

        loop.call_soon_threadsafe(abort)

    # -- queries for tests ---------------------------------------------------------------

    def requests_of(self, op: Op) -> list[ClientRequest]:
        with self._lock:
            return [r for r in self.requests if r.op == op]

    def put_direct(self, key: bytes, value: bytes) -> KeyValue:
        """Store a key as if a write had been applied (test setup)."""
        self.index += 1
        return self._store(key, value, self.index)

    # -- the protocol --------------------------------------------------------------------

    def _received(self, transport: asyncio.Transport, requests: list[ClientRequest]) -> None:
        # The worker's polls for the auth tables are answered at once, whatever the knobs
        # say, and kept out of `requests`: the knobs and the record are about what the
        # worker sends on behalf of its clients.
        polls = [r for r in requests if r.op == Op.AUTH_TABLES]
        if polls:
            self.auth_polls += len(polls)
            self._send(transport, [self._answer(r) for r in polls])
            requests = [r for r in requests if r.op != Op.AUTH_TABLES]
            if not requests:
                return
        with self._lock:
            self.requests.extend(requests)
            self.frames_per_read.append(len(requests))
        replies: list[ClientReply] = []
        for request in requests:
            if self.drop_next:
                self.drop_next = False
                transport.abort()
                return
            if self.silent:
                continue
            replies.append(self._answer(request))
        if not replies:
            return
        if self.hold:
            self._held.extend((transport, reply) for reply in replies)
            if len(self._held) >= self.hold:
                held, self._held = self._held, []
                self.hold = 0
                for held_transport, reply in reversed(held):
                    self._send(held_transport, [reply])
            return
        if self.delay:
            assert self._loop is not None
            self._loop.call_later(self.delay, self._send, transport, replies)
        else:
            self._send(transport, replies)

    def _send(self, transport: asyncio.Transport, replies: list[ClientReply]) -> None:
        if not transport.is_closing():
            transport.write(encode_batch(replies))

    def _answer(self, request: ClientRequest) -> ClientReply:
        rid = request.request_id
        op = request.op
        if op == Op.STATUS:
            leader = None if self.unavailable else self.leader
            body = {
                "node_id": self.node_id,
                "leader": leader,
                "term": self.term,
                "commit_index": self.index,
                "role": "leader" if leader == self.node_id else "follower",
            }
            return ClientReply(rid, ReplyStatus.OK, self.index, self.term, 0, orjson.dumps(body))
        if op == Op.NODES:
            nodes = {"nodes": {"1": {"id": 1, "http_addr": "127.0.0.1:1"}}}
            return ClientReply(rid, ReplyStatus.OK, self.index, self.term, 0, orjson.dumps(nodes))
        if op == Op.METRICS and not self.unavailable:
            return ClientReply(rid, ReplyStatus.OK, body=self.metrics_text)
        if op == Op.AUTH_TABLES:
            revision = self.auth.revision
            body = b"" if request.prev_revision == revision else self.auth.to_json()
            return ClientReply(rid, ReplyStatus.OK, revision=revision, body=body)
        if self.forced:
            forced = self.forced.pop(0)
            return ClientReply(
                rid, forced.status, self.index, self.term, forced.revision, forced.body
            )
        write = op in WRITE_OPS
        if self.unavailable:
            message = b"no leader in time; the write was not applied" if write else b"no leader"
            return ClientReply(rid, ReplyStatus.UNAVAILABLE, body=message)
        if not write:
            if request.client_id or request.seq or request.first_incomplete:
                return ClientReply(rid, ReplyStatus.BAD_REQUEST, body=b"tagged read")
            return self._read(request)
        client_id, seq = request.client_id, request.seq
        if client_id == 0 or seq == 0 or request.first_incomplete > seq:
            return ClientReply(rid, ReplyStatus.BAD_REQUEST, body=b"bad session tag")
        if client_id in self.stale_clients:
            return ClientReply(rid, ReplyStatus.STALE_SESSION, body=b"session expired")
        session = self._sessions.setdefault(client_id, {})
        for done in [s for s in session if s < request.first_incomplete]:
            del session[done]
        if seq in session:
            first = session[seq]
            return ClientReply(
                rid, first.status, first.index, first.term, first.revision, first.body
            )
        reply = self._write(request)
        session[seq] = reply
        return reply

    def _read(self, request: ClientRequest) -> ClientReply:
        rid = request.request_id
        if request.op == Op.GET:
            kv = self.data.get(request.key)
            if kv is None:
                return ClientReply(rid, ReplyStatus.NOT_FOUND, self.index, self.term)
            return ClientReply(rid, ReplyStatus.OK, self.index, self.term, 0, encode_key_value(kv))
        if request.op == Op.LIST:
            keys = sorted(k for k in self.data if k.startswith(request.key))
            if request.limit:
                keys = keys[: request.limit]
            body = encode_key_values(self.data[k] for k in keys)
            return ClientReply(rid, ReplyStatus.OK, self.index, self.term, 0, body)
        return ClientReply(rid, ReplyStatus.BAD_REQUEST, body=b"unknown op")

    def _write(self, request: ClientRequest) -> ClientReply:
        rid = request.request_id
        self.index += 1
        index = self.index
        if request.op == Op.AUTH_CHANGE:
            try:
                self.auth.apply(index, request.value)
            except AuthChangeRefused as exc:
                status = ReplyStatus.NOT_FOUND if exc.missing else ReplyStatus.BAD_REQUEST
                return ClientReply(rid, status, index, self.term, 0, str(exc).encode())
            return ClientReply(rid, ReplyStatus.OK, index, self.term, index)
        key = request.key
        current = self.data.get(key)
        current_revision = current.mod_revision if current else 0
        cas = request.op != Op.DELETE_PREFIX and request.flags & Flag.HAS_PREV_REVISION
        if cas and request.prev_revision != current_revision:
            return ClientReply(
                rid,
                ReplyStatus.CONFLICT,
                index,
                self.term,
                current_revision,
                b"prev_revision does not match",
            )
        if request.op == Op.PUT:
            self._store(key, request.value, index)
            return ClientReply(rid, ReplyStatus.OK, index, self.term, index)
        if request.op == Op.DELETE:
            if current is None:
                return ClientReply(
                    rid, ReplyStatus.NOT_FOUND, index, self.term, 0, b"key not found"
                )
            del self.data[key]
            return ClientReply(rid, ReplyStatus.OK, index, self.term, index)
        doomed = [k for k in self.data if k.startswith(key)]
        for k in doomed:
            del self.data[k]
        body = orjson.dumps({"deleted": len(doomed)}) if doomed else b""
        return ClientReply(rid, ReplyStatus.OK, index, self.term, index if doomed else 0, body)

    def _store(self, key: bytes, value: bytes, index: int) -> KeyValue:
        current = self.data.get(key)
        if current is None:
            kv = KeyValue(key, value, index, index, 1)
        else:
            kv = KeyValue(key, value, current.create_revision, index, current.version + 1)
        self.data[key] = kv
        return kv


class _Conn(asyncio.Protocol):
    def __init__(self, fake: FakeRaft) -> None:
        self._fake = fake
        self._decoder = FrameDecoder()
        self._transport: asyncio.Transport | None = None
        self._greeted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._fake._transports.add(self._transport)
        self._fake.connections += 1

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        messages = self._decoder.feed(data)
        if messages and isinstance(messages[0], Handshake) and not self._greeted:
            # Every connection opens with a handshake, which the real Raft process checks.
            self._greeted = True
            self._fake.handshakes.append(messages[0])
            self._transport.write(encode(HandshakeReply(True, 1)))
            messages = messages[1:]
        requests = [m for m in messages if isinstance(m, ClientRequest)]
        assert len(requests) == len(messages), "the worker sent a frame that is not a request"
        if requests:
            self._fake._received(self._transport, requests)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._fake._transports.discard(self._transport)
