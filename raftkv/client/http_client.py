"""The Python client of raftkv: ``Client`` (blocking) and ``AsyncClient`` (asyncio).

Both speak the HTTP API (docs/api.md) and share one implementation of everything that is
not I/O. Each operation is written once, as a *plan*: a generator that yields the HTTP
requests to send and the pauses to take, and receives the responses (or has the transport
error thrown into it). ``Client`` runs plans with an ``httpx.Client`` and ``time.sleep``,
``AsyncClient`` with an ``httpx.AsyncClient`` and ``asyncio.sleep``, so retries, leader
discovery, exactly-once tagging and error mapping behave the same in both.

Routing. The client is given one or more node URLs. Writes and linearizable reads go to
the leader when it is known (any node accepts them, the leader saves a forwarding hop);
the leader's address is learnt from a node's ``/cluster/status?local=true``
(``leaderHttpAddr``). Other requests go to the current endpoint. After a connection
failure or a 503 the client retries, with exponential backoff and jitter, until
``retry_for`` seconds have passed: on the next endpoint, or on the leader once more, then
on the leader the nodes elect next (see ``_Router``).

Exactly once. Every key write (a transaction too) carries ``X-Raftkv-Client-Id``,
``X-Raftkv-Seq`` and ``X-Raftkv-First-Incomplete``. A retry re-sends the same seq, so the
state machine applies the write once and answers a repeat with the first answer. A seq
leaves the outstanding set when its write is answered or given up. ``410`` (the store no
longer knows the session) starts a new session and re-sends the write under it, unless an
earlier attempt of that write may have been applied, in which case its outcome is unknown
and the call raises ``UnavailableError(may_have_applied=True)``.

Watches. ``watch()`` streams NDJSON from ``GET /watch``; the stream is a plan too, whose
actions open the stream, read its next line and hand what was received to the caller,
so that reconnecting (to the next endpoint, with backoff, resuming after the last
message received in full) is written once for both clients. ``raftkv.client.watch``
turns the lines into events.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import json
import os
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, TypeVar, cast
from urllib.parse import quote, urlencode

import httpx

from raftkv.client.answers import KeyValue, WriteResult, int_field, key_value, write_result
from raftkv.client.auth_header import authorization_header
from raftkv.client.leases import (
    LeaseGrant,
    LeaseInfo,
    check_lease_id,
    check_ttl,
    lease_grant,
    lease_info,
)
from raftkv.client.txn import Compare, TxnOp, TxnResponse, parse_txn_response, txn_document
from raftkv.client.watch import (
    SILENCE_INTERVALS,
    LineSplitter,
    WatchEvent,
    WatchState,
    check_progress_interval,
    check_since,
    parse_json_message,
)
from raftkv.wire.errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RaftkvError,
    UnavailableError,
    certainly_not_applied,
    error_class_for_http_status,
)
from raftkv.wire.http_headers import (
    HEADER_BACKUP_INDEX,
    HEADER_BACKUP_SHA256,
    HEADER_BACKUP_TERM,
)
from raftkv.wire.protocol import DEFAULT_LIST_LIMIT, U64_MAX
from raftkv.wire.sessions import (
    HEADER_CLIENT_ID,
    HEADER_FIRST_INCOMPLETE,
    HEADER_SEQ,
    SessionTag,
    random_client_id,
)
from raftkv.wire.tls_contexts import client_context

__all__ = [
    "AsyncClient",
    "AsyncWatch",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "Consistency",
    "KeyValue",
    "NotFoundError",
    "PermissionDeniedError",
    "RaftkvError",
    "UnavailableError",
    "Watch",
    "WatchEvent",
    "WriteResult",
]

Consistency = Literal["linearizable", "stale"]

DEFAULT_ENDPOINT = "http://127.0.0.1:8001"

_BACKOFF_START = 0.05
_BACKOFF_CAP = 1.0
_DISCOVERY_TIMEOUT_CAP = 2.0
_CONNECT_TIMEOUT_CAP = 2.0
_REDISCOVER_AFTER = 1.0
"""With no usable leader known, ask for one at most this often (seconds)."""
_AVOID_FIRST = 2.0
_AVOID_CAP = 60.0
"""A leader address that failed twice in a row is not used for _AVOID_FIRST seconds,
doubling with each further failure up to _AVOID_CAP, so that an address the client cannot
reach (behind NAT, say) costs a failed attempt a minute while followers forward the
requests."""
_SLOW_OPERATION_TIMEOUT = 60.0
"""Read timeout for calls the server may take long to answer: adding a member and
waiting for its promotion, taking a snapshot, a backup."""
_MAX_RENEWALS = 3
_RETRYABLE_STATUS = frozenset({502, 503, 504})
_JSON = "application/json"
_NDJSON = "application/x-ndjson"

_T = TypeVar("_T")


# -- plans: operations as generators of I/O actions ---------------------------------------


@dataclass(frozen=True)
class _Send:
    """Send one request; the runner answers with the httpx.Response (body read), or a
    _Downloaded when ``download_to`` is set and the answer is 200, or throws the error."""

    method: str
    url: str
    headers: dict[str, str]
    content: bytes | None
    timeout: httpx.Timeout
    download_to: Path | None = None


@dataclass(frozen=True)
class _Sleep:
    seconds: float


@dataclass(frozen=True)
class _Downloaded:
    headers: httpx.Headers
    size: int
    sha256: str


_Action = _Send | _Sleep
_Plan = Generator[_Action, object, _T]


@dataclass(frozen=True)
class _OpenStream:
    """Open a stream with ``send`` (replacing the one open); the runner answers with the
    httpx.Response, its body read only when the status is not 200, or throws the error."""

    send: _Send


@dataclass(frozen=True)
class _NextLine:
    """The open stream's next complete line (bytes), None when the stream has ended;
    or the error that broke it."""


@dataclass(frozen=True)
class _Deliver:
    """A message was taken in: the runner returns to the caller, who takes the events
    it made, and resumes the plan when it wants more."""


_WatchAction = _Sleep | _OpenStream | _NextLine | _Deliver
_WatchPlan = Generator[_WatchAction, object, None]


@dataclass(frozen=True)
class _WatchSpec:
    """What one ``watch()`` asks for, checked; the query's ``since`` varies by attempt."""

    path: str
    params: tuple[tuple[str, str | bytes], ...]
    since: int | None
    with_progress: bool
    timeout: httpx.Timeout

    def target(self, position: int | None) -> str:
        params = list(self.params)
        if position is not None:
            params.append(("since", str(position)))
        return self.path + _query(params)


@dataclass(frozen=True)
class _Broken:
    """Why a watch's stream ended, and whether it delivered anything before."""

    problem: str
    received: bool
    status: int | None = None


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    """Already percent-encoded, with its query string."""
    kind: Literal["read", "write", "admin"]
    """``write``: a key write, tagged for exactly-once and retried on any failure;
    ``admin``: a cluster change, retried only when it certainly did not reach a server
    or was answered 503; ``read``: retried on any failure."""
    to_leader: bool
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes | None = None
    slow: bool = False
    download_to: Path | None = None


