"""The native client: raftkv's binary client protocol over TCP (``kvnode --client-addr``).

The protocol is the one the HTTP workers speak to the Raft process (docs/api.md, "Native
protocol"): a handshake, then ClientRequest frames pipelined on one connection and
ClientReply frames coming back in any order, matched by request id. It skips HTTP
parsing, JSON and the worker hop, and one connection carries thousands of requests in
flight; requests issued in one event-loop turn leave in one write.

``AsyncNativeClient`` talks to one node. That node forwards writes to the leader and
serves linearizable reads through it, as it does for HTTP requests. Every write carries
the client's exactly-once tag (client id, seq, first incomplete) the way the HTTP worker
tags its writes (``raftkv.wire.sessions``): a write that Raft happens to commit twice is
applied once, and a write answered STALE_SESSION (the store forgot the session; nothing
was applied) is sent once more under a new session.

The client neither retries nor moves to another node on its own: a request that gets no
answer within its timeout raises ``UnavailableError``, whose ``may_have_applied`` says
whether a write may have happened. The next request reconnects if the connection was
lost. Errors are those of ``raftkv.client``; their ``status`` is the HTTP status the same
answer has in the HTTP API. Keys and values are bytes; a ``str`` is sent as UTF-8.

A watch (``watch()``) is one WATCH request answered by a stream of replies on the
client's connection. It is the exception to "no retries": once started, a watch whose
connection is lost, or whose node ends it, is resumed on a new connection after the
last message received in full, for up to ``WATCH_RESUME_FOR`` seconds.

``NativeClient`` is a blocking wrapper: it runs an ``AsyncNativeClient`` on an event loop
in a thread of its own, so threads that share it share its one connection.

``open_native_connection`` opens a connection and does only the handshake, for code that
writes its own frames (a load generator). It and the connection the clients use live in
``raftkv.wire.pipelined_connection``; this module holds the operations, sessions and errors.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import itertools
import random
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from ssl import SSLContext
from types import TracebackType
from typing import Any, TypeVar

from raftkv.client.http_client import (
    _BACKOFF_CAP,
    _BACKOFF_START,
    Consistency,
    _check_consistency,
    _value_bytes,
)
from raftkv.client.watch import (
    SILENCE_INTERVALS,
    WatchEvent,
    WatchMessage,
    WatchState,
    check_progress_interval,
    check_since,
    decode_native_message,
)
from raftkv.kv.results import KeyValue
from raftkv.wire.errors import (
    WRITE_OUTCOME_UNKNOWN,
    BadRequestError,
    ConflictError,
    RaftkvError,
    UnavailableError,
    certainly_not_applied,
    row_for_reply_status,
)
from raftkv.wire.pipelined_connection import (
    DEFAULT_CONNECT_TIMEOUT,
    ConnectionLost,
    PipelinedConnection,
    open_native_connection,
    open_pipelined,
)
from raftkv.wire.protocol import (
    DEFAULT_LIST_LIMIT,
    MAX_LIST_LIMIT,
    MAX_REVISION,
    MAX_TIMEOUT_MS,
    REQUEST_OVERHEAD_BYTES,
    Flag,
    Op,
    ReplyStatus,
    decode_key_value,
    decode_key_values,
)
from raftkv.wire.sessions import SessionTag, WriteSession, send_tagged
from raftkv_ext.codec import DEFAULT_MAX_FRAME_SIZE, ClientReply, ClientRequest

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "MAX_LIST_LIMIT",
    "WATCH_RESUME_FOR",
    "AsyncNativeClient",
    "AsyncNativeWatch",
    "KeyValue",
    "NativeClient",
    "NativeWatch",
    "WatchEvent",
    "WriteResult",
    "open_native_connection",
]

DEFAULT_TIMEOUT = 5.0
"""Seconds a request may take, by default (the server is given the same deadline)."""
REPLY_GRACE_S = 0.5
"""How much longer than a request's timeout the client waits for its reply, so that the
server's own timeout answer, which says whether a write happened, normally comes first."""
WATCH_RESUME_FOR = 15.0
"""Seconds a started watch keeps trying to resume (with backoff) before it raises
UnavailableError."""

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class WriteResult:
    """A write's answer: the Raft ``index`` and ``term`` of its entry and the key's new
    ``revision`` (for a delete, the revision of the delete)."""

    key: bytes
    index: int
    term: int
    revision: int


# -- arguments ----------------------------------------------------------------------------


