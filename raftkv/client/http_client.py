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

Exactly once. Every key write carries ``X-Raftkv-Client-Id``, ``X-Raftkv-Seq`` and
``X-Raftkv-First-Incomplete``. A retry re-sends the same seq, so the state machine applies
the write once and answers a repeat with the first answer. A seq leaves the outstanding
set when its write is answered or given up. ``410`` (the store no longer knows the
session) starts a new session and re-sends the write under it, unless an earlier attempt
of that write may have been applied, in which case its outcome is unknown and the call
raises ``UnavailableError(may_have_applied=True)``.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import hashlib
import json
import os
import random
import ssl
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, TypeVar, cast
from urllib.parse import quote, urlencode

import httpx

from raftkv.client.auth_header import authorization_header
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

_T = TypeVar("_T")


# -- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyValue:
    """A key as stored: its value and revisions (``mod_revision`` is the index of the
    entry that last wrote it, ``create_revision`` the one that created it, ``version``
    the number of writes since it was created)."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int

    @property
    def text(self) -> str:
        """The value decoded as UTF-8 (UnicodeDecodeError if it is not)."""
        return self.value.decode("utf-8")


@dataclass(frozen=True)
class WriteResult:
    """A write's answer: the Raft ``index`` and ``term`` of its entry and the key's new
    ``revision`` (for a delete, the revision of the delete)."""

    key: str
    index: int
    term: int
    revision: int


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


def _key_path(key: str) -> str:
    """``/kv/`` and the key, each ``/``-separated segment percent-encoded (``.`` and
    ``..`` too, so that no URL normalisation removes them)."""
    if not isinstance(key, str):
        raise TypeError(f"key must be a str, got {type(key).__name__}")
    segments = []
    for segment in _key_bytes(key).split(b"/"):
        if segment in (b".", b".."):
            segments.append("%2E" * len(segment))
        else:
            segments.append(quote(segment, safe=""))
    return "/kv/" + "/".join(segments)


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


def _int_field(document: dict[str, Any], name: str) -> int:
    value = document.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RaftkvError(f"unexpected answer: field {name!r} is not an integer: {value!r}")
    return value


def _bytes_field(document: dict[str, Any], name: str) -> bytes:
    """``name`` as text, or ``name_base64`` for bytes that are not UTF-8."""
    text = document.get(name)
    if isinstance(text, str):
        return text.encode("utf-8")
    encoded = document.get(f"{name}_base64")
    if isinstance(encoded, str):
        try:
            return base64.b64decode(encoded, validate=True)
        except ValueError:
            pass
    raise RaftkvError(f"unexpected answer: no valid {name!r} field")


def _key_field(document: dict[str, Any]) -> str:
    return _bytes_field(document, "key").decode("utf-8", "surrogateescape")


def _key_value(document: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_key_field(document),
        value=_bytes_field(document, "value"),
        create_revision=_int_field(document, "create_revision"),
        mod_revision=_int_field(document, "mod_revision"),
        version=_int_field(document, "version"),
    )


def _write_result(document: dict[str, Any]) -> WriteResult:
    return WriteResult(
        key=_key_field(document),
        index=_int_field(document, "index"),
        term=_int_field(document, "term"),
        revision=_int_field(document, "revision"),
    )


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
        return _key_value(document)

    def get_value(
        self, key: str, default: bytes | None, consistency: Consistency
    ) -> _Plan[bytes | None]:
        try:
            kv = yield from self.get(key, consistency)
        except NotFoundError:
            return default
        return kv.value

    def put(self, key: str, value: bytes | str, prev_revision: int | None) -> _Plan[WriteResult]:
        _check_revision("prev_revision", prev_revision)
        params: builtins.list[tuple[str, str | bytes]] = []
        if prev_revision is not None:
            params.append(("prev_revision", str(prev_revision)))
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
        return _write_result(document)

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
        return _write_result(document)

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
        return [_key_value(item) for item in items]

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
        return _int_field(document, "deleted")

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
        return _int_field(document, "leader")

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

    def put(self, key: str, value: bytes | str, *, prev_revision: int | None = None) -> WriteResult:
        """Write ``value`` (a str is stored as UTF-8). With ``prev_revision``, only if the
        key's revision is that (0: only if the key does not exist), else ConflictError."""
        return self._run(self._core.put(key, value, prev_revision))

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
        self, key: str, value: bytes | str, *, prev_revision: int | None = None
    ) -> WriteResult:
        return await self._run(self._core.put(key, value, prev_revision))

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