class _WriteTags:
    """The exactly-once tags of this client's writes (its session with the store): the
    client id, the next seq, the seqs awaiting an answer. Shared by every thread using
    the client, hence the lock."""

    def __init__(self, client_id: int | None) -> None:
        if client_id is not None and not 1 <= client_id <= U64_MAX:
            raise ValueError(f"client_id must be between 1 and {U64_MAX}, got {client_id}")
        self._lock = threading.Lock()
        self._client_id = client_id if client_id is not None else random_client_id()
        self._next_seq = 1
        # Outstanding seqs in increasing order (handed out increasing; dicts keep
        # insertion order), so the first key is the lowest.
        self._outstanding: dict[int, None] = {}

    @property
    def client_id(self) -> int:
        return self._client_id

    def begin(self) -> SessionTag:
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            self._outstanding[seq] = None
            return SessionTag(self._client_id, seq, next(iter(self._outstanding)))

    def headers(self, tag: SessionTag) -> dict[str, str]:
        """The headers for one attempt of ``tag``'s write, with an up-to-date
        first_incomplete (an old session's tags keep the one they were given)."""
        with self._lock:
            first = tag.first_incomplete
            if tag.client_id == self._client_id and self._outstanding:
                first = min(next(iter(self._outstanding)), tag.seq)
        return {
            HEADER_CLIENT_ID: str(tag.client_id),
            HEADER_SEQ: str(tag.seq),
            HEADER_FIRST_INCOMPLETE: str(first),
        }

    def end(self, tag: SessionTag) -> None:
        """``tag``'s write has its answer or has been given up."""
        with self._lock:
            if tag.client_id == self._client_id:
                self._outstanding.pop(tag.seq, None)

    def renew(self, stale: SessionTag) -> None:
        """Start a new session if ``stale``'s is still the current one (several writes
        in flight may learn that the session is gone)."""
        with self._lock:
            if stale.client_id != self._client_id:
                return
            client_id = random_client_id()
            while client_id == stale.client_id:
                client_id = random_client_id()
            self._client_id = client_id
            self._next_seq = 1
            self._outstanding = {}


@dataclass
class _Failure:
    """A leader URL that failed: when, how many times in a row, and until when it is
    not to be used."""

    at: float
    strikes: int
    until: float


class _Router:
    """Which node to send a request to: the leader when known and wanted, else the
    current endpoint, moving on when one fails.

    A leader that fails once is tried again at once (an answer lost on the way is no
    reason to move). When it fails twice in a row it is presumed gone, and the other
    nodes keep naming it until they elect a new one; a write sent to one of them
    meanwhile would be forwarded to the gone leader and wait for the server's request
    timeout. So while the nodes still name it (for up to _AVOID_FIRST seconds) the client
    waits and asks again rather than sending; after that, or when they name no leader,
    it sends to an endpoint, which forwards the request or holds it until a leader is
    elected. A leader that keeps failing is avoided for longer and longer.
    """

    def __init__(self, endpoints: builtins.list[str]) -> None:
        self._lock = threading.Lock()
        self._endpoints = endpoints
        self._current = 0
        self._leader: str | None = None
        self._next_discovery = 0.0
        self._electing_until = 0.0
        self._failures: dict[str, _Failure] = {}

    @property
    def endpoints(self) -> builtins.list[str]:
        return list(self._endpoints)

    @property
    def leader(self) -> str | None:
        return self._leader

    def claim_discovery(self) -> builtins.list[str]:
        """The endpoints to ask for the leader, in order, if the leader is unknown and
        nobody asked recently (the claim holds off other threads for a while); else []."""
        now = time.monotonic()
        with self._lock:
            if self._leader is not None or now < self._next_discovery:
                return []
            self._next_discovery = now + _REDISCOVER_AFTER
            start = self._current % len(self._endpoints)
            return self._endpoints[start:] + self._endpoints[:start]

    def learn(self, asked: str, response: httpx.Response) -> bool:
        """Take the leader from node ``asked``'s ``/cluster/status`` answer; False if the
        node could not answer (ask another)."""
        if response.status_code != 200:
            self.failed(asked)
            return False
        try:
            document = response.json()
        except ValueError:
            document = None
        address = document.get("leaderHttpAddr") if isinstance(document, dict) else None
        url = _leader_url(asked, address) if isinstance(address, str) and address else None
        now = time.monotonic()
        with self._lock:
            self._electing_until = 0.0
            if url is None:
                return True
            failure = self._failures.get(url)
            if failure is None or now >= failure.until:
                self._leader = url
            elif failure.strikes == 2:
                # It has just been found gone and is still named: an election is due.
                self._electing_until = failure.at + _AVOID_FIRST
                self._next_discovery = 0.0
            return True

    def choose(self, to_leader: bool) -> str | None:
        """The base URL for the next attempt; None to wait (a new leader is expected)."""
        with self._lock:
            if to_leader:
                if self._leader is not None:
                    return self._leader
                if time.monotonic() < self._electing_until:
                    return None
            return self._endpoints[self._current % len(self._endpoints)]

    def failed(self, url: str) -> None:
        """A request to ``url`` failed (connection error or 503): use another node next,
        or, after the leader's first failure, the leader again."""
        now = time.monotonic()
        with self._lock:
            if url == self._leader:
                previous = self._failures.get(url)
                strikes = 1
                if previous is not None and now - previous.at < 2 * _AVOID_CAP:
                    strikes = previous.strikes + 1
                if strikes == 1:
                    self._failures[url] = _Failure(now, 1, now)
                    return
                span = min(_AVOID_FIRST * 2.0 ** (strikes - 2), _AVOID_CAP)
                self._failures[url] = _Failure(now, strikes, now + span)
                self._leader = None
            elif url == self._endpoints[self._current % len(self._endpoints)]:
                self._current += 1
            self._next_discovery = 0.0

    def succeeded(self, url: str) -> None:
        if url in self._failures:
            with self._lock:
                self._failures.pop(url, None)

    def forget_leader(self) -> None:
        with self._lock:
            self._leader = None
            self._next_discovery = 0.0


def _leader_url(asked: str, address: str) -> str | None:
    """The base URL of a leader whose ``http_addr`` is ``address`` ("host:port"), using
    the scheme of the node that told us; None if the address is not one to connect to."""
    scheme = httpx.URL(asked).scheme
    try:
        url = httpx.URL(f"{scheme}://{address}")
    except httpx.InvalidURL:
        return None
    if url.host in ("", "0.0.0.0", "::"):  # a wildcard bind address, not a place to go
        return None
    return f"{scheme}://{address}".rstrip("/")


def _normalize_endpoints(endpoints: str | Sequence[str]) -> list[str]:
    items = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    result: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"an endpoint must be a string, got {type(item).__name__}")
        for part in item.split(","):
            text = part.strip()
            if not text:
                continue
            if "://" not in text:
                text = "http://" + text
            try:
                url = httpx.URL(text)
            except httpx.InvalidURL as exc:
                raise ValueError(f"bad endpoint {part.strip()!r}: {exc}") from None
            if url.scheme not in ("http", "https") or not url.host:
                raise ValueError(f"bad endpoint {part.strip()!r}: want http(s)://host:port")
            if url.query or url.fragment:
                raise ValueError(f"bad endpoint {part.strip()!r}: no query or fragment")
            text = text.rstrip("/")
            if text not in result:
                result.append(text)
    if not result:
        raise ValueError("no endpoint given")
    return result


# -- encoding -----------------------------------------------------------------------------


def _key_bytes(key: str) -> bytes:
    # surrogateescape: a key listed from the store that is not UTF-8 comes back to the
    # caller with its bytes kept as surrogates, and goes out again as the same bytes.
    return key.encode("utf-8", "surrogateescape")


def _key_path(key: str, route: str = "/kv/") -> str:
    """``route`` (``/kv/``, ``/watch/``) and the key, each ``/``-separated segment
    percent-encoded (``.`` and ``..`` too, so that no URL normalisation removes them)."""
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, got {type(key).__name__}")
    segments = []
    for segment in _key_bytes(key).split(b"/"):
        if segment in (b".", b".."):
            segments.append("%2E" * len(segment))
        else:
            segments.append(quote(segment, safe=""))
    return route + "/".join(segments)


def _query(params: builtins.list[tuple[str, str | bytes]]) -> str:
    return "?" + urlencode(params, quote_via=quote) if params else ""


def _value_bytes(value: bytes | str, name: str = "value") -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(f"{name} must be bytes or str, got {type(value).__name__}")


