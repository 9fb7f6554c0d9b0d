"""Leases: the replicated half (docs/architecture.md, "Leases").

A lease has an id, a TTL and a set of keys. When it is revoked or expires, its keys are
deleted in one revision. Keys written with a plain TTL (``POST /kv/{key}`` with
``"ttl"``) get a *private* lease of their own, which ends when the key is rewritten
without it or deleted.

Time is not in here. The state machine is a function of the log, so it records only
what the log says about time: the TTL a grant or keep-alive started, or the time left
a leader wrote in a checkpoint. Each lease keeps the milliseconds left *as of the entry
that last said so*; every node turns those into deadlines on its own monotonic clock as
it applies them (raftkv.node.lease_clock), and only the leader decides that a lease has
run out, by proposing an Expire entry. The Expire names the index of the lease's last
renewal: a keep-alive committed between the leader's decision and the Expire's commit
makes the Expire stale, and it changes nothing.

The table also records, for the lease clock, which leases had their time told and which
ended since it last asked (:meth:`LeaseTable.take_timer_events`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import Final

from raftkv.kv.snapshot_format import U32, U64, Reader, SnapshotFormatError

__all__ = [
    "MAX_LEASE_ID",
    "MAX_TTL_MS",
    "Lease",
    "LeaseTable",
    "TimerEvent",
]

MAX_LEASE_ID: Final = 2**63 - 1
"""Lease ids stay within a signed 64-bit integer, as etcd's do."""
MAX_TTL_MS: Final = 10 * 365 * 24 * 3600 * 1000
"""The longest TTL a lease may have (ten years)."""

_LEASE: Final = struct.Struct("<QQQQBI")
"""id, ttl_ms, remaining_ms, renewed_index, private, key count."""
_KEY_LENGTH: Final = U32

TimerEvent = tuple[int, int | None, bool]
"""(lease id, milliseconds left as of now, whether a checkpoint said so) when the log
told a lease's time, or (lease id, None, False) when the lease ended."""


class Lease:
    """One lease. ``remaining_ms`` is the time left as of the entry at which it was last
    recorded; ``renewed_index`` the index of its grant or last keep-alive."""

    __slots__ = ("id", "keys", "private", "remaining_ms", "renewed_index", "ttl_ms")

    def __init__(
        self, lease_id: int, ttl_ms: int, renewed_index: int, *, private: bool = False
    ) -> None:
        self.id = lease_id
        self.ttl_ms = ttl_ms
        self.remaining_ms = ttl_ms
        self.renewed_index = renewed_index
        self.private = private
        self.keys: set[bytes] = set()