def _key(key: bytes | str) -> bytes:
    encoded = _value_bytes(key, "key")
    if not encoded:
        raise ValueError("key must not be empty")
    return encoded


def _consistency_flags(consistency: Consistency) -> int:
    _check_consistency(consistency)
    return int(Flag.STALE_READ) if consistency == "stale" else 0


def _condition(prev_revision: int | None) -> dict[str, int]:
    """The ClientRequest fields of a compare-and-set condition (none when None)."""
    if prev_revision is None:
        return {}
    if (
        isinstance(prev_revision, bool)
        or not isinstance(prev_revision, int)
        or not 0 <= prev_revision <= MAX_REVISION
    ):
        raise ValueError(f"prev_revision must be an int in [0, 2**63), got {prev_revision!r}")
    return {"prev_revision": prev_revision, "flags": int(Flag.HAS_PREV_REVISION)}


@dataclass(frozen=True, slots=True)
class _WatchSpec:
    """What one ``watch()`` asks for, checked."""

    target: bytes
    """The key, or the prefix (flag PREFIX)."""
    flags: int
    interval: float
    since: int | None
    with_progress: bool

    def fields(self, position: int | None) -> dict[str, Any]:
        """The WATCH request's fields, to follow the changes after ``position``."""
        fields: dict[str, Any] = {
            "key": self.target,
            "flags": self.flags,
            "limit": max(1, round(self.interval * 1000)),
        }
        if position is not None:
            fields["flags"] |= Flag.HAS_PREV_REVISION
            fields["prev_revision"] = position
        return fields


def _watch_spec(
    key: bytes | str | None,
    prefix: bytes | str | None,
    since: int | None,
    prev: bool,
    progress_interval: float | None,
    with_progress: bool,
) -> _WatchSpec:
    if (key is None) == (prefix is None):
        raise ValueError("watch takes exactly one of key and prefix")
    flags = int(Flag.WATCH_PREV) if prev else 0
    if key is not None:
        target = _key(key)
    else:
        assert prefix is not None
        target = _value_bytes(prefix, "prefix")
        flags |= Flag.PREFIX
    interval = check_progress_interval(progress_interval)
    return _WatchSpec(target, flags, interval, check_since(since), with_progress)


def _backoff(attempt: int) -> float:
    """As the HTTP client's: exponential from about 50 ms to about 1 s, with jitter."""
    base: float = min(_BACKOFF_CAP, _BACKOFF_START * 2.0 ** min(attempt, 30))
    return base * random.uniform(0.5, 1.0)


def _check_timeout(timeout: float) -> float:
    if not 0 < timeout * 1000 <= MAX_TIMEOUT_MS:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return timeout


# -- replies ------------------------------------------------------------------------------


def _message(reply: ClientReply) -> str:
    return reply.body.decode("utf-8", "replace").strip() or f"status {reply.status}"


def _error_for(reply: ClientReply, where: str, *, write: bool) -> RaftkvError:
    """The exception for a reply that is not OK: the one the HTTP client raises for the
    same answer, with the HTTP status the worker gives it (raftkv.wire.errors' table)."""
    row = row_for_reply_status(reply.status)
    message = _message(reply)
    if row.error is ConflictError:
        current = reply.revision
        detail = f" ({current})" if current else ": the key does not exist"
        return ConflictError(message + detail, status=row.http_status, current_revision=current)
    if row.error is UnavailableError:
        may_have_applied = write and not certainly_not_applied(message)
        if write and "applied" not in message:
            message += "; " + WRITE_OUTCOME_UNKNOWN
        return UnavailableError(message, status=row.http_status, may_have_applied=may_have_applied)
    if row.error is RaftkvError:
        return RaftkvError(
            f"{where} answered status {reply.status}: {message}", status=row.http_status
        )
    return row.error(message, status=row.http_status)


# -- the clients --------------------------------------------------------------------------