def _check_consistency(consistency: str) -> None:
    if consistency not in ("linearizable", "stale"):
        raise ValueError(f"consistency must be 'linearizable' or 'stale', got {consistency!r}")


def _check_revision(name: str, revision: int | None) -> None:
    if revision is None:
        return
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
        raise ValueError(f"{name} must be a non-negative int, got {revision!r}")


def _json_body(response: httpx.Response) -> dict[str, Any]:
    try:
        document = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise RaftkvError(
            f"unexpected answer from {response.request.url}: not a JSON object "
            f"(HTTP {response.status_code})",
            status=response.status_code,
        )
    return document


def _error_message(response: httpx.Response) -> str:
    try:
        document = response.json()
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return str(document["error"])
    text = response.text.strip()
    if text:
        return text[:500]
    return response.reason_phrase or f"HTTP {response.status_code}"


def _error_for(response: httpx.Response) -> RaftkvError:
    """The exception for a final, non-retried error answer (raftkv.wire.errors'
    table says which)."""
    status = response.status_code
    message = _error_message(response)
    error = error_class_for_http_status(status)
    if error is ConflictError:
        current = -1
        with contextlib.suppress(ValueError):
            document = response.json()
            value = document.get("current_revision") if isinstance(document, dict) else None
            if isinstance(value, int) and not isinstance(value, bool):
                current = value
        return ConflictError(message, status=status, current_revision=current)
    return error(message, status=status)


_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
"""Transport errors raised before any byte of the request reached a server."""
_RETRYABLE_TRANSPORT = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError)


