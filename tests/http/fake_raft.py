"""A stand-in for the Raft process, for testing the HTTP worker alone.

It is a fake *process*, not a fake store: there is no Raft (every write is committed at
once, at the next log index), but every write is the command the real Raft process
proposes (``encode_command``), applied to a real ``KVStateMachine`` and answered with the
real node's ``reply_for_result``; reads are answered from that state machine as the real
node answers them. So compare-and-set, revisions, versions, prefixes, exactly-once
sessions and the access-control tables all follow the store's own rules.

What it adds is control over the process: it remembers every request it got, and can be
told to misbehave: answer UNAVAILABLE, answer late or never, drop the connection, give
forced answers, or hold replies and send them in reverse.

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

from raftkv.kv import (
    Delete,
    KeyValue,
    KVStateMachine,
    Put,
    encode_command,
)
from raftkv.node.driver import KV_WRITE_OPS, command_for, lease_read_reply, read_reply
from raftkv.node.lease_clock import LeaseClock, LeaseClockSettings
from raftkv.node.requests import reply_for_result
from raftkv.wire.protocol import (
    Flag,
    Op,
    ReplyStatus,
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
    max_clients: int = 16
    """The state machine's client table: small, so that a test can evict a session the
    way a busy store does (see ``evict_session``)."""
    # -- knobs a test may turn -----------------------------------------------------------
    unavailable: bool = False
    """Answer every KV request UNAVAILABLE (STATUS still answers, reporting no leader)."""
    delay: float = 0.0
    """Seconds to wait before answering each request."""
    silent: bool = False
    """Never answer (the worker's own timeout must fire)."""
    drop_next: bool = False
    """Close the connection when the next request arrives, without answering it."""
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
    auth_polls: int = 0

    def __post_init__(self) -> None:
        self.sm = KVStateMachine(max_clients=self.max_clients)
        """The store itself; every write is applied to it at the next index."""
        self._held: list[tuple[asyncio.Transport, ClientReply]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._transports: set[asyncio.Transport] = set()
        self._lock = threading.Lock()
        self._evictions = 0

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

    # -- the store, for tests ------------------------------------------------------------

    @property
    def data(self) -> dict[bytes, KeyValue]:
        """Every key in the state machine, by key."""
        with self._lock:
            return {kv.key: kv for kv in self.sm.range()}

    @property
    def index(self) -> int:
        """The last log index applied (every write takes one)."""
        return self.sm.applied_index

    def requests_of(self, op: Op) -> list[ClientRequest]:
        with self._lock:
            return [r for r in self.requests if r.op == op]

    def put_direct(self, key: bytes, value: bytes, *, lease: int = 0) -> KeyValue:
        """Write a key through the state machine, as an untagged write the worker did not
        send (test setup); ``lease`` attaches it to that lease."""
        with self._lock:
            command = encode_command(Put(key, value, lease=lease))
            result = self.sm.apply(self.sm.applied_index + 1, command)
            assert result.ok, result
            stored = self.sm.get(key)
        assert stored is not None
        return stored

    def evict_session(self, client_id: int) -> None:
        """Make the state machine forget ``client_id``'s session, as a crowd of other
        clients does: tagged writes of new clients (deletes of an absent key, which
        change no key) until its least recently used session is gone."""
        with self._lock:
            while client_id in self.sm.clients:
                self._evictions += 1
                absent = b"\x00evict/%d" % self._evictions
                assert self.sm.get(absent) is None
                command = Delete(absent, client_id=(1 << 62) + self._evictions, seq=1)
                self.sm.apply(self.sm.applied_index + 1, encode_command(command))

    # -- the protocol --------------------------------------------------------------------

    def _received(self, transport: asyncio.Transport, requests: list[ClientRequest]) -> None:
        # The worker's polls for the auth tables are answered at once, whatever the knobs
        # say, and kept out of `requests`: the knobs and the record are about what the
        # worker sends on behalf of its clients.
        polls = [r for r in requests if r.op == Op.AUTH_TABLES]
        if polls:
            self.auth_polls += len(polls)
            with self._lock:
                answers = [self._answer(r) for r in polls]
            self._send(transport, answers)
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
            with self._lock:
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
        index = self.sm.applied_index
        if op == Op.STATUS:
            leader = None if self.unavailable else self.leader
            body = {
                "node_id": self.node_id,
                "leader": leader,
                "term": self.term,
                "commit_index": index,
                "role": "leader" if leader == self.node_id else "follower",
            }
            return ClientReply(rid, ReplyStatus.OK, index, self.term, 0, orjson.dumps(body))
        if op == Op.NODES:
            nodes = {"nodes": {"1": {"id": 1, "http_addr": "127.0.0.1:1"}}}
            return ClientReply(rid, ReplyStatus.OK, index, self.term, 0, orjson.dumps(nodes))
        if op == Op.METRICS and not self.unavailable:
            return ClientReply(rid, ReplyStatus.OK, body=self.metrics_text)
        if op == Op.AUTH_TABLES:
            # The tables only when they changed since the revision the worker holds.
            tables = self.sm.auth
            changed = b"" if request.prev_revision == tables.revision else tables.to_json()
            return ClientReply(rid, ReplyStatus.OK, revision=tables.revision, body=changed)
        if self.forced:
            forced = self.forced.pop(0)
            return ClientReply(rid, forced.status, index, self.term, forced.revision, forced.body)
        write = op in KV_WRITE_OPS
        if self.unavailable:
            message = b"no leader in time; the write was not applied" if write else b"no leader"
            return ClientReply(rid, ReplyStatus.UNAVAILABLE, body=message)
        if write:
            return self._write(request)
        return self._read(request)

    def _read(self, request: ClientRequest) -> ClientReply:
        leased = request.op in (Op.LEASE_INFO, Op.LEASE_LIST) or request.flags & Flag.WITH_LEASE
        if leased:
            # Times left as a node that has not timed its leases yet answers them (-1);
            # lease timing is the driver's, tested in tests/node.
            clock = LeaseClock(LeaseClockSettings(election_timeout_s=1.0))
            return lease_read_reply(self.sm, clock, request, self.term, 0.0)
        if request.op in (Op.GET, Op.LIST):
            return read_reply(self.sm, request, self.term)  # the Raft process's own answer
        return ClientReply(request.request_id, ReplyStatus.BAD_REQUEST, body=b"unknown operation")

    def _write(self, request: ClientRequest) -> ClientReply:
        try:
            command = command_for(request)
        except ValueError as exc:
            return ClientReply(request.request_id, ReplyStatus.BAD_REQUEST, body=str(exc).encode())
        result = self.sm.apply(self.sm.applied_index + 1, command)
        return reply_for_result(request.request_id, self.term, result)


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
