"""Exactly-once tagging of writes (Raft thesis §6.3).

Every write a worker sends carries a (client id, seq, first_incomplete) tag, so that a
command Raft happens to commit twice (a leader re-proposing, a forward retried) is
applied once. Each worker process is one client of the state machine: it draws a random
63-bit client id when it starts, numbers its writes from 1, and tells, with every write,
the lowest seq it is still waiting on. A seq whose request timed out or failed is given
up for good: it leaves the outstanding set, so the state machine may drop its result.

If the state machine no longer knows the session (evicted, answered STALE_SESSION; the
write was not applied), the worker starts a new session under a new client id and sends
the write once more.

An HTTP client that retries on its own (the Python client does) sends its own tag in the
``X-Raftkv-Client-Id``, ``X-Raftkv-Seq`` and ``X-Raftkv-First-Incomplete`` headers, so its
retries are recognised whichever worker or node they reach. Such a tag is passed through
unchanged, and a STALE_SESSION answer goes back to that client, which must start over.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import NamedTuple

from raftkv.wire.decimals import bounded_decimal
from raftkv.wire.protocol import U64_MAX, ReplyStatus
from raftkv_ext.codec import ClientReply

__all__ = [
    "HEADER_CLIENT_ID",
    "HEADER_FIRST_INCOMPLETE",
    "HEADER_SEQ",
    "SESSION_HEADERS",
    "SessionHeaderError",
    "SessionTag",
    "WriteSession",
    "parse_session_headers",
    "random_client_id",
    "send_tagged",
]

# As clients send them and the API documents them; HTTP header names are
# case-insensitive, and servers hand them over in lower case.
HEADER_CLIENT_ID = "X-Raftkv-Client-Id"
HEADER_SEQ = "X-Raftkv-Seq"
HEADER_FIRST_INCOMPLETE = "X-Raftkv-First-Incomplete"
SESSION_HEADERS = (HEADER_CLIENT_ID, HEADER_SEQ, HEADER_FIRST_INCOMPLETE)
# The names looked up and named in error messages: lower case, as received.
_CLIENT_ID = HEADER_CLIENT_ID.lower()
_SEQ = HEADER_SEQ.lower()
_FIRST_INCOMPLETE = HEADER_FIRST_INCOMPLETE.lower()
_RECEIVED_NAMES = (_CLIENT_ID, _SEQ, _FIRST_INCOMPLETE)


class SessionTag(NamedTuple):
    client_id: int
    seq: int
    first_incomplete: int


class SessionHeaderError(ValueError):
    """The client's session headers are partial or malformed."""


def random_client_id() -> int:
    """A random non-zero 63-bit client id: how every client of the store (an HTTP worker,
    the HTTP and native clients) names a new session."""
    while True:
        client_id = secrets.randbits(63)
        if client_id:
            return client_id


def _parse_u64(name: str, text: str) -> int:
    value = bounded_decimal(text, U64_MAX)
    if value is None:
        raise SessionHeaderError(f"header {name} must be a decimal unsigned integer, got {text!r}")
    if value > U64_MAX:
        raise SessionHeaderError(f"header {name} does not fit in 64 bits")
    return value


def parse_session_headers(headers: Mapping[str, str]) -> SessionTag | None:
    """The client's own tag, None when it sent none. ``headers`` must look names up
    case-insensitively (Starlette's Headers do), or hold them in lower case."""
    present = [name for name in _RECEIVED_NAMES if name in headers]
    if not present:
        return None
    if len(present) != len(_RECEIVED_NAMES):
        missing = ", ".join(name for name in _RECEIVED_NAMES if name not in headers)
        raise SessionHeaderError(
            f"session headers must be sent all three together; missing: {missing}"
        )
    client_id = _parse_u64(_CLIENT_ID, headers[_CLIENT_ID].strip())
    seq = _parse_u64(_SEQ, headers[_SEQ].strip())
    first_incomplete = _parse_u64(_FIRST_INCOMPLETE, headers[_FIRST_INCOMPLETE].strip())
    if client_id == 0:
        raise SessionHeaderError(f"header {_CLIENT_ID} must not be 0")
    if seq == 0:
        raise SessionHeaderError(f"header {_SEQ} must be at least 1")
    if first_incomplete > seq:
        raise SessionHeaderError(
            f"header {_FIRST_INCOMPLETE} ({first_incomplete}) must not exceed {_SEQ} ({seq})"
        )
    return SessionTag(client_id, seq, first_incomplete)


class WriteSession:
    """The worker's own client session: one per worker process."""

    def __init__(self, new_client_id: Callable[[], int] = random_client_id) -> None:
        self._new_client_id = new_client_id
        self._client_id = new_client_id()
        self._next_seq = 1
        # Seqs still awaiting an answer, in increasing order (dicts keep insertion order
        # and seqs are handed out increasing), so the first key is the lowest.
        self._outstanding: dict[int, None] = {}
        self.renewals = 0
        """How many times a new session was started after STALE_SESSION."""

    @property
    def client_id(self) -> int:
        return self._client_id

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    def begin(self) -> SessionTag:
        """Tag a new write; call ``end`` with the tag once it is answered or given up."""
        seq = self._next_seq
        self._next_seq += 1
        self._outstanding[seq] = None
        first_incomplete = next(iter(self._outstanding))
        return SessionTag(self._client_id, seq, first_incomplete)

    def end(self, tag: SessionTag) -> None:
        """The write tagged ``tag`` has its answer, or will never be retried."""
        if tag.client_id == self._client_id:
            self._outstanding.pop(tag.seq, None)

    def renew(self, stale_client_id: int) -> bool:
        """Start a new session if ``stale_client_id`` is still the current one (several
        writes may find out about the same stale session); True if it was renewed."""
        if stale_client_id != self._client_id:
            return False
        client_id = self._new_client_id()
        while client_id == stale_client_id:
            client_id = self._new_client_id()
        self._client_id = client_id
        self._next_seq = 1
        self._outstanding = {}
        self.renewals += 1
        return True


async def send_tagged(
    session: WriteSession,
    client_tag: SessionTag | None,
    send: Callable[[SessionTag], Awaitable[ClientReply]],
) -> ClientReply:
    """Send one write through ``send`` under the client's tag if it gave one, else under
    the worker's session, starting a new session and retrying once on STALE_SESSION.
    Exceptions from ``send`` propagate (the seq is given up)."""
    if client_tag is not None:
        return await send(client_tag)
    tag = session.begin()
    try:
        reply = await send(tag)
    finally:
        session.end(tag)
    if reply.status != ReplyStatus.STALE_SESSION:
        return reply
    # The state machine did not apply it: it is safe to send it again, as a new session.
    session.renew(tag.client_id)
    tag = session.begin()
    try:
        return await send(tag)
    finally:
        session.end(tag)