class _Core:
    """Everything but the I/O: configuration, session, routing, and the plans."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        timeout: float,
        retry_for: float,
        client_id: int | None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if retry_for < 0:
            raise ValueError(f"retry_for must not be negative, got {retry_for}")
        self.router = _Router(_normalize_endpoints(endpoints))
        self.write_tags = _WriteTags(client_id)
        self.retry_for = retry_for
        self.seconds = timeout
        self.timeout = httpx.Timeout(timeout, connect=min(timeout, _CONNECT_TIMEOUT_CAP))
        slow = max(timeout, _SLOW_OPERATION_TIMEOUT)
        self.slow_timeout = httpx.Timeout(slow, connect=min(timeout, _CONNECT_TIMEOUT_CAP))
        self.discovery_timeout = httpx.Timeout(min(timeout, _DISCOVERY_TIMEOUT_CAP))
        self._random = random.Random()

    def backoff(self, attempt: int) -> float:
        base: float = min(_BACKOFF_CAP, _BACKOFF_START * 2.0 ** min(attempt, 30))
        return base * self._random.uniform(0.5, 1.0)

    # -- the retry loop -------------------------------------------------------------------

    def target(self, to_leader: bool) -> _Plan[str | None]:
        """The base URL for the next attempt (None: wait, a new leader is expected),
        asking the nodes for the leader first when one is wanted, unknown, and not asked
        for recently."""
        if to_leader:
            for asked in self.router.claim_discovery():
                try:
                    answer = yield _Send(
                        "GET",
                        asked + "/cluster/status?local=true",
                        {"Accept": _JSON},
                        None,
                        self.discovery_timeout,
                    )
                except httpx.TransportError:
                    self.router.failed(asked)
                    continue
                assert isinstance(answer, httpx.Response)
                if self.router.learn(asked, answer):
                    break
        return self.router.choose(to_leader)

    def call(self, request: _Request) -> _Plan[httpx.Response | _Downloaded]:
        """Send ``request`` until it gets an answer that is not retried; return a
        success (2xx), raise the mapped error otherwise."""
        deadline = time.monotonic() + self.retry_for
        tag = self.write_tags.begin() if request.kind == "write" else None
        tries = 0
        renewals = 0
        may_have_applied = False
        timeout = self.slow_timeout if request.slow else self.timeout
        try:
            while True:
                tries += 1
                last_status: int | None = None
                base = yield from self.target(request.to_leader)
                if base is None:
                    problem = "waiting for the nodes to elect a new leader"
                else:
                    headers = dict(request.headers)
                    if tag is not None:
                        headers.update(self.write_tags.headers(tag))
                    send = _Send(
                        request.method,
                        base + request.path,
                        headers,
                        request.content,
                        timeout,
                        request.download_to,
                    )
                    try:
                        answer = yield send
                    except _RETRYABLE_TRANSPORT as exc:
                        reached = not isinstance(exc, _NOT_SENT)
                        problem = f"{base}: {type(exc).__name__}: {exc or 'no detail'}"
                        if request.kind == "admin" and reached:
                            raise UnavailableError(
                                f"lost the answer to {request.method} {request.path} "
                                f"({problem}); the change may or may not have been made",
                                may_have_applied=True,
                            ) from exc
                        if request.kind != "read" and reached:
                            may_have_applied = True
                        self.router.failed(base)
                    except httpx.TransportError as exc:
                        raise RaftkvError(f"{base}: {type(exc).__name__}: {exc}") from exc
                    else:
                        assert isinstance(answer, httpx.Response | _Downloaded)
                        if isinstance(answer, _Downloaded) or answer.status_code < 300:
                            self.router.succeeded(base)
                            return answer
                        status = answer.status_code
                        message = _error_message(answer)
                        if status == 410 and tag is not None:
                            if may_have_applied or renewals >= _MAX_RENEWALS:
                                raise UnavailableError(
                                    f"the store no longer knows this client's session "
                                    f"({message}) and an earlier attempt of this write may "
                                    "have been applied: its outcome is unknown",
                                    status=410,
                                    may_have_applied=may_have_applied,
                                )
                            # Certainly not applied: send it again at once, in a new session.
                            renewals += 1
                            self.write_tags.end(tag)
                            self.write_tags.renew(tag)
                            tag = self.write_tags.begin()
                            continue
                        if status not in _RETRYABLE_STATUS:
                            raise _error_for(answer)
                        if request.kind != "read" and not certainly_not_applied(message):
                            may_have_applied = True
                        problem = f"{base}: HTTP {status}: {message}"
                        last_status = status
                        self.router.failed(base)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    outcome = ""
                    if request.kind != "read":
                        outcome = (
                            "; it may or may not have been applied"
                            if may_have_applied
                            else "; it was not applied"
                        )
                    raise UnavailableError(
                        f"{request.method} {request.path}: no node could serve it within "
                        f"{self.retry_for:g}s ({tries} tries); last: {problem}{outcome}",
                        status=last_status,
                        may_have_applied=may_have_applied,
                    )
                yield _Sleep(min(self.backoff(tries - 1), remaining))
        finally:
            if tag is not None:
                self.write_tags.end(tag)

    def call_json(self, request: _Request) -> _Plan[dict[str, Any]]:
        answer = yield from self.call(request)
        assert isinstance(answer, httpx.Response)
        return _json_body(answer)

    # -- operations -----------------------------------------------------------------------

    def get(self, key: str, consistency: Consistency) -> _Plan[KeyValue]:
        _check_consistency(consistency)
        path = _key_path(key) + _query([("consistency", "stale")] if consistency == "stale" else [])
        document = yield from self.call_json(
            _Request(
                "GET",
                path,
                "read",
                to_leader=consistency == "linearizable",
                headers={"Accept": _JSON},
            )
        )
        return key_value(document)

    def get_value(
        self, key: str, default: bytes | None, consistency: Consistency
    ) -> _Plan[bytes | None]:
        try:
            kv = yield from self.get(key, consistency)
        except NotFoundError:
            return default
        return kv.value

    def put(
        self,
        key: str,
        value: bytes | str,
        prev_revision: int | None,
        ttl: float | None = None,
        lease: int | None = None,
    ) -> _Plan[WriteResult]:
        _check_revision("prev_revision", prev_revision)
        params: builtins.list[tuple[str, str | bytes]] = []
        if prev_revision is not None:
            params.append(("prev_revision", str(prev_revision)))
        if ttl is not None and lease is not None:
            raise ValueError("a write has a ttl or a lease, not both")
        if ttl is not None:
            params.append(("ttl", repr(check_ttl(ttl))))
        if lease is not None:
            params.append(("lease", str(check_lease_id(lease))))
        document = yield from self.call_json(
            _Request(
                "PUT",
                _key_path(key) + _query(params),
                "write",
                to_leader=True,
                headers={"Content-Type": "application/octet-stream", "Accept": _JSON},
                content=_value_bytes(value),
            )
        )
        return write_result(document)

    def delete(self, key: str, prev_revision: int | None) -> _Plan[WriteResult]:
        _check_revision("prev_revision", prev_revision)
        params: builtins.list[tuple[str, str | bytes]] = []
        if prev_revision is not None:
            params.append(("prev_revision", str(prev_revision)))
        document = yield from self.call_json(
            _Request(
                "DELETE",
                _key_path(key) + _query(params),
                "write",
                to_leader=True,
                headers={"Accept": _JSON},
            )
        )
        return write_result(document)

    def list(
        self, prefix: str, limit: int, consistency: Consistency
    ) -> _Plan[builtins.list[KeyValue]]:
        _check_consistency(consistency)
        params: builtins.list[tuple[str, str | bytes]] = [
            ("prefix", _key_bytes(prefix)),
            ("limit", str(limit)),
        ]
        if consistency == "stale":
            params.append(("consistency", "stale"))
        document = yield from self.call_json(
            _Request(
                "GET",
                "/kv" + _query(params),
                "read",
                to_leader=consistency == "linearizable",
                headers={"Accept": _JSON},
            )
        )
        items = document.get("items")
        if not isinstance(items, builtins.list) or not all(isinstance(i, dict) for i in items):
            raise RaftkvError("unexpected answer to a listing: no list of items")
        return [key_value(item) for item in items]

    def delete_prefix(self, prefix: str) -> _Plan[int]:
        document = yield from self.call_json(
            _Request(
                "DELETE",
                "/kv" + _query([("prefix", _key_bytes(prefix))]),
                "write",
                to_leader=True,
                headers={"Accept": _JSON},
            )
        )
        return int_field(document, "deleted")

    def lease_grant(self, ttl: float, lease_id: int | None) -> _Plan[LeaseGrant]:
        body: dict[str, Any] = {"ttl": check_ttl(ttl)}
        if lease_id is not None:
            body["id"] = check_lease_id(lease_id)
        document = yield from self.call_json(
            _Request(
                "POST",
                "/lease",
                "write",
                to_leader=True,
                headers={"Content-Type": _JSON, "Accept": _JSON},
                content=_dump_json(body),
            )
        )
        return lease_grant(document)

    def lease_keep_alive(self, lease_id: int) -> _Plan[LeaseGrant]:
        document = yield from self.call_json(
            _Request(
                "POST",
                f"/lease/{check_lease_id(lease_id)}/keepalive",
                "write",
                to_leader=True,
                headers={"Accept": _JSON},
            )
        )
        return lease_grant(document)

    def lease_revoke(self, lease_id: int) -> _Plan[int]:
        document = yield from self.call_json(
            _Request(
                "DELETE",
                f"/lease/{check_lease_id(lease_id)}",
                "write",
                to_leader=True,
                headers={"Accept": _JSON},
            )
        )
        return int_field(document, "deleted")

    def lease_info(self, lease_id: int, keys: bool, consistency: Consistency) -> _Plan[LeaseInfo]:
        _check_consistency(consistency)
        params: builtins.list[tuple[str, str | bytes]] = [("keys", "true" if keys else "false")]
        if consistency == "stale":
            params.append(("consistency", "stale"))
        document = yield from self.call_json(
            _Request(
                "GET",
                f"/lease/{check_lease_id(lease_id)}" + _query(params),
                "read",
                to_leader=consistency == "linearizable",
                headers={"Accept": _JSON},
            )
        )
        return lease_info(document)

    def leases(self, consistency: Consistency) -> _Plan[builtins.list[LeaseInfo]]:
        _check_consistency(consistency)
        params: builtins.list[tuple[str, str | bytes]] = []
        if consistency == "stale":
            params.append(("consistency", "stale"))
        document = yield from self.call_json(
            _Request(
                "GET",
                "/lease" + _query(params),
                "read",
                to_leader=consistency == "linearizable",
                headers={"Accept": _JSON},
            )
        )
        items = document.get("leases")
        if not isinstance(items, builtins.list) or not all(isinstance(i, dict) for i in items):
            raise RaftkvError("unexpected answer to a lease listing: no list of leases")
        return [lease_info(item) for item in items]

    def txn_json(self, document: Mapping[str, Any]) -> _Plan[dict[str, Any]]:
        """``POST /txn`` with ``document`` as it is: a write, so tagged for exactly-once
        (a retry gets the first answer, whichever branch it reported) and sent to the
        leader."""
        if not isinstance(document, Mapping):
            raise TypeError(f"a transaction document is a mapping, got {type(document).__name__}")
        return self.call_json(
            _Request(
                "POST",
                "/txn",
                "write",
                to_leader=True,
                headers={"Content-Type": _JSON, "Accept": _JSON},
                content=_dump_json(dict(document)),
            )
        )

    def txn(
        self, compares: Sequence[Compare], success: Sequence[TxnOp], failure: Sequence[TxnOp]
    ) -> _Plan[TxnResponse]:
        # Built before anything is sent: a TypeError or ValueError leaves no seq behind.
        document = txn_document(compares, success, failure)
        answer = yield from self.txn_json(document)
        return parse_txn_response(answer, success, failure)

    def status(self) -> _Plan[dict[str, Any]]:
        return self.call_json(_Request("GET", "/cluster/status", "read", to_leader=False))

    def nodes(self) -> _Plan[dict[str, Any]]:
        return self.call_json(_Request("GET", "/cluster/nodes", "read", to_leader=False))

    def add_member(
        self, node_id: int, rpc_addr: str, http_addr: str, wait: bool
    ) -> _Plan[dict[str, Any]]:
        body = {"id": node_id, "rpc_addr": rpc_addr, "http_addr": http_addr}
        return self.call_json(
            _Request(
                "POST",
                "/cluster/members" + _query([("wait", "true" if wait else "false")]),
                "admin",
                to_leader=True,
                headers={"Content-Type": _JSON, "Accept": _JSON},
                content=_dump_json(body),
                slow=wait,
            )
        )

    def remove_member(self, node_id: int) -> _Plan[dict[str, Any]]:
        return self.call_json(
            _Request("DELETE", f"/cluster/members/{int(node_id)}", "admin", to_leader=True)
        )

    def transfer_leader(self, to: int | None) -> _Plan[int]:
        body: dict[str, Any] = {} if to is None else {"id": int(to)}
        document = yield from self.call_json(
            _Request(
                "POST",
                "/cluster/leader",
                "admin",
                to_leader=True,
                headers={"Content-Type": _JSON, "Accept": _JSON},
                content=_dump_json(body),
            )
        )
        self.router.forget_leader()
        return int_field(document, "leader")

    def auth_request(
        self, method: str, path: str, document: dict[str, Any] | None
    ) -> _Plan[dict[str, Any]]:
        if not path.startswith("/auth/"):
            raise ValueError(f"not an auth management path: {path!r}")
        reading = method == "GET"
        headers = {"Accept": _JSON}
        if document is not None:
            headers["Content-Type"] = _JSON
        return self.call_json(
            _Request(
                method,
                path,
                "read" if reading else "write",
                to_leader=not reading,
                headers=headers,
                content=None if document is None else _dump_json(document),
            )
        )

    def snapshot(self) -> _Plan[dict[str, Any]]:
        return self.call_json(
            _Request("POST", "/cluster/snapshot", "admin", to_leader=True, slow=True)
        )

    def backup(self, path: str | os.PathLike[str]) -> _Plan[dict[str, Any]]:
        target = Path(path)
        partial = target.with_name(target.name + ".partial")
        answer = yield from self.call(
            _Request(
                "GET", "/cluster/backup", "read", to_leader=True, slow=True, download_to=partial
            )
        )
        try:
            if not isinstance(answer, _Downloaded):
                raise RaftkvError("unexpected answer to a backup: not a 200 with a body")
            expected = answer.headers.get(HEADER_BACKUP_SHA256, "").strip().lower()
            if not expected:
                raise RaftkvError(f"the backup came without the {HEADER_BACKUP_SHA256} header")
            if expected != answer.sha256:
                raise RaftkvError(
                    f"the backup is corrupt: its SHA-256 is {answer.sha256}, the server "
                    f"announced {expected}; nothing was written to {target}"
                )
            index = _header_int(answer.headers, HEADER_BACKUP_INDEX)
            term = _header_int(answer.headers, HEADER_BACKUP_TERM)
            os.replace(partial, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        return {
            "path": str(target),
            "index": index,
            "term": term,
            "size": answer.size,
            "sha256": answer.sha256,
        }

    # -- watches --------------------------------------------------------------------------

    def watch_spec(
        self,
        key: str | None,
        prefix: str | None,
        since: int | None,
        prev: bool,
        progress_interval: float | None,
        with_progress: bool,
    ) -> _WatchSpec:
        if (key is None) == (prefix is None):
            raise ValueError("watch takes exactly one of key and prefix")
        interval = check_progress_interval(progress_interval)
        params: builtins.list[tuple[str, str | bytes]] = []
        if key is not None:
            if key == "":
                raise ValueError("key must not be empty (prefix='' watches every key)")
            path = _key_path(key, "/watch/")
        else:
            if not isinstance(prefix, str):
                raise TypeError(f"prefix must be a str, got {type(prefix).__name__}")
            path = "/watch"
            params.append(("prefix", _key_bytes(prefix)))
        if prev:
            params.append(("prev", "true"))
        params.append(("progress", f"{interval:g}"))
        # The node sends a progress message after `interval` of quiet: a stream silent
        # for several intervals is dead (a node gone without a FIN) and is replaced.
        timeout = httpx.Timeout(
            self.seconds,
            connect=min(self.seconds, _CONNECT_TIMEOUT_CAP),
            read=SILENCE_INTERVALS * interval,
        )
        return _WatchSpec(path, tuple(params), check_since(since), with_progress, timeout)

    def watch(self, spec: _WatchSpec, state: WatchState) -> _WatchPlan:
        """Follow ``spec`` for ever, from node to node: each message goes into
        ``state`` and is delivered; a stream that breaks is replaced, after the last
        message received in full. Raises UnavailableError when no node could serve it
        for ``retry_for`` seconds, and the mapped error for a 4xx answer."""
        failures = 0
        give_up_at = 0.0
        while True:
            base = self.router.choose(False)
            assert base is not None  # only a request for the leader waits
            broken = yield from self._watch_stream(base, spec, state)
            state.connection_lost()
            self.router.failed(base)
            now = time.monotonic()
            if broken.received:
                failures = 0
            if failures == 0:
                give_up_at = now + self.retry_for
            failures += 1
            remaining = give_up_at - now
            # A stream that breaks after serving is always tried once more at once.
            if failures > 1 and remaining <= 0:
                raise UnavailableError(
                    f"watch {spec.path}: no node could serve it within {self.retry_for:g}s "
                    f"({failures} attempts); last: {broken.problem}",
                    status=broken.status,
                )
            yield _Sleep(max(0.0, min(self.backoff(failures - 1), remaining)))

    def _watch_stream(
        self, base: str, spec: _WatchSpec, state: WatchState
    ) -> Generator[_WatchAction, object, _Broken]:
        """One stream from node ``base``, until it breaks."""
        send = _Send(
            "GET", base + spec.target(state.position), {"Accept": _NDJSON}, None, spec.timeout
        )
        try:
            response = yield _OpenStream(send)
        except _RETRYABLE_TRANSPORT as exc:
            return _Broken(_transport_problem(base, exc), received=False)
        except httpx.TransportError as exc:
            raise RaftkvError(f"{base}: {type(exc).__name__}: {exc}") from exc
        assert isinstance(response, httpx.Response)
        status = response.status_code
        if status >= 500:
            problem = f"{base}: HTTP {status}: {_error_message(response)}"
            return _Broken(problem, received=False, status=status)
        if status != 200:
            raise _error_for(response)
        self.router.succeeded(base)
        received = False
        try:
            while True:
                line = yield _NextLine()
                if line is None:
                    return _Broken(f"{base}: the stream ended", received=received)
                assert isinstance(line, bytes)
                if line.strip():
                    state.take(parse_json_message(line))
                    received = True
                    yield _Deliver()
        except _RETRYABLE_TRANSPORT as exc:
            return _Broken(_transport_problem(base, exc), received=received)


def _transport_problem(base: str, exc: Exception) -> str:
    return f"{base}: {type(exc).__name__}: {exc or 'no detail'}"


def _dump_json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def _header_int(headers: httpx.Headers, name: str) -> int:
    text = headers.get(name, "").strip()
    if not text.isascii() or not text.isdigit():
        raise RaftkvError(f"the backup came with a bad or missing {name} header: {text!r}")
    return int(text)


# -- running plans ------------------------------------------------------------------------


def _fsync(file: IO[bytes]) -> None:
    file.flush()
    os.fsync(file.fileno())


def _private_opener(path: str, flags: int) -> int:
    fd = os.open(path, flags, 0o600)
    # A file left by an earlier attempt keeps its mode; O_CREAT's goes through the umask.
    os.fchmod(fd, 0o600)
    return fd


def _save_sync(response: httpx.Response, path: Path) -> _Downloaded:
    digest = hashlib.sha256()
    size = 0
    try:
        # A backup is the whole store: readable by its owner only, whatever the umask.
        with open(path, "wb", opener=_private_opener) as file:
            for chunk in response.iter_bytes():
                file.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            _fsync(file)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise
    return _Downloaded(response.headers, size, digest.hexdigest())


def _perform_sync(http: httpx.Client, send: _Send) -> httpx.Response | _Downloaded:
    if send.download_to is None:
        return http.request(
            send.method, send.url, headers=send.headers, content=send.content, timeout=send.timeout
        )
    with http.stream(
        send.method, send.url, headers=send.headers, content=send.content, timeout=send.timeout
    ) as response:
        if response.status_code != 200:
            response.read()
            return response
        return _save_sync(response, send.download_to)


async def _save_async(response: httpx.Response, path: Path) -> _Downloaded:
    digest = hashlib.sha256()
    size = 0
    file = await asyncio.to_thread(open, path, "wb", opener=_private_opener)
    try:
        try:
            async for chunk in response.aiter_bytes():
                await asyncio.to_thread(file.write, chunk)
                digest.update(chunk)
                size += len(chunk)
            await asyncio.to_thread(_fsync, file)
        finally:
            file.close()
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise
    return _Downloaded(response.headers, size, digest.hexdigest())


async def _perform_async(http: httpx.AsyncClient, send: _Send) -> httpx.Response | _Downloaded:
    if send.download_to is None:
        return await http.request(
            send.method, send.url, headers=send.headers, content=send.content, timeout=send.timeout
        )
    async with http.stream(
        send.method, send.url, headers=send.headers, content=send.content, timeout=send.timeout
    ) as response:
        if response.status_code != 200:
            await response.aread()
            return response
        return await _save_async(response, send.download_to)


def _run_sync(http: httpx.Client, plan: _Plan[_T]) -> _T:
    reply: object = None
    error: Exception | None = None
    try:
        while True:
            try:
                action = plan.send(reply) if error is None else plan.throw(error)
            except StopIteration as stop:
                return cast(_T, stop.value)
            reply, error = None, None
            try:
                if isinstance(action, _Sleep):
                    time.sleep(action.seconds)
                else:
                    reply = _perform_sync(http, action)
            except Exception as exc:
                error = exc
    finally:
        plan.close()


async def _run_async(http: httpx.AsyncClient, plan: _Plan[_T]) -> _T:
    reply: object = None
    error: Exception | None = None
    try:
        while True:
            try:
                action = plan.send(reply) if error is None else plan.throw(error)
            except StopIteration as stop:
                return cast(_T, stop.value)
            reply, error = None, None
            try:
                if isinstance(action, _Sleep):
                    await asyncio.sleep(action.seconds)
                else:
                    reply = await _perform_async(http, action)
            except Exception as exc:
                error = exc
    finally:
        plan.close()


# -- running watch plans ------------------------------------------------------------------


class _Interrupted(httpx.NetworkError):
    """What a watch plan is told when the read or connection it waited for was cut short
    by Ctrl-C or a cancelled task: a broken stream, to resume from its position."""


def _if_interrupted(action: _Sleep | _OpenStream | _NextLine) -> Exception | None:
    """The error a plan gets for ``action`` if it never completes (a sleep cut short is
    just over)."""
    return None if isinstance(action, _Sleep) else _Interrupted("interrupted")


class _SyncLines:
    """The complete lines of a response body, read as they come."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.iter_bytes()
        self._splitter = LineSplitter()
        self._ready: deque[bytes] = deque()

    def next(self) -> bytes | None:
        while not self._ready:
            chunk = next(self._chunks, None)
            if chunk is None:
                return None
            self._ready.extend(self._splitter.feed(chunk))
        return self._ready.popleft()