class AsyncNativeClient:
    """An asyncio client of one node's native port (``host``, ``port``).

    ``timeout``: seconds each request may take unless the call gives its own
    ``timeout=``; the node is given the same deadline. ``cluster_id``: refuse to talk to
    a node of another cluster (0: do not check). ``ssl``: TLS for a node started with
    ``--cert-file`` (e.g. ``raftkv.wire.tls_contexts.client_context(cacert)``). One client
    serves any number of concurrent tasks over its one connection; use it from one event
    loop.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        cluster_id: int = 0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        ssl: SSLContext | None = None,
    ) -> None:
        self._ssl = ssl
        self._host = host
        self._port = port
        self._where = f"{host}:{port}"
        self._timeout = _check_timeout(timeout)
        self._connect_timeout = _check_timeout(connect_timeout)
        self._cluster_id = cluster_id
        self._max_frame_size = max_frame_size
        self._ids = itertools.count(1)
        self._session = WriteSession()
        self._conn: PipelinedConnection | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self.node_id: int | None = None
        """The id of the node this client talks to, once connected."""
        self.connections_made = 0
        """How many connections this client has opened (1 unless one was lost)."""

    @property
    def address(self) -> tuple[str, int]:
        return self._host, self._port

    @property
    def client_id(self) -> int:
        """The exactly-once session id (changes if the store forgets the session)."""
        return self._session.client_id

    @property
    def in_flight(self) -> int:
        """Requests waiting for their reply."""
        return self._conn.in_flight if self._conn is not None else 0

    async def connect(self) -> None:
        """Connect now (otherwise the first request does). Raises UnavailableError when
        the node cannot be reached, RaftkvError when it refuses the handshake."""
        await self._connection()

    async def close(self) -> None:
        """Close the connection; requests in flight fail with UnavailableError."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close("the client was closed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await conn.closed

    async def __aenter__(self) -> AsyncNativeClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- operations -----------------------------------------------------------------------

    async def get(
        self,
        key: bytes | str,
        *,
        consistency: Consistency = "linearizable",
        timeout: float | None = None,
    ) -> KeyValue:
        """The key's value and revisions; NotFoundError if it does not exist."""
        key_bytes = _key(key)
        flags = _consistency_flags(consistency)
        reply = await self._read(Op.GET, timeout, key=key_bytes, flags=flags)
        try:
            return decode_key_value(key_bytes, reply.body)
        except ValueError as exc:
            raise RaftkvError(f"malformed GET reply from {self._where}: {exc}") from None

    async def put(
        self,
        key: bytes | str,
        value: bytes | str,
        *,
        prev_revision: int | None = None,
        timeout: float | None = None,
    ) -> WriteResult:
        """Write ``value``. With ``prev_revision``, only if the key's revision is that
        (0: only if the key does not exist), else ConflictError."""
        key_bytes = _key(key)
        fields = {"key": key_bytes, "value": _value_bytes(value), **_condition(prev_revision)}
        reply = await self._write(Op.PUT, timeout, fields)
        return WriteResult(key_bytes, reply.index, reply.term, reply.revision)

    async def delete(
        self,
        key: bytes | str,
        *,
        prev_revision: int | None = None,
        timeout: float | None = None,
    ) -> WriteResult:
        """Delete the key; NotFoundError if it does not exist, ConflictError if
        ``prev_revision`` is given and does not match."""
        key_bytes = _key(key)
        reply = await self._write(
            Op.DELETE, timeout, {"key": key_bytes, **_condition(prev_revision)}
        )
        return WriteResult(key_bytes, reply.index, reply.term, reply.revision)

    async def list(
        self,
        prefix: bytes | str = b"",
        limit: int = DEFAULT_LIST_LIMIT,
        *,
        consistency: Consistency = "linearizable",
        timeout: float | None = None,
    ) -> builtins.list[KeyValue]:
        """Up to ``limit`` (1 to MAX_LIST_LIMIT) keys starting with ``prefix``, by key."""
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= MAX_LIST_LIMIT
        ):
            raise ValueError(f"limit must be an int from 1 to {MAX_LIST_LIMIT}, got {limit!r}")
        flags = _consistency_flags(consistency)
        prefix_bytes = _value_bytes(prefix, "prefix")
        reply = await self._read(Op.LIST, timeout, key=prefix_bytes, limit=limit, flags=flags)
        try:
            return decode_key_values(reply.body)
        except ValueError as exc:
            raise RaftkvError(f"malformed LIST reply from {self._where}: {exc}") from None

    async def watch(
        self,
        key: bytes | str | None = None,
        *,
        prefix: bytes | str | None = None,
        since: int | None = None,
        prev: bool = False,
        progress_interval: float | None = None,
        with_progress: bool = False,
    ) -> AsyncNativeWatch:
        """Follow every change to ``key``, or to every key starting with ``prefix``
        (b"" for all), after revision ``since`` (default: from now, linearizably); the
        arguments are those of the HTTP client's ``watch``. Returns once the node has
        started the watch, an async iterator of ``WatchEvent``. Starting raises like
        any request; once started, a lost connection is resumed (``WATCH_RESUME_FOR``)."""
        spec = _watch_spec(key, prefix, since, prev, progress_interval, with_progress)
        watch = AsyncNativeWatch(self, spec)
        await watch._start()
        return watch

    # -- plumbing -------------------------------------------------------------------------

    async def _read(self, op: Op, timeout: float | None, **fields: Any) -> ClientReply:
        seconds = self._timeout if timeout is None else _check_timeout(timeout)
        reply = await self._call(self._request(op, seconds, fields), seconds, write=False)
        if reply.status != ReplyStatus.OK:
            raise _error_for(reply, self._where, write=False)
        return reply

    async def _write(self, op: Op, timeout: float | None, fields: dict[str, Any]) -> ClientReply:
        seconds = self._timeout if timeout is None else _check_timeout(timeout)

        async def send(tag: SessionTag) -> ClientReply:
            tagged = {
                **fields,
                "client_id": tag.client_id,
                "seq": tag.seq,
                "first_incomplete": tag.first_incomplete,
            }
            return await self._call(self._request(op, seconds, tagged), seconds, write=True)

        # A STALE_SESSION answer means the write was not applied: send_tagged starts a
        # new session and sends it once more.
        reply = await send_tagged(self._session, None, send)
        if reply.status == ReplyStatus.STALE_SESSION:
            raise RaftkvError(
                f"{self._where} refused a fresh client session: {_message(reply)}", status=500
            )
        if reply.status != ReplyStatus.OK:
            raise _error_for(reply, self._where, write=True)
        return reply

    def _request(self, op: Op, timeout: float, fields: dict[str, Any]) -> ClientRequest:
        size = len(fields.get("key", b"")) + len(fields.get("value", b"")) + REQUEST_OVERHEAD_BYTES
        if size > self._max_frame_size:
            # The node would close the connection on such a frame, failing every other
            # request on it: refuse this one alone, here.
            raise BadRequestError(
                f"a request of about {size} bytes exceeds the frame limit of "
                f"{self._max_frame_size} bytes",
                status=413,
            )
        timeout_ms = max(1, round(timeout * 1000))
        return ClientRequest(next(self._ids), int(op), timeout_ms=timeout_ms, **fields)

    async def _call(self, request: ClientRequest, timeout: float, *, write: bool) -> ClientReply:
        outcome = "; " + WRITE_OUTCOME_UNKNOWN if write else ""
        queued = False
        try:
            async with asyncio.timeout(timeout + REPLY_GRACE_S):
                conn = await self._connection()
                try:
                    future = conn.send(request)
                except ConnectionLost as exc:
                    raise UnavailableError(str(exc), may_have_applied=False) from None
                queued = True
                try:
                    return await future
                finally:
                    conn.forget(request.request_id)
        except ConnectionLost as exc:
            may_have_applied = write and exc.sent
            raise UnavailableError(
                f"{exc}{outcome if may_have_applied else ''}", may_have_applied=may_have_applied
            ) from None
        except TimeoutError:
            may_have_applied = write and queued
            raise UnavailableError(
                f"no reply from {self._where} within {timeout:g} s"
                f"{outcome if may_have_applied else ''}",
                may_have_applied=may_have_applied,
            ) from None

    async def _connection(self) -> PipelinedConnection:
        conn = self._conn
        if conn is not None and conn.lost is None:
            return conn
        async with self._lock:
            conn = self._conn
            if conn is not None and conn.lost is None:
                return conn
            if self._closed:
                raise UnavailableError("the client was closed", may_have_applied=False)
            conn = await self._open()
            self._conn = conn
            self.connections_made += 1
            return conn

    async def _open(self) -> PipelinedConnection:
        try:
            conn, self.node_id = await open_pipelined(
                self._host,
                self._port,
                cluster_id=self._cluster_id,
                max_frame_size=self._max_frame_size,
                timeout=self._connect_timeout,
                ssl=self._ssl,
            )
        except (OSError, TimeoutError) as exc:
            problem = "timed out" if isinstance(exc, TimeoutError) else str(exc)
            raise UnavailableError(
                f"cannot connect to {self._where}: {problem}", may_have_applied=False
            ) from None
        return conn


