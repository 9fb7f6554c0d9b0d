"""The key-value state machine that Raft applies committed entries to.

Deterministic and pure: its state is a function of the sequence of (index, payload)
pairs applied (and of the client-table limits, which must be equal on every replica);
it does no I/O and reads no clock and no randomness.

Semantics follow etcd. Each key has a value, ``create_revision`` (index of the entry
that created it), ``mod_revision`` (index of its last write) and ``version`` (writes
since creation, 1 after the creating Put; a deleted and re-created key starts again).
A ``prev_revision`` condition of None always holds; 0 holds if the key does not exist;
N > 0 holds if the key exists with ``mod_revision == N``. A failed condition is a
CONFLICT carrying the key's current mod_revision (0 if absent) and changes nothing.
A Delete of an absent key whose condition holds (None or 0) is NOT_FOUND.

Per-key representation: one dict maps a key to ``META | value`` (24 bytes of
create_revision, mod_revision, version followed by the value) in a single bytes object,
and a SortedList holds the keys in order for range reads. That costs the key object,
one bytes object slightly larger than the value, a dict slot and a list slot per key,
with no per-key tuple or int objects.
"""

from __future__ import annotations

from collections.abc import Iterable

from sortedcontainers import SortedList

from raftkv.kv.auth_tables import AuthChangeRefused, AuthTables
from raftkv.kv.commands import (
    LEASE_FIELDS,
    OP_AUTH,
    OP_DELETE,
    OP_LEASE,
    OP_PUT,
    OP_PUT_LEASED,
    OP_TXN,
    CommandDecodeError,
    LeaseCheckpoint,
    LeaseExpire,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseKeepAliveMany,
    decode_lease_body,
    decode_raw,
)
from raftkv.kv.dedup import DEFAULT_MAX_CLIENTS, DEFAULT_MAX_RESULTS, ClientTable
from raftkv.kv.leases import MAX_TTL_MS, Lease, LeaseTable
from raftkv.kv.results import ApplyResult, KeyValue, Status
from raftkv.kv.results import LeaseGrant as LeaseAnswer
from raftkv.kv.snapshot_format import (
    FORMAT_VERSION,
    HEADER,
    MAGIC,
    META,
    META_SIZE,
    TXN_FORMAT_VERSION,
    U32,
    Reader,
    SnapshotFormatError,
    body_digest,
    kv_record,
    seal,
    unseal,
)
from raftkv.kv.txn import (
    MAX_TXN_LIST_BYTES,
    TxnBody,
    TxnBodyError,
    TxnOp,
    TxnOpKind,
    TxnOpResult,
    TxnResult,
    compare_holds,
    decode_txn_body,
)
from raftkv.kv.watch_history import DEFAULT_MAX_CHANGES, WatchHistory

__all__ = ["KVStateMachine", "prefix_end"]

_CHUNK_KEYS = 4096
"""Keys per snapshot chunk: bounds the number of hash updates and list items."""

_pack_meta = META.pack
_unpack_meta = META.unpack_from


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix``.

    None if there is none (the prefix is empty or all 0xff bytes).
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))


def _key_value(key: bytes, stored: bytes) -> KeyValue:
    create, mod, version = _unpack_meta(stored)
    return KeyValue(key, stored[META_SIZE:], create, mod, version)