class _AsyncLines:
    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.aiter_bytes()
        self._splitter = LineSplitter()
        self._ready: deque[bytes] = deque()

    async def next(self) -> bytes | None:
        while not self._ready:
            chunk = await anext(self._chunks, None)
            if chunk is None:
                return None
            self._ready.extend(self._splitter.feed(chunk))
        return self._ready.popleft()


class _SyncWatchRunner:
    """Runs a watch plan with an ``httpx.Client``, one delivery at a time."""

    def __init__(self, http: httpx.Client, plan: _WatchPlan) -> None:
        self._http = http
        self._plan = plan
        self._open = contextlib.ExitStack()  # the stream being read, if any
        self._lines: _SyncLines | None = None
        self._reply: object = None
        self._error: Exception | None = None

    def step(self, stopping: Callable[[], bool]) -> bool:
        """Run the plan to its next delivery: True then; False (and the runner closed)
        when the plan is over or ``stopping()`` says so before an I/O action."""
        while True:
            try:
                if self._error is None:
                    action = self._plan.send(self._reply)
                else:
                    action = self._plan.throw(self._error)
            except StopIteration:  # a plan that raised once is over
                self.close()
                return False
            except BaseException:
                self.close()
                raise
            self._reply, self._error = None, None
            if isinstance(action, _Deliver):
                return True
            if stopping():
                self.close()
                return False
            self._error = _if_interrupted(action)
            try:
                self._reply = self._perform(action)
                self._error = None
            except Exception as exc:
                self._error = exc

    def _perform(self, action: _Sleep | _OpenStream | _NextLine) -> object:
        if isinstance(action, _Sleep):
            time.sleep(action.seconds)
            return None
        if isinstance(action, _NextLine):
            return None if self._lines is None else self._lines.next()
        self._hang_up()
        send = action.send
        response = self._open.enter_context(
            self._http.stream(send.method, send.url, headers=send.headers, timeout=send.timeout)
        )
        if response.status_code == 200:
            self._lines = _SyncLines(response)
        else:
            response.read()
        return response

    def _hang_up(self) -> None:
        self._lines = None
        self._open.close()

    def close(self) -> None:
        self._hang_up()
        self._plan.close()