class _Resume(Exception):
    """The watch's stream is over but the watch may go on: ``error`` is what to raise
    when it may not (it never started, or resuming took too long)."""

    def __init__(self, error: UnavailableError) -> None:
        super().__init__(error.message)
        self.error = error


class AsyncNativeWatch:
    """A watch on a native connection (``AsyncNativeClient.watch``): ``async for`` its
    ``WatchEvent`` objects; ``revision`` is the position through which every change has
    been handed out. ``close()`` (``aclose()``, or the ``async with`` block) cancels it
    on the node (WATCH_CANCEL) and ends the iteration, also one waiting in another task.
    """

    def __init__(self, client: AsyncNativeClient, spec: _WatchSpec) -> None:
        self._client = client
        self._spec = spec
        self._state = WatchState(spec.since, with_progress=spec.with_progress)
        # The stream now open: its connection, request id and the replies received.
        self._conn: PipelinedConnection | None = None
        self._request_id = 0
        self._replies: asyncio.Queue[ClientReply | None] | None = None
        self._closed = False
        self._failures = 0
        self._give_up_at = 0.0

    @property
    def revision(self) -> int:
        revision = self._state.revision
        assert revision is not None  # known once started
        return revision

    async def _start(self) -> None:
        while not self._state.started:
            if not await self._pump():
                raise UnavailableError("the watch was closed while starting")

    def __aiter__(self) -> AsyncNativeWatch:
        return self

    async def __anext__(self) -> WatchEvent:
        while True:
            event = self._state.pop()
            if event is not None:
                return event
            if not await self._pump():
                raise StopAsyncIteration

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        replies = self._replies
        conn, request_id = self._drop_stream()
        if replies is not None:
            replies.put_nowait(None)  # wakes a task waiting for the next message
        await self._cancel(conn, request_id)

    async def aclose(self) -> None:
        """The same as ``close()``."""
        await self.close()

    async def __aenter__(self) -> AsyncNativeWatch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the stream -----------------------------------------------------------------------

    async def _pump(self) -> bool:
        """Take in the next message, opening a stream as needed; False once closed."""
        while not self._closed:
            try:
                if self._replies is None:
                    await self._subscribe()
                    if self._closed:  # while connecting
                        await self._cancel(*self._drop_stream())
                        return False
                self._state.take(await self._receive())
            except _Resume as broken:
                self._drop_stream()
                self._state.connection_lost()
                if self._closed:
                    return False
                try:
                    await self._pause(broken.error)
                except UnavailableError:
                    self._closed = True  # given up: the stream is gone, nothing to cancel
                    raise
                continue
            except BaseException as exc:
                if not isinstance(exc, asyncio.CancelledError):
                    await self.close()  # a failed watch is over; a cancelled one is not
                raise
            self._failures = 0
            return True
        return False

    async def _subscribe(self) -> None:
        client = self._client
        if client._closed:
            raise UnavailableError("the client was closed", may_have_applied=False)
        try:
            conn = await client._connection()
        except UnavailableError as exc:
            raise _Resume(exc) from None
        request = client._request(
            Op.WATCH, client._timeout, self._spec.fields(self._state.position)
        )
        replies: asyncio.Queue[ClientReply | None] = asyncio.Queue()
        try:
            conn.open_stream(request, replies.put_nowait)
        except ConnectionLost as exc:
            raise _Resume(UnavailableError(str(exc))) from None
        self._conn, self._request_id, self._replies = conn, request.request_id, replies

    async def _receive(self) -> WatchMessage:
        assert self._conn is not None and self._replies is not None
        where = self._client._where
        silence = SILENCE_INTERVALS * self._spec.interval
        try:
            async with asyncio.timeout(silence):
                reply = await self._replies.get()
        except TimeoutError:
            # The node sends a message at least every interval: it is gone without
            # closing the connection. Close it; requests still on it fail.
            reason = f"no watch message from {where} within {silence:g} s"
            self._conn.close(reason)
            raise _Resume(UnavailableError(reason)) from None
        if reply is None:
            raise _Resume(UnavailableError(f"connection to {where} lost"))
        if reply.status != ReplyStatus.OK:
            self._drop_stream()  # an error reply is the whole stream
            error = _error_for(reply, where, write=False)
            if isinstance(error, UnavailableError):
                raise _Resume(error)
            raise error
        message = decode_native_message(reply.revision, reply.body)
        if message.kind == "end":
            reason = message.reason or "no reason given"
            raise _Resume(UnavailableError(f"{where} ended the watch: {reason}"))
        return message

    async def _pause(self, error: UnavailableError) -> None:
        """Wait before the next attempt; raise ``error`` when there is to be none."""
        if not self._state.started:
            raise error  # starting a watch fails like any request
        now = time.monotonic()
        if self._failures == 0:
            self._give_up_at = now + WATCH_RESUME_FOR
        self._failures += 1
        remaining = self._give_up_at - now
        if self._failures > 1 and remaining <= 0:
            raise UnavailableError(
                f"could not resume the watch on {self._client._where} within "
                f"{WATCH_RESUME_FOR:g} s ({self._failures} attempts): {error.message}",
                status=error.status,
            )
        await asyncio.sleep(max(0.0, min(_backoff(self._failures - 1), remaining)))

    def _drop_stream(self) -> tuple[PipelinedConnection | None, int]:
        """Stop taking the open stream's replies; its connection and request id."""
        conn, self._conn, self._replies = self._conn, None, None
        if conn is not None:
            conn.close_stream(self._request_id)
        return conn, self._request_id

    async def _cancel(self, conn: PipelinedConnection | None, request_id: int) -> None:
        """Ask the node to end watch ``request_id`` of ``conn``, if it is still there."""
        if conn is None or conn.lost is not None or conn is not self._client._conn:
            return
        with contextlib.suppress(RaftkvError):
            # NOT_FOUND: the node had ended it already.
            await self._client._read(Op.WATCH_CANCEL, None, limit=request_id)


