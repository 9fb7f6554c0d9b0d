"""What travels in ClientRequest / ClientReply frames between an HTTP worker and the Raft
process: operation codes, status codes, flags, and the binary layout of result bodies.

The frames themselves are encoded by ``raftkv_ext.codec``; this module only gives their
integer fields a meaning, so the worker and the Raft process agree on one vocabulary.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from enum import IntEnum

from raftkv.kv.results import KeyValue

DEFAULT_MAX_KEY_BYTES = 4096
"""The longest key a node accepts unless ``kvnode --max-key-bytes`` says otherwise."""
DEFAULT_MAX_VALUE_BYTES = 1024 * 1024
"""The largest value a node accepts unless ``kvnode --max-value-bytes`` says otherwise."""
DEFAULT_LIST_LIMIT = 1_000
"""Keys one list returns when the client names no limit."""
MAX_LIST_LIMIT = 10_000
"""The most keys a client may ask one list for."""
LIST_FETCH_MAX = MAX_LIST_LIMIT + 1
"""The most keys the Raft process returns for one LIST: a front end asks for one more
than its client's limit, and that extra key is how it knows there are more."""

MAX_REVISION = 2**63 - 1
"""The largest revision a request may name as ``prev_revision``. Revisions are Raft
indexes; the API keeps them within a signed 64-bit integer, which every client's JSON
and integer types carry exactly."""
U64_MAX = 2**64 - 1
"""The largest value of a frame's unsigned 64-bit fields (client id, seq, a node id)."""
MAX_TIMEOUT_MS = 2**32 - 1
"""The largest deadline a ClientRequest carries (``timeout_ms`` is a 32-bit field)."""
REQUEST_OVERHEAD_BYTES = 128
"""An upper bound on the bytes a ClientRequest frame takes besides its key and value: a
sender refuses a request that would not fit in the frame limit before sending it,
since the receiver would close the whole connection on such a frame."""


class Op(IntEnum):
    GET = 1
    PUT = 2
    DELETE = 3
    LIST = 4
    DELETE_PREFIX = 5
    STATUS = 6
    NODES = 7
    # Operations (leader only; a follower answers NOT_LEADER with the leader's address).
    # MEMBER_ADD carries {"id", "rpc_addr", "http_addr"} as JSON in `value`; `flags`
    # bit WAIT asks to wait for the promotion to voter.
    MEMBER_ADD = 8
    MEMBER_REMOVE = 9  # `limit` = node id
    TRANSFER_LEADER = 10  # `limit` = target node id, 0 for the best one
    SNAPSHOT = 11
    BACKUP = 12  # replies with the snapshot file's path in `body`
    # The Raft process's metrics in the Prometheus text format, in `body` (any node).
    METRICS = 13
    # A change to the access-control tables: `value` is the JSON document of an
    # AuthChange command; a write, tagged like the key writes.
    AUTH_CHANGE = 14
    # The access-control tables as canonical JSON in `body`, `revision` = their
    # revision; when `prev_revision` already equals it the body is left empty (any node).
    AUTH_TABLES = 15
    # A watch (any node): `key` is the key, or the prefix with flag PREFIX; with flag
    # HAS_PREV_REVISION, changes after `prev_revision`, else after the current revision
    # (read linearizably unless STALE_READ); `limit` is the progress interval in ms (0:
    # the node's). Answered by a stream of replies carrying this request's id, each a
    # message of wire/watch_frames.py, until an END message.
    WATCH = 16
    # Ends the watch whose request id is `limit` on this connection (its stream gets an
    # END message); answered OK, or NOT_FOUND when there is no such watch.
    WATCH_CANCEL = 17
    # A linearizable read of nothing: `index` of the reply is the applied index once the
    # node has caught up with the leader's commit index (the start of a watch).
    READ_INDEX = 18
    # A transaction (HTTP only): `value` is its body (raftkv/kv/txn.py), tagged like the
    # key writes. The reply's `index` is the entry it was applied at, `revision` that
    # index when it wrote anything (else 0), and `body` its result (encode_txn_result).
    TXN = 19
    # Leases (HTTP only; docs/api.md, "Leases"), tagged like the key writes. GRANT's
    # `value` is LEASE_GRANT_FIELDS (id 0: the node picks one); REVOKE's and
    # KEEP_ALIVE's `limit` is the lease id. Answered with a LeaseAnswer JSON body.
    LEASE_GRANT = 20
    LEASE_REVOKE = 21
    LEASE_KEEP_ALIVE = 22
    # Reads (linearizable unless STALE_READ): one lease (`limit` = its id, `prev_revision`
    # = the most keys to return) as encode_lease_info, or every lease as
    # encode_lease_list. Times left are this node's; a follower's are never below the
    # leader's.
    LEASE_INFO = 23
    LEASE_LIST = 24
    # Many keep-alives in one entry (the streaming keep-alive's batch): `value` is u64
    # lease ids; untagged. The reply's body is one u64 TTL in ms per distinct id, in
    # increasing id order (0: the lease is gone).
    LEASE_KEEP_ALIVES = 25


class ReplyStatus(IntEnum):
    OK = 0
    NOT_FOUND = 1
    CONFLICT = 2
    # No leader or no quorum in time: nothing happened, or (for a write) the outcome is
    # unknown; the HTTP answer is 503 with Retry-After either way.
    UNAVAILABLE = 3
    BAD_REQUEST = 4
    TIMEOUT = 5
    # The client session is unknown to the state machine: start a new one.
    STALE_SESSION = 6
    INTERNAL = 7
    # An operation only the leader performs; `body` holds the leader's HTTP address
    # (empty when no leader is known).
    NOT_LEADER = 8