class _AsyncWatchRunner:
    """``_SyncWatchRunner`` for an ``httpx.AsyncClient``."""

    def __init__(self, http: httpx.AsyncClient, plan: _WatchPlan) -> None:
        self._http = http
        self._plan = plan
        self._open = contextlib.AsyncExitStack()
        self._lines: _AsyncLines | None = None
        self._reply: object = None
        self._error: Exception | None = None

    async def step(self, stopping: Callable[[], bool]) -> bool:
        while True:
            try:
                if self._error is None:
                    action = self._plan.send(self._reply)
                else:
                    action = self._plan.throw(self._error)
            except StopIteration:
                await self.aclose()
                return False
            except BaseException:
                await self.aclose()
                raise
            self._reply, self._error = None, None
            if isinstance(action, _Deliver):
                return True
            if stopping():
                await self.aclose()
                return False
            self._error = _if_interrupted(action)
            try:
                self._reply = await self._perform(action)
                self._error = None
            except Exception as exc:
                self._error = exc

    async def _perform(self, action: _Sleep | _OpenStream | _NextLine) -> object:
        if isinstance(action, _Sleep):
            await asyncio.sleep(action.seconds)
            return None
        if isinstance(action, _NextLine):
            return None if self._lines is None else await self._lines.next()
        await self._hang_up()
        send = action.send
        response = await self._open.enter_async_context(
            self._http.stream(send.method, send.url, headers=send.headers, timeout=send.timeout)
        )
        if response.status_code == 200:
            self._lines = _AsyncLines(response)
        else:
            await response.aread()
        return response

    async def _hang_up(self) -> None:
        self._lines = None
        await self._open.aclose()

    async def aclose(self) -> None:
        await self._hang_up()
        self._plan.close()


# -- watches ------------------------------------------------------------------------------


class Watch:
    """The changes to a key or a prefix, as ``WatchEvent`` objects, in revision order,
    each once, across node failures (``Client.watch``). Iterate over it; ``revision`` is
    the position through which every change has been handed out (resume a later watch
    with ``since=`` it). ``close()`` (or the ``with`` block) ends it; from another
    thread, the iterating thread stops at the next message (a progress message comes
    at least every progress interval)."""

    def __init__(self, http: httpx.Client, core: _Core, spec: _WatchSpec) -> None:
        self._state = WatchState(spec.since, with_progress=spec.with_progress)
        self._runner = _SyncWatchRunner(http, core.watch(spec, self._state))
        self._lock = threading.Lock()
        self._busy = False
        self._closed = False
        # Started before the caller gets it: a change made after watch() returns is seen.
        while not self._state.started:
            if not self._runner.step(self._stopping):
                raise RaftkvError("the watch was closed while starting")

    @property
    def revision(self) -> int:
        revision = self._state.revision
        assert revision is not None  # known once started
        return revision

    def _stopping(self) -> bool:
        return self._closed

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> WatchEvent:
        with self._lock:
            if self._closed:
                raise StopIteration
            self._busy = True
        try:
            event = self._state.pop()
            while event is None:
                if not self._runner.step(self._stopping):
                    raise StopIteration
                event = self._state.pop()
            return event
        finally:
            with self._lock:
                self._busy = False
                closing = self._closed
            if closing:
                self._runner.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._busy:
                return  # the thread in __next__ closes the stream when it returns
        self._runner.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncWatch:
    """``Watch`` for asyncio (``AsyncClient.watch``): ``async for``, ``async with``,
    ``aclose()``. Closed by another task, the iterating task stops at its next message;
    cancelling it stops it at once."""

    def __init__(self, http: httpx.AsyncClient, core: _Core, spec: _WatchSpec) -> None:
        self._state = WatchState(spec.since, with_progress=spec.with_progress)
        self._runner = _AsyncWatchRunner(http, core.watch(spec, self._state))
        self._busy = False
        self._closed = False

    async def _start(self) -> None:
        try:
            while not self._state.started:
                if not await self._runner.step(self._stopping):
                    raise RaftkvError("the watch was closed while starting")
        except BaseException:
            await self.aclose()
            raise

    @property
    def revision(self) -> int:
        revision = self._state.revision
        assert revision is not None  # known once started
        return revision

    def _stopping(self) -> bool:
        return self._closed

    def __aiter__(self) -> AsyncWatch:
        return self

    async def __anext__(self) -> WatchEvent:
        if self._closed:
            raise StopAsyncIteration
        self._busy = True
        try:
            event = self._state.pop()
            while event is None:
                if not await self._runner.step(self._stopping):
                    raise StopAsyncIteration
                event = self._state.pop()
            return event
        finally:
            self._busy = False
            if self._closed:
                await self._runner.aclose()

    async def aclose(self) -> None:
        self._closed = True
        if not self._busy:
            await self._runner.aclose()

    async def close(self) -> None:
        """The same as ``aclose()``."""
        await self.aclose()

    async def __aenter__(self) -> AsyncWatch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