class LeaseTable:
    """Every live lease and which key is attached to which lease."""

    __slots__ = ("_events", "_key_lease", "_leases", "_next_id")

    def __init__(self) -> None:
        self._leases: dict[int, Lease] = {}
        self._key_lease: dict[bytes, int] = {}
        self._next_id = 1
        self._events: list[TimerEvent] = []

    # -- reading ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._leases)

    def __contains__(self, lease_id: object) -> bool:
        return lease_id in self._leases

    def get(self, lease_id: int) -> Lease | None:
        return self._leases.get(lease_id)

    @property
    def key_leases(self) -> dict[bytes, int]:
        """Key -> lease id for every attached key (read only)."""
        return self._key_lease

    def ttl_of(self, lease_id: int) -> int:
        """The TTL of the live lease ``lease_id`` in milliseconds."""
        return self._leases[lease_id].ttl_ms

    def lease_of(self, key: bytes) -> int:
        """The id of the lease ``key`` is attached to, 0 if none."""
        return self._key_lease.get(key, 0)

    def ids(self) -> list[int]:
        """Every live lease's id, in increasing order."""
        return sorted(self._leases)

    def attached_keys(self) -> int:
        return len(self._key_lease)

    def in_use(self) -> bool:
        """Whether the table differs from a new one (a snapshot then carries it)."""
        return bool(self._leases) or self._next_id != 1

    def leases(self) -> Iterable[Lease]:
        return self._leases.values()

    # -- changing (only from the state machine's apply) ------------------------------

    def grant(self, index: int, lease_id: int, ttl_ms: int, *, private: bool = False) -> Lease:
        """A new lease. ``lease_id`` 0 takes the lowest free id from a counter, so every
        replica picks the same one. The caller checks that a given id is free."""
        if lease_id == 0:
            lease_id = self._next_id
            while lease_id in self._leases:
                lease_id += 1
            self._next_id = lease_id + 1
        lease = self._leases[lease_id] = Lease(lease_id, ttl_ms, index, private=private)
        self._events.append((lease_id, ttl_ms, False))
        return lease

    def keep_alive(self, index: int, lease_id: int) -> Lease | None:
        lease = self._leases.get(lease_id)
        if lease is None:
            return None
        lease.remaining_ms = lease.ttl_ms
        lease.renewed_index = index
        self._events.append((lease_id, lease.ttl_ms, False))
        return lease

    def checkpoint(self, remaining: Iterable[tuple[int, int]]) -> None:
        """A leader's record of the time left on some leases (gone ones are skipped)."""
        leases = self._leases
        for lease_id, remaining_ms in remaining:
            lease = leases.get(lease_id)
            if lease is not None:
                lease.remaining_ms = min(remaining_ms, lease.ttl_ms)
                self._events.append((lease_id, lease.remaining_ms, True))

    def attach(self, key: bytes, lease_id: int) -> None:
        """Attach ``key`` (just written) to the live lease ``lease_id``, leaving any
        other lease it had."""
        current = self._key_lease.get(key)
        if current == lease_id:
            return
        if current is not None:
            self._detach_from(key, current)
        self._key_lease[key] = lease_id
        self._leases[lease_id].keys.add(key)

    def detach(self, key: bytes) -> None:
        """``key`` was deleted or rewritten without a lease."""
        current = self._key_lease.pop(key, None)
        if current is not None:
            self._detach_from(key, current, popped=True)

    def _detach_from(self, key: bytes, lease_id: int, *, popped: bool = False) -> None:
        if not popped:
            del self._key_lease[key]
        lease = self._leases[lease_id]
        lease.keys.discard(key)
        if lease.private and not lease.keys:
            # A key's own TTL ends with the key's tie to it.
            del self._leases[lease_id]
            self._events.append((lease_id, None, False))

    def remove(self, lease_id: int) -> Lease | None:
        """End a lease (revoked or expired); the caller deletes its keys, whose
        attachments end here."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return None
        key_lease = self._key_lease
        for key in lease.keys:
            del key_lease[key]
        self._events.append((lease_id, None, False))
        return lease

    def take_timer_events(self) -> list[TimerEvent]:
        """What the log said about leases' time since the last call, in order."""
        events, self._events = self._events, []
        return events

    def all_timers(self) -> list[TimerEvent]:
        """Every live lease with its recorded time left (after a restore)."""
        return [(lease.id, lease.remaining_ms, False) for lease in self._leases.values()]

    @property
    def has_timer_events(self) -> bool:
        return bool(self._events)

    # -- snapshots -------------------------------------------------------------------

    def chunks(self) -> Iterator[bytes]:
        """``u64 next id | u64 count | lease records`` in increasing id order; a record is
        ``u64 id | u64 ttl_ms | u64 remaining_ms | u64 renewed_index | u8 private
        | u32 key count | (u32 length | key) in increasing key order``."""
        yield U64.pack(self._next_id) + U64.pack(len(self._leases))
        for lease_id in sorted(self._leases):
            lease = self._leases[lease_id]
            parts = [
                _LEASE.pack(
                    lease.id,
                    lease.ttl_ms,
                    lease.remaining_ms,
                    lease.renewed_index,
                    lease.private,
                    len(lease.keys),
                )
            ]
            for key in sorted(lease.keys):
                parts += (_KEY_LENGTH.pack(len(key)), key)
            yield b"".join(parts)

    @classmethod
    def load(cls, reader: Reader, applied: int, live_keys: dict[bytes, bytes]) -> LeaseTable:
        """Read what :meth:`chunks` wrote; every attached key must exist in
        ``live_keys`` and belong to one lease only."""
        table = cls()
        (table._next_id,) = reader.struct(U64)
        (count,) = reader.struct(U64)
        if table._next_id < 1:
            raise SnapshotFormatError("lease id counter below 1")
        previous = 0
        for _ in range(count):
            lease_id, ttl, remaining, renewed, private, key_count = reader.struct(_LEASE)
            if not previous < lease_id <= MAX_LEASE_ID:
                raise SnapshotFormatError("lease ids zero, too large or out of order")
            if not (0 < ttl <= MAX_TTL_MS and remaining <= ttl and 0 < renewed <= applied):
                raise SnapshotFormatError(f"bad times or index for lease {lease_id}")
            if private not in (0, 1) or (private and key_count != 1):
                raise SnapshotFormatError(f"bad private flag for lease {lease_id}")
            lease = Lease(lease_id, ttl, renewed, private=bool(private))
            lease.remaining_ms = remaining
            last = b""
            for _ in range(key_count):
                (size,) = reader.struct(_KEY_LENGTH)
                key = reader.take(size)
                if key <= last or key not in live_keys or key in table._key_lease:
                    raise SnapshotFormatError(f"bad key list for lease {lease_id}")
                lease.keys.add(key)
                table._key_lease[key] = lease_id
                last = key
            table._leases[lease_id] = lease
            previous = lease_id
        return table