class NativeWatch:
    """``AsyncNativeWatch`` for ``NativeClient``: an iterator of ``WatchEvent``;
    ``close()`` (or the ``with`` block) cancels it, from any thread."""

    def __init__(self, client: NativeClient, watch: AsyncNativeWatch) -> None:
        self._client = client
        self._watch = watch

    @property
    def revision(self) -> int:
        return self._watch.revision

    def __iter__(self) -> NativeWatch:
        return self

    def __next__(self) -> WatchEvent:
        try:
            return self._client._run(self._watch.__anext__)
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        if not self._client._closed:
            self._client._run(self._watch.close)

    def __enter__(self) -> NativeWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class NativeClient:
    """A blocking client of one node's native port, safe to share between threads.

    It runs an ``AsyncNativeClient`` (same arguments, same methods, same errors) on an
    event loop in a thread of its own; ``close()`` (or the ``with`` block) stops it.
    """

    def __init__(self, host: str, port: int, **options: Any) -> None:
        self._client = AsyncNativeClient(host, port, **options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"raftkv-native-{host}:{port}", daemon=True
        )
        self._thread.start()
        self._closed = False

    @property
    def node_id(self) -> int | None:
        return self._client.node_id

    @property
    def client_id(self) -> int:
        return self._client.client_id

    def _run(self, make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
        if self._closed:
            raise UnavailableError("the client was closed", may_have_applied=False)
        future = asyncio.run_coroutine_threadsafe(make(), self._loop)
        try:
            return future.result()
        except BaseException:
            # Interrupted (Ctrl-C): the coroutine must not go on alone on the loop.
            future.cancel()
            raise

    def connect(self) -> None:
        self._run(self._client.connect)

    def get(
        self,
        key: bytes | str,
        *,
        consistency: Consistency = "linearizable",
        timeout: float | None = None,
    ) -> KeyValue:
        return self._run(lambda: self._client.get(key, consistency=consistency, timeout=timeout))

    def put(
        self,
        key: bytes | str,
        value: bytes | str,
        *,
        prev_revision: int | None = None,
        timeout: float | None = None,
    ) -> WriteResult:
        return self._run(
            lambda: self._client.put(key, value, prev_revision=prev_revision, timeout=timeout)
        )

    def delete(
        self, key: bytes | str, *, prev_revision: int | None = None, timeout: float | None = None
    ) -> WriteResult:
        return self._run(
            lambda: self._client.delete(key, prev_revision=prev_revision, timeout=timeout)
        )

    def list(
        self,
        prefix: bytes | str = b"",
        limit: int = DEFAULT_LIST_LIMIT,
        *,
        consistency: Consistency = "linearizable",
        timeout: float | None = None,
    ) -> builtins.list[KeyValue]:
        return self._run(
            lambda: self._client.list(prefix, limit, consistency=consistency, timeout=timeout)
        )

    def watch(
        self,
        key: bytes | str | None = None,
        *,
        prefix: bytes | str | None = None,
        since: int | None = None,
        prev: bool = False,
        progress_interval: float | None = None,
        with_progress: bool = False,
    ) -> NativeWatch:
        started = self._run(
            lambda: self._client.watch(
                key,
                prefix=prefix,
                since=since,
                prev=prev,
                progress_interval=progress_interval,
                with_progress=with_progress,
            )
        )
        return NativeWatch(self, started)

    def close(self) -> None:
        if self._closed:
            return
        self._run(self._client.close)
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> NativeClient:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