# -- the clients --------------------------------------------------------------------------


def _verify(
    cacert: str | os.PathLike[str] | None,
    cert: str | os.PathLike[str] | None,
    key: str | os.PathLike[str] | None,
) -> ssl.SSLContext | bool:
    """httpx's ``verify`` for the TLS options; raises ``ValueError`` (a TlsSetupError)
    naming a file that cannot be used."""
    if cacert is None and cert is None and key is None:
        return True  # httpx's default: the system's CAs, no client certificate
    return client_context(cacert, cert, key)


def _credential_headers(
    user: str | None, password: str | None, token: str | None
) -> dict[str, str]:
    header = authorization_header(user, password, token)
    return {} if header is None else {"Authorization": header}


class Client:
    """A blocking client, safe to share between threads.

    ``endpoints``: node URLs, as a list or one comma-separated string; ``host:port``
    means ``http://host:port``. ``timeout``: seconds for each HTTP attempt.
    ``retry_for``: seconds to keep retrying a request that met a connection failure or a
    503 before raising ``UnavailableError``. ``client_id``: the exactly-once session id
    (random by default). ``transport``: an httpx transport to use instead of the network
    (tests, custom TLS or proxies). ``cacert``: the CA that signed the nodes' HTTPS
    certificates (default: the system's CAs); ``cert`` and ``key``: a client certificate,
    for a cluster that requires one (``kvnode --trusted-ca-file``). ``user`` and
    ``password``, or ``token``: credentials for a cluster with auth enabled (default: the
    environment's RAFTKV_TOKEN, else RAFTKV_USER and RAFTKV_PASSWORD, else none).
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] = DEFAULT_ENDPOINT,
        *,
        timeout: float = 5.0,
        retry_for: float = 15.0,
        client_id: int | None = None,
        transport: httpx.BaseTransport | None = None,
        cacert: str | os.PathLike[str] | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
    ) -> None:
        self._core = _Core(endpoints, timeout, retry_for, client_id)
        self._http = httpx.Client(
            timeout=self._core.timeout,
            transport=transport,
            verify=_verify(cacert, cert, key),
            headers=_credential_headers(user, password, token),
        )

    @property
    def endpoints(self) -> builtins.list[str]:
        """The node URLs this client was given, normalised."""
        return self._core.router.endpoints

    @property
    def client_id(self) -> int:
        """The current exactly-once session id (changes if the store forgot the session)."""
        return self._core.write_tags.client_id

    def _run(self, plan: _Plan[_T]) -> _T:
        return _run_sync(self._http, plan)

    def auth_request(
        self, method: str, path: str, document: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Call an ``/auth/...`` management route (see the API reference); its JSON
        answer. Changes are tagged for exactly-once like key writes."""
        return self._run(self._core.auth_request(method, path, document))

    def get(self, key: str, *, consistency: Consistency = "linearizable") -> KeyValue:
        """The key's value and revisions; NotFoundError if it does not exist."""
        return self._run(self._core.get(key, consistency))

    def get_value(
        self,
        key: str,
        default: bytes | None = None,
        *,
        consistency: Consistency = "linearizable",
    ) -> bytes | None:
        """The key's value, or ``default`` if it does not exist."""
        return self._run(self._core.get_value(key, default, consistency))

    def put(
        self,
        key: str,
        value: bytes | str,
        *,
        prev_revision: int | None = None,
        ttl: float | None = None,
        lease: int | None = None,
    ) -> WriteResult:
        """Write ``value`` (a str is stored as UTF-8). With ``prev_revision``, only if the
        key's revision is that (0: only if the key does not exist), else ConflictError.
        ``ttl``: the key expires that many seconds after this write; ``lease``: the key
        is deleted with that lease (NotFoundError if it does not exist)."""
        return self._run(self._core.put(key, value, prev_revision, ttl, lease))

    def lease_grant(self, ttl: float, *, lease_id: int | None = None) -> LeaseGrant:
        """A new lease of ``ttl`` seconds (``lease_id``: the id to give it, ConflictError
        if taken). Keys attached to it are deleted when it expires or is revoked."""
        return self._run(self._core.lease_grant(ttl, lease_id))

    def lease_keep_alive(self, lease_id: int) -> LeaseGrant:
        """Start the lease's TTL again (NotFoundError once it has expired)."""
        return self._run(self._core.lease_keep_alive(lease_id))

    def lease_revoke(self, lease_id: int) -> int:
        """End the lease now; returns how many keys it deleted."""
        return self._run(self._core.lease_revoke(lease_id))

    def lease_info(
        self, lease_id: int, *, keys: bool = True, consistency: Consistency = "linearizable"
    ) -> LeaseInfo:
        """The lease's TTL, time left and (``keys``) attached keys."""
        return self._run(self._core.lease_info(lease_id, keys, consistency))

    def leases(self, *, consistency: Consistency = "linearizable") -> builtins.list[LeaseInfo]:
        """Every lease, by id."""
        return self._run(self._core.leases(consistency))

    def cas(self, key: str, value: bytes | str, prev_revision: int) -> WriteResult:
        """Compare-and-set: write only if the key's revision is ``prev_revision`` (0: only
        if the key does not exist); ConflictError, with ``current_revision``, otherwise."""
        return self._run(self._core.put(key, value, prev_revision))

    def delete(self, key: str, *, prev_revision: int | None = None) -> WriteResult:
        """Delete the key; NotFoundError if it does not exist, ConflictError if
        ``prev_revision`` is given and does not match."""
        return self._run(self._core.delete(key, prev_revision))

    def list(
        self,
        prefix: str = "",
        *,
        limit: int = DEFAULT_LIST_LIMIT,
        consistency: Consistency = "linearizable",
    ) -> builtins.list[KeyValue]:
        """Up to ``limit`` keys starting with ``prefix``, sorted by key."""
        return self._run(self._core.list(prefix, limit, consistency))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key starting with ``prefix`` (all keys for ""); the number deleted."""
        return self._run(self._core.delete_prefix(prefix))

    def txn(
        self,
        *,
        compares: Sequence[Compare] = (),
        success: Sequence[TxnOp] = (),
        failure: Sequence[TxnOp] = (),
    ) -> TxnResponse:
        """A transaction: if every one of ``compares`` holds, run the ``success``
        operations, else the ``failure`` ones, atomically, at one revision (see
        ``raftkv.client.txn`` for the builder). Failed compares are no error: the
        answer's ``succeeded`` says which branch ran, its ``results`` what each of that
        branch's operations did. A write like ``put``: retried, applied once;
        BadRequestError for a transaction the server refuses (a key written twice by one
        branch, a limit exceeded)."""
        return self._run(self._core.txn(compares, success, failure))

    def txn_json(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /txn`` with a request document as docs/api.md writes it (a file's, say),
        sent as it is and retried like ``txn``; the JSON answer as it is
        (``raftkv.client.txn.parse_txn_response`` types it)."""
        return self._run(self._core.txn_json(document))

    def status(self) -> dict[str, Any]:
        """``GET /cluster/status``: leader, term, indexes, replication progress."""
        return self._run(self._core.status())

    def nodes(self) -> dict[str, Any]:
        """``GET /cluster/nodes``: every member with its addresses and state."""
        return self._run(self._core.nodes())

    def add_member(
        self, node_id: int, rpc_addr: str, http_addr: str, *, wait: bool = True
    ) -> dict[str, Any]:
        """Add a node (as a learner, promoted to voter once caught up; with ``wait`` the
        call waits for the promotion). The answer's ``membership`` says which it is."""
        return self._run(self._core.add_member(node_id, rpc_addr, http_addr, wait))

    def remove_member(self, node_id: int) -> dict[str, Any]:
        """Remove a node; NotFoundError if it is not a member, ConflictError while another
        membership change is in progress."""
        return self._run(self._core.remove_member(node_id))

    def transfer_leader(self, to: int | None = None) -> int:
        """Hand leadership to node ``to`` (the server picks one if None); the new leader."""
        return self._run(self._core.transfer_leader(to))

    def snapshot(self) -> dict[str, Any]:
        """Make the leader take a snapshot now; its ``index``, ``term`` and ``size``."""
        return self._run(self._core.snapshot())

    def backup(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Stream a consistent backup to ``path`` (written whole or not at all), checked
        against the server's SHA-256; ``{"path", "index", "term", "size", "sha256"}``."""
        return self._run(self._core.backup(path))

    def watch(
        self,
        key: str | None = None,
        *,
        prefix: str | None = None,
        since: int | None = None,
        prev: bool = False,
        progress_interval: float | None = None,
        with_progress: bool = False,
    ) -> Watch:
        """Follow every change to ``key``, or to every key starting with ``prefix`` (""
        for all), after revision ``since`` (default: from now, linearizably). Returns
        once the watch has started, an iterator of ``WatchEvent``; ``prev=True`` adds
        each key's previous state, ``with_progress=True`` yields progress events too.
        ``progress_interval``: seconds between the node's messages on a quiet stream
        (default 5); a stream silent for three intervals is replaced. A broken stream
        is resumed on the next node without a change missed or repeated; 4xx answers
        raise their error, and UnavailableError when no node served it for
        ``retry_for`` seconds."""
        spec = self._core.watch_spec(key, prefix, since, prev, progress_interval, with_progress)
        return Watch(self._http, self._core, spec)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient:
    """The asyncio twin of ``Client``: the same arguments and methods, awaited."""

    def __init__(
        self,
        endpoints: str | Sequence[str] = DEFAULT_ENDPOINT,
        *,
        timeout: float = 5.0,
        retry_for: float = 15.0,
        client_id: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        cacert: str | os.PathLike[str] | None = None,
        cert: str | os.PathLike[str] | None = None,
        key: str | os.PathLike[str] | None = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
    ) -> None:
        self._core = _Core(endpoints, timeout, retry_for, client_id)
        self._http = httpx.AsyncClient(
            timeout=self._core.timeout,
            transport=transport,
            verify=_verify(cacert, cert, key),
            headers=_credential_headers(user, password, token),
        )

    @property
    def endpoints(self) -> builtins.list[str]:
        return self._core.router.endpoints

    @property
    def client_id(self) -> int:
        return self._core.write_tags.client_id

    async def _run(self, plan: _Plan[_T]) -> _T:
        return await _run_async(self._http, plan)

    async def auth_request(
        self, method: str, path: str, document: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return await self._run(self._core.auth_request(method, path, document))

    async def get(self, key: str, *, consistency: Consistency = "linearizable") -> KeyValue:
        return await self._run(self._core.get(key, consistency))

    async def get_value(
        self,
        key: str,
        default: bytes | None = None,
        *,
        consistency: Consistency = "linearizable",
    ) -> bytes | None:
        return await self._run(self._core.get_value(key, default, consistency))

    async def put(
        self,
        key: str,
        value: bytes | str,
        *,
        prev_revision: int | None = None,
        ttl: float | None = None,
        lease: int | None = None,
    ) -> WriteResult:
        return await self._run(self._core.put(key, value, prev_revision, ttl, lease))

    async def lease_grant(self, ttl: float, *, lease_id: int | None = None) -> LeaseGrant:
        return await self._run(self._core.lease_grant(ttl, lease_id))

    async def lease_keep_alive(self, lease_id: int) -> LeaseGrant:
        return await self._run(self._core.lease_keep_alive(lease_id))

    async def lease_revoke(self, lease_id: int) -> int:
        return await self._run(self._core.lease_revoke(lease_id))

    async def lease_info(
        self, lease_id: int, *, keys: bool = True, consistency: Consistency = "linearizable"
    ) -> LeaseInfo:
        return await self._run(self._core.lease_info(lease_id, keys, consistency))

    async def leases(
        self, *, consistency: Consistency = "linearizable"
    ) -> builtins.list[LeaseInfo]:
        return await self._run(self._core.leases(consistency))

    async def cas(self, key: str, value: bytes | str, prev_revision: int) -> WriteResult:
        return await self._run(self._core.put(key, value, prev_revision))

    async def delete(self, key: str, *, prev_revision: int | None = None) -> WriteResult:
        return await self._run(self._core.delete(key, prev_revision))

    async def list(
        self,
        prefix: str = "",
        *,
        limit: int = DEFAULT_LIST_LIMIT,
        consistency: Consistency = "linearizable",
    ) -> builtins.list[KeyValue]:
        return await self._run(self._core.list(prefix, limit, consistency))

    async def delete_prefix(self, prefix: str) -> int:
        return await self._run(self._core.delete_prefix(prefix))

    async def txn(
        self,
        *,
        compares: Sequence[Compare] = (),
        success: Sequence[TxnOp] = (),
        failure: Sequence[TxnOp] = (),
    ) -> TxnResponse:
        return await self._run(self._core.txn(compares, success, failure))

    async def txn_json(self, document: Mapping[str, Any]) -> dict[str, Any]:
        return await self._run(self._core.txn_json(document))

    async def status(self) -> dict[str, Any]:
        return await self._run(self._core.status())

    async def nodes(self) -> dict[str, Any]:
        return await self._run(self._core.nodes())

    async def add_member(
        self, node_id: int, rpc_addr: str, http_addr: str, *, wait: bool = True
    ) -> dict[str, Any]:
        return await self._run(self._core.add_member(node_id, rpc_addr, http_addr, wait))

    async def remove_member(self, node_id: int) -> dict[str, Any]:
        return await self._run(self._core.remove_member(node_id))

    async def transfer_leader(self, to: int | None = None) -> int:
        return await self._run(self._core.transfer_leader(to))

    async def snapshot(self) -> dict[str, Any]:
        return await self._run(self._core.snapshot())

    async def backup(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        return await self._run(self._core.backup(path))

    async def watch(
        self,
        key: str | None = None,
        *,
        prefix: str | None = None,
        since: int | None = None,
        prev: bool = False,
        progress_interval: float | None = None,
        with_progress: bool = False,
    ) -> AsyncWatch:
        """``Client.watch``: returns, once started, an async iterator of events."""
        spec = self._core.watch_spec(key, prefix, since, prev, progress_interval, with_progress)
        watch = AsyncWatch(self._http, self._core, spec)
        await watch._start()
        return watch

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