class Flag(IntEnum):
    """Bits of ClientRequest.flags."""

    STALE_READ = 1
    # A compare-and-set: prev_revision holds the expected revision (0: must not exist).
    HAS_PREV_REVISION = 2
    # MEMBER_ADD: answer only once the new member is a voter (or the deadline passed).
    WAIT = 4
    # STATUS: include this node's state hash (costs a pass over the whole state).
    STATE_HASH = 8
    # WATCH: `key` is a prefix rather than one key.
    PREFIX = 16
    # WATCH: events carry the key's previous state.
    WATCH_PREV = 32
    # WATCH: when the history does not reach back far enough, say so with a RESET
    # message instead of sending the range's image (the HTTP worker's own feed).
    NO_IMAGE = 64
    # PUT: `value` starts with LEASE_GRANT_FIELDS (lease id, ttl ms; exactly one set).
    LEASED = 128
    # GET: the reply body starts with KEY_LEASE (lease id or 0, ms left).
    WITH_LEASE = 256


LEASE_GRANT_FIELDS = struct.Struct("<QQ")
"""A lease id and a TTL in milliseconds."""
KEY_LENGTH = struct.Struct("<I")
KEY_LEASE = struct.Struct("<Qq")
"""The lease of a key read with Flag.WITH_LEASE: its id (0: none) and ms left."""
LEASE_TIMES = struct.Struct("<QQq")
"""id, ttl ms, ms left (-1 when this node has no deadline for it yet)."""

_KV_HEADER = struct.Struct("<QQQ")  # create_revision, mod_revision, version
_KV_ITEM = struct.Struct("<IIQQQ")  # key length, value length, revisions, version


def encode_key_value(kv: KeyValue, prefix: bytes = b"") -> bytes:
    """One key's metadata and value: the body of a GET reply, after ``prefix`` (the
    KEY_LEASE fields of a GET with Flag.WITH_LEASE), in one copy of the value."""
    header = _KV_HEADER.pack(kv.create_revision, kv.mod_revision, kv.version)
    return b"".join((prefix, header, kv.value))


def decode_key_value(key: bytes, body: bytes) -> KeyValue:
    if len(body) < _KV_HEADER.size:
        raise ValueError("GET reply body is shorter than its header")
    create, mod, version = _KV_HEADER.unpack_from(body)
    return KeyValue(key, body[_KV_HEADER.size :], create, mod, version)


def encode_key_values(items: Iterable[KeyValue]) -> bytes:
    """Many keys: the body of a LIST reply."""
    parts: list[bytes] = []
    for kv in items:
        header = _KV_ITEM.pack(
            len(kv.key), len(kv.value), kv.create_revision, kv.mod_revision, kv.version
        )
        parts.append(header)
        parts.append(kv.key)
        parts.append(kv.value)
    return b"".join(parts)


def decode_key_values(body: bytes) -> list[KeyValue]:
    items: list[KeyValue] = []
    offset = 0
    view = memoryview(body)
    while offset < len(body):
        if offset + _KV_ITEM.size > len(body):
            raise ValueError("LIST reply body ends inside an item header")
        key_len, value_len, create, mod, version = _KV_ITEM.unpack_from(body, offset)
        offset += _KV_ITEM.size
        end = offset + key_len + value_len
        if end > len(body):
            raise ValueError("LIST reply body ends inside an item")
        key = bytes(view[offset : offset + key_len])
        value = bytes(view[offset + key_len : end])
        items.append(KeyValue(key, value, create, mod, version))
        offset = end
    return items


def encode_lease_info(
    lease_id: int, ttl_ms: int, remaining_ms: int, keys: Iterable[bytes], more: bool
) -> bytes:
    """One lease: LEASE_TIMES | u8 more | (u32 length | key)... in key order."""
    parts = [LEASE_TIMES.pack(lease_id, ttl_ms, remaining_ms), bytes((more,))]
    for key in keys:
        parts += (KEY_LENGTH.pack(len(key)), key)
    return b"".join(parts)


def decode_lease_info(body: bytes) -> tuple[int, int, int, list[bytes], bool]:
    """(id, ttl ms, ms left, keys, whether it has more keys) from encode_lease_info."""
    head = LEASE_TIMES.size + 1
    if len(body) < head:
        raise ValueError("lease reply body is shorter than its header")
    lease_id, ttl_ms, remaining_ms = LEASE_TIMES.unpack_from(body)
    keys: list[bytes] = []
    offset = head
    while offset < len(body):
        if offset + KEY_LENGTH.size > len(body):
            raise ValueError("lease reply body ends inside a key length")
        (size,) = KEY_LENGTH.unpack_from(body, offset)
        offset += KEY_LENGTH.size
        if offset + size > len(body):
            raise ValueError("lease reply body ends inside a key")
        keys.append(body[offset : offset + size])
        offset += size
    return lease_id, ttl_ms, remaining_ms, keys, bool(body[LEASE_TIMES.size])


def encode_lease_list(items: Iterable[tuple[int, int, int]]) -> bytes:
    """Every lease as LEASE_TIMES records, in increasing id order."""
    return b"".join(LEASE_TIMES.pack(*item) for item in items)


def decode_lease_list(body: bytes) -> list[tuple[int, int, int]]:
    if len(body) % LEASE_TIMES.size:
        raise ValueError("lease list body is not whole records")
    return [(i, t, r) for i, t, r in LEASE_TIMES.iter_unpack(body)]