class KVStateMachine:
    """The replicated key-value state: keys, their revisions and the client table."""

    __slots__ = (
        "_applied_index",
        "_auth",
        "_clients",
        "_data",
        "_history",
        "_key_lease",
        "_keys",
        "_leases",
        "leases_expired",
    )

    def __init__(
        self,
        *,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        max_results_per_client: int = DEFAULT_MAX_RESULTS,
        watch_history: int = DEFAULT_MAX_CHANGES,
    ) -> None:
        self._data: dict[bytes, bytes] = {}
        self._keys = SortedList()
        self._clients = ClientTable(max_clients, max_results_per_client)
        self._auth = AuthTables()
        self._applied_index = 0
        self._history = WatchHistory(watch_history)
        self._set_leases(LeaseTable())
        self.leases_expired = 0
        """Leases this replica saw expire since it started (not part of the state)."""

    def _set_leases(self, leases: LeaseTable) -> None:
        self._leases = leases
        # The table's key -> lease map, looked at on every write: most keys have no
        # lease, and an empty dict's truth test is the cheapest way to know it.
        self._key_lease = leases.key_leases

    # -- applying ------------------------------------------------------------------

    @property
    def applied_index(self) -> int:
        """Index of the last entry applied (or skipped with :meth:`advance`)."""
        return self._applied_index

    @property
    def auth(self) -> AuthTables:
        """The access-control tables (for reading; change them only through commands)."""
        return self._auth

    @property
    def history(self) -> WatchHistory:
        """The recent changes, for watches (for reading; the state machine appends)."""
        return self._history

    @property
    def leases(self) -> LeaseTable:
        """The leases (for reading; change them only through commands)."""
        return self._leases

    @property
    def clients(self) -> ClientTable:
        """The client table (for inspection; do not mutate)."""
        return self._clients

    def _check_index(self, index: int) -> None:
        if index <= self._applied_index:
            raise ValueError(f"index {index} is not above the applied index {self._applied_index}")

    def advance(self, index: int) -> None:
        """Record that entry ``index`` carries no command (a Raft no-op or membership
        entry), so that the applied index (and snapshots) cover it."""
        self._check_index(index)
        self._applied_index = index

    def apply(self, index: int, data: bytes) -> ApplyResult:
        """Apply the committed entry at ``index`` whose payload is ``data``.

        Indexes must strictly increase (gaps are allowed); a non-increasing index is a
        caller bug and raises ValueError. A payload that is not a valid command yields a
        BAD_COMMAND result and changes nothing but the applied index; it never raises.
        """
        if index <= self._applied_index:
            self._check_index(index)
        self._applied_index = index
        try:
            op, client_id, seq, first_incomplete, key, value, prev = decode_raw(data)
        except CommandDecodeError as exc:
            return ApplyResult(Status.BAD_COMMAND, index, error=str(exc))
        if not client_id:
            return self._execute(index, op, key, value, prev)
        clients = self._clients
        replay = clients.check(client_id, seq, first_incomplete, index)
        if replay is not None:
            return replay
        result = self._execute(index, op, key, value, prev)
        clients.record(client_id, seq, result)
        return result

    def apply_batch(self, items: Iterable[tuple[int, bytes]]) -> list[ApplyResult]:
        """Apply ``(index, payload)`` pairs in order; return their results in order."""
        apply = self.apply
        return [apply(index, data) for index, data in items]

    def _execute(
        self, index: int, op: int, key: bytes, value: bytes, prev: int | None
    ) -> ApplyResult:
        if op == OP_PUT:
            return self._put(index, key, value, prev)
        if op == OP_DELETE:
            return self._delete(index, key, prev)
        if op == OP_AUTH:
            return self._auth_change(index, key)
        if op == OP_TXN:
            return self._txn(index, key)
        if op == OP_PUT_LEASED:
            return self._leased_put(index, key, value, prev)
        if op == OP_LEASE:
            return self._lease_command(index, key)
        return self._delete_prefix(index, key)

    # -- leases --------------------------------------------------------------------

    def _lease_refusal(self, lease_id: int, ttl_ms: int) -> ApplyResult | None:
        """Why a put cannot name this lease or TTL, or None when it can."""
        if lease_id:
            named = self._leases.get(lease_id)
            if named is None:
                return ApplyResult(Status.NOT_FOUND, 0, error=f"lease {lease_id} not found")
            if named.private:
                # A key's own TTL: it holds that key alone, and ends with it (the put
                # would end it before attaching the key, were the key its own).
                return ApplyResult(
                    Status.NOT_FOUND, 0, error=f"lease {lease_id} is a key's own TTL"
                )
        if ttl_ms > MAX_TTL_MS:
            return ApplyResult(Status.BAD_COMMAND, 0, error=f"TTL above {MAX_TTL_MS} ms")
        return None

    def _attach(self, index: int, key: bytes, lease_id: int, ttl_ms: int) -> LeaseAnswer:
        """Attach ``key`` (just written) to its lease, or to a new private one for a TTL."""
        leases = self._leases
        if ttl_ms:
            # The key's own lease, ended when the key leaves it.
            lease_id = leases.grant(index, 0, ttl_ms, private=True).id
        else:
            ttl_ms = leases.ttl_of(lease_id)
        leases.attach(key, lease_id)
        return LeaseAnswer(lease_id, ttl_ms)

    def _leased_put(self, index: int, key: bytes, fields: bytes, prev: int | None) -> ApplyResult:
        lease_id, ttl_ms = LEASE_FIELDS.unpack_from(fields)
        refusal = self._lease_refusal(lease_id, ttl_ms)
        if refusal is not None:
            return refusal._replace(entry_index=index)
        result = self._put(index, key, fields[LEASE_FIELDS.size :], prev)
        if result.status != Status.OK:
            return result
        return result._replace(lease=self._attach(index, key, lease_id, ttl_ms))

    def _lease_command(self, index: int, body: bytes) -> ApplyResult:
        try:
            command = decode_lease_body(body)
        except CommandDecodeError as exc:
            return ApplyResult(Status.BAD_COMMAND, index, error=str(exc))
        leases = self._leases
        if isinstance(command, LeaseGrant):
            if command.ttl_ms > MAX_TTL_MS:
                return ApplyResult(Status.BAD_COMMAND, index, error=f"TTL above {MAX_TTL_MS} ms")
            if command.lease_id in leases:
                return ApplyResult(
                    Status.CONFLICT, index, error=f"lease {command.lease_id} already exists"
                )
            lease = leases.grant(index, command.lease_id, command.ttl_ms)
            return ApplyResult(Status.OK, index, lease=LeaseAnswer(lease.id, lease.ttl_ms))
        if isinstance(command, LeaseKeepAlive):
            renewed = leases.keep_alive(index, command.lease_id)
            if renewed is None:
                return ApplyResult(
                    Status.NOT_FOUND, index, error=f"lease {command.lease_id} not found"
                )
            return ApplyResult(Status.OK, index, lease=LeaseAnswer(renewed.id, renewed.ttl_ms))
        if isinstance(command, LeaseKeepAliveMany):
            keep_alive = leases.keep_alive
            ttls = []
            for lease_id in command.lease_ids:
                renewed_lease = keep_alive(index, lease_id)
                ttls.append(0 if renewed_lease is None else renewed_lease.ttl_ms)
            return ApplyResult(Status.OK, index, lease_ttls=tuple(ttls))
        if isinstance(command, LeaseCheckpoint):
            leases.checkpoint(command.remaining)
            return ApplyResult(Status.OK, index)
        ending = leases.get(command.lease_id)
        if isinstance(command, LeaseExpire):
            if ending is None or ending.renewed_index != command.renewed_index:
                # Renewed (or revoked) after the leader decided: nothing to do.
                return ApplyResult(Status.CONFLICT, index, error="lease renewed or gone")
            self.leases_expired += 1
            return self._end_lease(index, ending)
        if ending is None:
            return ApplyResult(Status.NOT_FOUND, index, error=f"lease {command.lease_id} not found")
        return self._end_lease(index, ending)

    def _end_lease(self, index: int, lease: Lease) -> ApplyResult:
        """Revoke or expire: the lease ends and its keys are deleted at ``index``."""
        self._leases.remove(lease.id)
        data = self._data
        keys = self._keys
        record = self._history.append
        attached = sorted(lease.keys)
        for key in attached:
            record(index, key, None, data.pop(key))
            keys.remove(key)
        return ApplyResult(
            Status.OK,
            index,
            index if attached else 0,
            deleted=len(attached),
            lease=LeaseAnswer(lease.id, lease.ttl_ms),
        )

    def _txn(self, index: int, encoded: bytes) -> ApplyResult:
        try:
            body = decode_txn_body(encoded)
        except TxnBodyError as exc:
            return ApplyResult(Status.BAD_COMMAND, index, error=f"bad transaction: {exc}")
        return self.apply_txn(index, body)

    def apply_txn(self, index: int, body: TxnBody) -> ApplyResult:
        """Evaluate the compares on the state before, then run the branch they chose;
        every write at revision ``index``. ``body`` must be valid (decoded, or checked
        by encoding it). A put naming a lease that does not exist (or is a key's own
        TTL) fails the whole transaction with NOT_FOUND, before anything is written."""
        get = self.get
        lease_of = self._leases.lease_of
        succeeded = all(compare_holds(c, get(c.key), lease_of(c.key)) for c in body.compares)
        branch = body.success if succeeded else body.failure
        for op in branch:
            refusal = self._lease_refusal(op.lease, op.ttl_ms) if op.lease or op.ttl_ms else None
            if refusal is not None:
                return refusal._replace(entry_index=index)
        budget = [MAX_TXN_LIST_BYTES]
        results = tuple(self._txn_op(index, op, budget) for op in branch)
        wrote = any(r.deleted or r.kind is TxnOpKind.PUT for r in results)
        return ApplyResult(
            Status.OK, index, index if wrote else 0, txn=TxnResult(succeeded, results)
        )

    def _txn_op(self, index: int, op: TxnOp, budget: list[int]) -> TxnOpResult:
        kind = op.kind
        if kind is TxnOpKind.PUT:
            prev = self._put(index, op.key, op.value, None).prev
            if op.lease or op.ttl_ms:
                self._attach(index, op.key, op.lease, op.ttl_ms)
            return TxnOpResult(kind, prev=prev)
        if kind is TxnOpKind.DELETE:
            done = self._delete(index, op.key, None)
            return TxnOpResult(kind, prev=done.prev, deleted=done.deleted)
        if kind is TxnOpKind.DELETE_PREFIX:
            return TxnOpResult(kind, deleted=self._delete_prefix(index, op.key).deleted)
        if kind is TxnOpKind.GET:
            found = self.get(op.key)
            return TxnOpResult(kind, items=() if found is None else (found,))
        # One more than the limit says whether there are more.
        items = self.range(op.key, op.limit + 1)
        kept: list[KeyValue] = []
        for kv in items[: op.limit]:
            size = len(kv.key) + len(kv.value)
            if size > budget[0]:
                return TxnOpResult(kind, items=tuple(kept), more=True)
            budget[0] -= size
            kept.append(kv)
        return TxnOpResult(kind, items=tuple(kept), more=len(items) > op.limit)

    def _auth_change(self, index: int, document: bytes) -> ApplyResult:
        try:
            self._auth.apply(index, document)
        except AuthChangeRefused as exc:
            status = Status.NOT_FOUND if exc.missing else Status.BAD_COMMAND
            return ApplyResult(status, index, error=str(exc))
        return ApplyResult(Status.OK, index, index)

    def _put(self, index: int, key: bytes, value: bytes, prev: int | None) -> ApplyResult:
        data = self._data
        old = data.get(key)
        if old is None:
            if prev:
                return ApplyResult(Status.CONFLICT, index)
            data[key] = stored = _pack_meta(index, index, 1) + value
            self._keys.add(key)
            self._history.append(index, key, stored, None)
            return ApplyResult(Status.OK, index, index)
        create, mod, version = _unpack_meta(old)
        if prev is not None and prev != mod:
            return ApplyResult(Status.CONFLICT, index, current_revision=mod)
        data[key] = stored = _pack_meta(create, index, version + 1) + value
        if self._key_lease and key in self._key_lease:
            # Rewritten without a lease (a leased put attaches it again after this).
            self._leases.detach(key)
        self._history.append(index, key, stored, old)
        return ApplyResult(
            Status.OK, index, index, KeyValue(key, old[META_SIZE:], create, mod, version)
        )

    def _delete(self, index: int, key: bytes, prev: int | None) -> ApplyResult:
        data = self._data
        old = data.get(key)
        if old is None:
            if prev:
                return ApplyResult(Status.CONFLICT, index)
            return ApplyResult(Status.NOT_FOUND, index)
        create, mod, version = _unpack_meta(old)
        if prev is not None and prev != mod:
            return ApplyResult(Status.CONFLICT, index, current_revision=mod)
        del data[key]
        self._keys.remove(key)
        if self._key_lease and key in self._key_lease:
            self._leases.detach(key)
        self._history.append(index, key, None, old)
        return ApplyResult(
            Status.OK, index, index, KeyValue(key, old[META_SIZE:], create, mod, version), deleted=1
        )

    def _delete_prefix(self, index: int, prefix: bytes) -> ApplyResult:
        keys = self._keys
        data = self._data
        record = self._history.append
        pop = data.pop
        lo, hi = self._bounds(prefix)
        count = hi - lo
        if count:
            # One delete change per key, all at this revision, in key order.
            key_lease = self._key_lease
            detach = self._leases.detach
            for key in keys.islice(lo, hi):
                record(index, key, None, pop(key))
                if key_lease and key in key_lease:
                    detach(key)
            if count == len(keys):
                keys.clear()
            else:
                del keys[lo:hi]
        return ApplyResult(Status.OK, index, index if count else 0, deleted=count)

    # -- reading -------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: bytes) -> KeyValue | None:
        """The key's current value and revisions, or None if it does not exist."""
        stored = self._data.get(key)
        return None if stored is None else _key_value(key, stored)

    def _bounds(self, prefix: bytes) -> tuple[int, int]:
        keys = self._keys
        lo: int = keys.bisect_left(prefix)
        end = prefix_end(prefix)
        hi: int = len(keys) if end is None else keys.bisect_left(end)
        return lo, hi

    def range(
        self, prefix: bytes = b"", limit: int = 0, *, after: bytes | None = None
    ) -> list[KeyValue]:
        """Keys starting with ``prefix``, in increasing key order.

        ``limit`` > 0 returns at most that many (0 means no limit). ``after`` returns
        only keys greater than it, to page through a long listing.
        """
        if limit < 0:
            raise ValueError("limit must not be negative")
        lo, hi = self._bounds(prefix)
        if after is not None and after >= prefix:
            lo = max(lo, self._keys.bisect_right(after))
        if limit and hi - lo > limit:
            hi = lo + limit
        if lo >= hi:
            return []
        data = self._data
        return [_key_value(key, data[key]) for key in self._keys.islice(lo, hi)]

    def count(self, prefix: bytes = b"") -> int:
        """Number of keys starting with ``prefix``."""
        lo, hi = self._bounds(prefix)
        return hi - lo

    # -- snapshots -----------------------------------------------------------------

    def _body_chunks(self) -> Iterable[bytes]:
        keys = self._keys
        data = self._data
        version = TXN_FORMAT_VERSION if self._needs_format_3() else FORMAT_VERSION
        yield HEADER.pack(MAGIC, version, self._applied_index, len(keys))
        parts: list[bytes] = []
        for i, key in enumerate(keys, 1):
            parts += kv_record(key, data[key])
            if i % _CHUNK_KEYS == 0:
                yield b"".join(parts)
                parts.clear()
        yield b"".join(parts)
        yield from self._clients.chunks()
        auth = self._auth.to_json()
        yield U32.pack(len(auth)) + auth
        if version >= TXN_FORMAT_VERSION:
            yield from self._leases.chunks()

    def _needs_format_3(self) -> bool:
        """Transactions' results and leases need version 3; a state without them is
        written as version 2, which a node that knows only that version still reads."""
        return self._leases.in_use() or self._clients.holds_format_3_results()

    def snapshot(self) -> bytes:
        """The whole state (keys, client table, applied index), serialized canonically
        and checksummed; see snapshot_format for the layout."""
        return seal(list(self._body_chunks()))

    def state_hash(self) -> str:
        """Hex sha256 of the canonical state: equal states have equal hashes.

        It equals the checksum at the end of :meth:`snapshot`; it streams the state
        through the hash without building the snapshot, but still costs a full pass.
        """
        return body_digest(self._body_chunks())

    def restore(self, data: bytes) -> None:
        """Replace the whole state with the snapshot ``data``.

        Raises SnapshotFormatError, leaving the state unchanged, if ``data`` is
        corrupt, truncated, of an unknown version or not canonical.
        """
        body = unseal(data)
        reader = Reader(body)
        applied, count = reader.header()
        new_data: dict[bytes, bytes] = {}
        ordered: list[bytes] = []
        previous = b""
        for _ in range(count):
            key, stored = reader.key_record()
            if key <= previous:
                raise SnapshotFormatError("snapshot keys empty or out of order")
            create, mod, version = _unpack_meta(stored)
            if not (0 < create <= mod <= applied and version > 0):
                raise SnapshotFormatError(f"bad revisions for key {key!r}")
            new_data[key] = stored
            ordered.append(key)
            previous = key
        clients = ClientTable.load(
            reader, applied, self._clients.max_clients, self._clients.max_results
        )
        auth = AuthTables()
        if reader.version >= 2:
            (size,) = reader.struct(U32)
            try:
                auth = AuthTables.from_json(reader.take(size))
            except ValueError as exc:
                raise SnapshotFormatError(str(exc)) from None
            if auth.revision > applied:
                raise SnapshotFormatError("auth tables revision above the applied index")
        leases = LeaseTable()
        if reader.version >= TXN_FORMAT_VERSION:
            leases = LeaseTable.load(reader, applied, new_data)
        if not reader.at_end():
            raise SnapshotFormatError("trailing bytes after the snapshot body")
        if (reader.version >= TXN_FORMAT_VERSION) != (
            leases.in_use() or clients.holds_format_3_results()
        ):
            # Each state has one snapshot: version 3 exactly when it needs it.
            raise SnapshotFormatError(
                f"snapshot version {reader.version} does not match its contents"
            )
        self._data = new_data
        self._keys = SortedList(ordered)
        self._clients = clients
        self._auth = auth
        self._set_leases(leases)
        self._applied_index = applied
        self._history.reset(applied)
