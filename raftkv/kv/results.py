"""What the state machine hands back: stored key-values and the outcome of a command.

Both are named tuples: immutable (a result is shared between its caller and the client
table that may replay it), compact, and cheap to build on the apply path.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

__all__ = [
    "ApplyResult",
    "KeyValue",
    "LeaseGrant",
    "Status",
    "TxnOpKind",
    "TxnOpResult",
    "TxnResult",
]


class Status(IntEnum):
    """The outcome of applying one log entry."""

    OK = 0
    """The command was applied (a DeletePrefix that matched nothing is OK as well)."""
    NOT_FOUND = 1
    """Delete of an absent key without a prev_revision condition; nothing changed."""
    CONFLICT = 2
    """A prev_revision condition did not hold; nothing changed."""
    BAD_COMMAND = 3
    """The payload is not a valid command; nothing changed."""
    STALE = 4
    """A tagged command whose outcome is no longer known: the client already
    acknowledged its reply (seq below first_incomplete), or its retained result or the
    whole client session was evicted. It was not applied now."""


class KeyValue(NamedTuple):
    """A key with its value and revisions (revisions are Raft log indexes)."""

    key: bytes
    value: bytes
    create_revision: int
    """Index of the entry that created the key (since it last did not exist)."""
    mod_revision: int
    """Index of the entry that last wrote the key."""
    version: int
    """Number of writes since creation: 1 after the creating Put."""


class TxnOpKind(IntEnum):
    PUT = 1
    DELETE = 2
    DELETE_PREFIX = 3
    GET = 4
    LIST_PREFIX = 5


class TxnOpResult(NamedTuple):
    """What one operation did or read."""

    kind: TxnOpKind
    prev: KeyValue | None = None
    """PUT: the key-value it overwrote. DELETE: the one it deleted."""
    deleted: int = 0
    """DELETE and DELETE_PREFIX: keys deleted."""
    items: tuple[KeyValue, ...] = ()
    """GET: the key-value, if the key exists. LIST_PREFIX: the keys, in key order."""
    more: bool = False
    """LIST_PREFIX: more keys have the prefix than its limit let through."""


class TxnResult(NamedTuple):
    succeeded: bool
    """Every compare held, so the success branch ran (else the failure branch)."""
    results: tuple[TxnOpResult, ...]


class LeaseGrant(NamedTuple):
    """The lease a command created or renewed: its id and its TTL in milliseconds."""

    id: int
    ttl_ms: int


class ApplyResult(NamedTuple):
    """The outcome of one committed entry."""

    status: Status
    entry_index: int
    """Raft index of the entry that produced this outcome. A retried command answered
    from the client table carries the index of its first application."""
    revision: int = 0
    """Index of the write when the state changed (== ``entry_index``), else 0."""
    prev: KeyValue | None = None
    """Put: the overwritten key-value. Delete: the deleted key-value."""
    current_revision: int = 0
    """On CONFLICT: the key's current mod_revision (0 if the key does not exist)."""
    deleted: int = 0
    """Number of keys deleted (Delete: 0 or 1; DeletePrefix: any)."""
    error: str = ""
    """Why, for BAD_COMMAND and STALE."""
    txn: TxnResult | None = None
    """A transaction's outcome: which branch ran and what each operation did."""
    lease: LeaseGrant | None = None
    """A lease grant or keep-alive, or a put with a TTL: the lease and its TTL."""
    lease_ttls: tuple[int, ...] = ()
    """A batch of keep-alives: each lease's TTL in ms, in the batch's order (0: gone)."""

    @property
    def ok(self) -> bool:
        return self.status == Status.OK
