"""Leases in the state machine: grants, keep-alives, revokes, expiry, keys with a TTL of
their own, the timer events the lease clock reads, and snapshots of all of it."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest

from raftkv.kv import (
    ApplyResult,
    Command,
    Delete,
    DeletePrefix,
    KeyValue,
    KVStateMachine,
    Put,
    SnapshotFormatError,
    Status,
    encode_command,
)
from raftkv.kv.commands import (
    LeaseCheckpoint,
    LeaseExpire,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    Txn,
)
from raftkv.kv.leases import MAX_LEASE_ID, MAX_TTL_MS, Lease, LeaseTable
from raftkv.kv.results import LeaseGrant as LeaseAnswer
from raftkv.kv.snapshot_format import HEADER, META, Reader, seal
from raftkv.kv.txn import TxnBody, TxnOp, TxnOpKind
from raftkv.kv.watch_history import Change

DIGEST = 32
LEASE_RECORD = struct.Struct("<QQQQBI")
"""id, ttl_ms, remaining_ms, renewed_index, private, key count (raftkv.kv.leases)."""
U64 = struct.Struct("<Q")
U32 = struct.Struct("<I")


class Machine:
    """A state machine fed with consecutive indexes."""

    def __init__(self) -> None:
        self.sm = KVStateMachine()
        self.index = 0

    def run(self, command: Command) -> ApplyResult:
        self.index += 1
        return self.sm.apply(self.index, encode_command(command))

    def grant(self, ttl_ms: int, lease_id: int = 0) -> int:
        result = self.run(LeaseGrant(lease_id, ttl_ms))
        assert result.status is Status.OK, result
        assert result.lease is not None
        return result.lease.id

    def lease(self, lease_id: int) -> Lease:
        found = self.sm.leases.get(lease_id)
        assert found is not None, f"lease {lease_id} is gone"
        return found

    def value(self, key: bytes) -> bytes | None:
        found = self.sm.get(key)
        return None if found is None else found.value

    def events(self) -> list[tuple[int, int | None]]:
        return told(self.sm.leases.take_timer_events())


def told(events: Sequence[Sequence[int | bool | None]]) -> list[tuple[int, int | None]]:
    """(lease id, ms left or None when it ended) of each timer event."""
    out: list[tuple[int, int | None]] = []
    for event in events:
        lease_id, ms = event[0], event[1]
        assert isinstance(lease_id, int) and (ms is None or isinstance(ms, int))
        out.append((lease_id, ms))
    return out


def lease_state(sm: KVStateMachine) -> list[tuple[int, int, int, int, bool, list[bytes]]]:
    """Everything the table records about each lease, in id order."""
    out = []
    for lease_id in sm.leases.ids():
        lease = sm.leases.get(lease_id)
        assert lease is not None
        out.append(
            (
                lease.id,
                lease.ttl_ms,
                lease.remaining_ms,
                lease.renewed_index,
                lease.private,
                sorted(lease.keys),
            )
        )
    return out


def snapshot_version(snapshot: bytes) -> int:
    version: int = HEADER.unpack_from(snapshot)[1]
    return version


# -- grants ----------------------------------------------------------------------------


def test_a_grant_with_id_0_takes_the_ids_1_2_3() -> None:
    m = Machine()
    results = [m.run(LeaseGrant(0, ttl)) for ttl in (1000, 2000, 3000)]
    assert results == [
        ApplyResult(Status.OK, 1, lease=LeaseAnswer(1, 1000)),
        ApplyResult(Status.OK, 2, lease=LeaseAnswer(2, 2000)),
        ApplyResult(Status.OK, 3, lease=LeaseAnswer(3, 3000)),
    ]
    assert m.sm.leases.ids() == [1, 2, 3]
    assert len(m.sm.leases) == 3
    lease = m.lease(2)
    assert (lease.ttl_ms, lease.remaining_ms, lease.renewed_index) == (2000, 2000, 2)
    assert not lease.private
    assert lease.keys == set()
    # A grant writes no key: no revision, no watch event.
    assert m.sm.history.after(0) == []
    assert len(m.sm) == 0


def test_a_grant_may_name_its_id() -> None:
    m = Machine()
    assert m.run(LeaseGrant(42, 500)) == ApplyResult(Status.OK, 1, lease=LeaseAnswer(42, 500))
    assert 42 in m.sm.leases
    assert m.sm.leases.ttl_of(42) == 500
    # The counter for chosen ids is not moved by a named one.
    assert m.grant(500) == 1
    assert m.grant(500, MAX_LEASE_ID) == MAX_LEASE_ID
    assert m.sm.leases.ids() == [1, 42, MAX_LEASE_ID]


def test_granting_an_existing_id_is_a_conflict_and_changes_nothing() -> None:
    m = Machine()
    m.grant(1000, 7)
    m.run(Put(b"k", b"v", lease=7))
    m.events()
    result = m.run(LeaseGrant(7, 9000))
    assert result.status is Status.CONFLICT
    assert result.lease is None
    assert "7" in result.error
    lease = m.lease(7)
    assert (lease.ttl_ms, lease.renewed_index, lease.keys) == (1000, 1, {b"k"})
    assert m.events() == []
    # A chosen id that happens to be taken is not a conflict: the counter skips it.
    assert m.run(LeaseGrant(0, 10)).status is Status.OK


def test_chosen_ids_skip_named_ones_in_use() -> None:
    m = Machine()
    m.grant(100, 1)
    m.grant(100, 2)
    m.grant(100, 4)
    assert m.grant(100) == 3
    assert m.grant(100) == 5
    m.grant(100, 7)
    assert m.grant(100) == 6
    assert m.grant(100) == 8
    assert m.sm.leases.ids() == [1, 2, 3, 4, 5, 6, 7, 8]


def test_chosen_ids_are_not_reused_after_a_lease_ends() -> None:
    m = Machine()
    assert m.grant(100) == 1
    assert m.run(LeaseRevoke(1)).ok
    assert m.grant(100) == 2


def test_a_grant_with_a_ttl_above_the_limit_is_a_bad_command() -> None:
    m = Machine()
    result = m.run(LeaseGrant(0, MAX_TTL_MS + 1))
    assert result.status is Status.BAD_COMMAND
    assert len(m.sm.leases) == 0
    assert not m.sm.leases.in_use()
    assert m.sm.applied_index == 1
    assert m.grant(MAX_TTL_MS) == 1


# -- keep-alives -----------------------------------------------------------------------


def test_a_keep_alive_starts_the_ttl_again() -> None:
    m = Machine()
    lease_id = m.grant(5000)
    m.run(LeaseCheckpoint(((lease_id, 1200),)))
    assert m.lease(lease_id).remaining_ms == 1200
    result = m.run(LeaseKeepAlive(lease_id))
    assert result == ApplyResult(Status.OK, 3, lease=LeaseAnswer(lease_id, 5000))
    lease = m.lease(lease_id)
    assert (lease.remaining_ms, lease.renewed_index, lease.ttl_ms) == (5000, 3, 5000)


def test_a_keep_alive_of_an_unknown_lease_is_not_found() -> None:
    m = Machine()
    m.grant(5000)
    result = m.run(LeaseKeepAlive(2))
    assert result.status is Status.NOT_FOUND
    assert result.lease is None
    assert "2" in result.error
    assert m.lease(1).renewed_index == 1


# -- revokes ---------------------------------------------------------------------------


def test_a_revoke_deletes_every_key_of_the_lease_at_one_revision_in_key_order() -> None:
    m = Machine()
    doomed = m.grant(1000)
    kept = m.grant(1000)
    m.run(Put(b"c", b"3", lease=doomed))  # 3
    m.run(Put(b"a", b"1", lease=doomed))  # 4
    m.run(Put(b"other", b"x", lease=kept))  # 5
    m.run(Put(b"b", b"2", lease=doomed))  # 6
    m.run(Put(b"plain", b"p"))  # 7
    before = {key: m.sm.get(key) for key in (b"a", b"b", b"c")}
    result = m.run(LeaseRevoke(doomed))  # 8
    assert result == ApplyResult(
        Status.OK, 8, revision=8, deleted=3, lease=LeaseAnswer(doomed, 1000)
    )
    assert [kv.key for kv in m.sm.range()] == [b"other", b"plain"]
    assert doomed not in m.sm.leases
    assert m.sm.leases.key_leases == {b"other": kept}
    assert m.sm.leases.lease_of(b"a") == 0
    changes = m.sm.history.after(7)
    assert changes is not None
    assert [(c.revision, c.key, c.stored) for c in changes] == [
        (8, b"a", None),
        (8, b"b", None),
        (8, b"c", None),
    ]
    for change in changes:
        kv = before[change.key]
        assert kv is not None and change.prev is not None
        assert change.prev == META.pack(kv.create_revision, kv.mod_revision, kv.version) + kv.value


def test_revoking_a_lease_without_keys_writes_nothing() -> None:
    m = Machine()
    lease_id = m.grant(1000)
    m.run(Put(b"k", b"v"))
    assert m.run(LeaseRevoke(lease_id)) == ApplyResult(
        Status.OK, 3, lease=LeaseAnswer(lease_id, 1000)
    )
    assert m.sm.history.after(2) == []
    assert m.value(b"k") == b"v"


def test_revoking_an_unknown_lease_is_not_found() -> None:
    m = Machine()
    m.grant(1000)
    m.run(Put(b"k", b"v", lease=1))
    result = m.run(LeaseRevoke(9))
    assert result.status is Status.NOT_FOUND
    assert "9" in result.error
    assert (result.deleted, result.revision, result.lease) == (0, 0, None)
    assert m.value(b"k") == b"v"
    assert lease_state(m.sm) == [(1, 1000, 1000, 1, False, [b"k"])]
    assert m.sm.history.after(2) == []


def test_revoking_a_keys_own_lease_deletes_the_key() -> None:
    m = Machine()
    result = m.run(Put(b"k", b"v", ttl_ms=100))
    assert result.lease is not None
    assert m.run(LeaseRevoke(result.lease.id)).deleted == 1
    assert m.sm.get(b"k") is None
    assert len(m.sm.leases) == 0


# -- expiry ----------------------------------------------------------------------------


def test_an_expire_naming_the_last_renewal_ends_the_lease() -> None:
    m = Machine()
    lease_id = m.grant(1000)
    m.run(Put(b"b", b"2", lease=lease_id))
    m.run(Put(b"a", b"1", lease=lease_id))
    m.run(LeaseKeepAlive(lease_id))  # 4
    m.run(LeaseCheckpoint(((lease_id, 10),)))  # a checkpoint is no renewal
    result = m.run(LeaseExpire(lease_id, 4))  # 6
    assert result == ApplyResult(
        Status.OK, 6, revision=6, deleted=2, lease=LeaseAnswer(lease_id, 1000)
    )
    assert len(m.sm) == 0
    assert len(m.sm.leases) == 0
    changes = m.sm.history.after(5) or []
    assert [(c.revision, c.key, c.stored) for c in changes] == [(6, b"a", None), (6, b"b", None)]


def test_an_expire_made_stale_by_a_keep_alive_changes_nothing() -> None:
    m = Machine()
    lease_id = m.grant(1000)  # 1
    m.run(Put(b"k", b"v", lease=lease_id))  # 2
    m.run(LeaseKeepAlive(lease_id))  # 3: committed after the leader decided at renewal 1
    m.events()
    result = m.run(LeaseExpire(lease_id, 1))
    assert result.status is Status.CONFLICT
    assert (result.deleted, result.revision, result.lease) == (0, 0, None)
    assert m.value(b"k") == b"v"
    assert m.lease(lease_id).renewed_index == 3
    assert m.sm.leases.lease_of(b"k") == lease_id
    assert m.events() == []
    assert m.sm.history.after(2) == []
    # The expire that names the keep-alive does end it.
    assert m.run(LeaseExpire(lease_id, 3)).deleted == 1
    assert m.sm.get(b"k") is None


def test_an_expire_of_a_gone_lease_is_a_conflict() -> None:
    m = Machine()
    lease_id = m.grant(1000)
    m.run(LeaseRevoke(lease_id))
    assert m.run(LeaseExpire(lease_id, 1)).status is Status.CONFLICT
    # A lease granted again under the same id is not the one the leader saw run out.
    m.grant(1000, lease_id)  # 3
    assert m.run(LeaseExpire(lease_id, 1)).status is Status.CONFLICT
    assert lease_id in m.sm.leases


# -- puts with a TTL (a private lease) -------------------------------------------------


def test_a_put_with_a_ttl_gives_the_key_a_lease_of_its_own() -> None:
    m = Machine()
    result = m.run(Put(b"k", b"v", ttl_ms=3000))
    assert result == ApplyResult(Status.OK, 1, revision=1, lease=LeaseAnswer(1, 3000))
    lease = m.lease(1)
    assert lease.private
    assert (lease.ttl_ms, lease.remaining_ms, lease.renewed_index) == (3000, 3000, 1)
    assert lease.keys == {b"k"}
    assert m.sm.leases.lease_of(b"k") == 1
    assert m.sm.get(b"k") == KeyValue(b"k", b"v", 1, 1, 1)
    # The key's lease takes an id from the same counter as any other.
    assert m.grant(10) == 2


def test_rewriting_a_key_without_its_ttl_ends_its_lease() -> None:
    m = Machine()
    m.run(Put(b"k", b"v", ttl_ms=3000))
    m.events()
    result = m.run(Put(b"k", b"w"))
    assert result.lease is None
    assert result.prev == KeyValue(b"k", b"v", 1, 1, 1)
    assert len(m.sm.leases) == 0
    assert m.sm.leases.lease_of(b"k") == 0
    assert m.sm.leases.key_leases == {}
    assert m.events() == [(1, None)]
    assert m.sm.get(b"k") == KeyValue(b"k", b"w", 1, 2, 2)


def test_rewriting_a_key_with_a_ttl_again_makes_a_new_lease() -> None:
    m = Machine()
    m.run(Put(b"k", b"v", ttl_ms=3000))
    m.events()
    result = m.run(Put(b"k", b"w", ttl_ms=500))
    assert result.lease == LeaseAnswer(2, 500)
    assert m.sm.leases.ids() == [2]
    assert m.lease(2).private
    assert m.lease(2).keys == {b"k"}
    assert m.lease(2).renewed_index == 2
    assert m.events() == [(1, None), (2, 500)]


@pytest.mark.parametrize(
    ("remove", "ended"),
    [(Delete(b"k"), [1]), (DeletePrefix(b"k"), [1, 2]), (DeletePrefix(b""), [1, 2, 3])],
)
def test_deleting_a_key_ends_its_own_lease(remove: Command, ended: list[int]) -> None:
    m = Machine()
    m.run(Put(b"k", b"v", ttl_ms=3000))
    m.run(Put(b"k2", b"v", ttl_ms=3000))
    m.run(Put(b"z", b"v", ttl_ms=3000))
    m.events()
    result = m.run(remove)
    assert result.ok
    assert result.deleted == len(ended)
    assert result.lease is None
    assert m.sm.get(b"k") is None
    assert m.sm.leases.lease_of(b"k") == 0
    assert m.events() == [(lease_id, None) for lease_id in ended]
    assert m.sm.leases.ids() == [x for x in (1, 2, 3) if x not in ended]
    # What is left is consistent: every attached key exists, on its own lease.
    assert len(m.sm.leases.key_leases) == 3 - len(ended)
    for key, lease_id in m.sm.leases.key_leases.items():
        assert key in m.sm
        assert m.lease(lease_id).keys == {key}


def test_a_transaction_that_writes_a_key_ends_its_own_lease() -> None:
    m = Machine()
    m.run(Put(b"a", b"v", ttl_ms=3000))
    m.run(Put(b"b", b"v", ttl_ms=3000))
    body = TxnBody(
        success=(TxnOp(TxnOpKind.PUT, b"a", b"w"), TxnOp(TxnOpKind.DELETE, b"b")),
    )
    assert m.run(Txn(body)).ok
    assert len(m.sm.leases) == 0
    assert m.sm.leases.key_leases == {}
    assert m.value(b"a") == b"w"


def test_a_put_with_a_ttl_above_the_limit_is_a_bad_command() -> None:
    m = Machine()
    result = m.run(Put(b"k", b"v", ttl_ms=MAX_TTL_MS + 1))
    assert result.status is Status.BAD_COMMAND
    assert m.sm.get(b"k") is None
    assert not m.sm.leases.in_use()
    assert m.sm.history.after(0) == []


# -- puts with a lease -----------------------------------------------------------------


def test_a_put_with_an_unknown_lease_is_not_found_and_writes_nothing() -> None:
    m = Machine()
    m.run(Put(b"k", b"old"))
    result = m.run(Put(b"k", b"new", lease=5))
    assert result.status is Status.NOT_FOUND
    assert "5" in result.error
    assert (result.revision, result.lease, result.prev) == (0, None, None)
    assert m.sm.get(b"k") == KeyValue(b"k", b"old", 1, 1, 1)
    assert m.sm.history.after(1) == []
    assert m.run(Put(b"new", b"v", lease=5)).status is Status.NOT_FOUND
    assert b"new" not in m.sm
    assert m.sm.applied_index == 3


def test_a_put_with_a_lease_attaches_the_key() -> None:
    m = Machine()
    lease_id = m.grant(2500)
    result = m.run(Put(b"k", b"v", lease=lease_id))
    assert result == ApplyResult(Status.OK, 2, revision=2, lease=LeaseAnswer(lease_id, 2500))
    assert m.lease(lease_id).keys == {b"k"}
    assert m.sm.leases.lease_of(b"k") == lease_id
    assert m.sm.leases.attached_keys() == 1
    # Written again under the same lease: still attached, once.
    assert m.run(Put(b"k", b"w", lease=lease_id)).lease == LeaseAnswer(lease_id, 2500)
    assert m.lease(lease_id).keys == {b"k"}
    # A put does not renew the lease.
    assert m.lease(lease_id).renewed_index == 1


def test_moving_a_key_to_another_lease_detaches_it_from_the_first() -> None:
    m = Machine()
    a = m.grant(1000)
    b = m.grant(2000)
    m.run(Put(b"k", b"v", lease=a))
    m.run(Put(b"j", b"v", lease=a))
    assert m.run(Put(b"k", b"w", lease=b)).lease == LeaseAnswer(b, 2000)
    assert m.lease(a).keys == {b"j"}
    assert m.lease(b).keys == {b"k"}
    assert m.sm.leases.key_leases == {b"j": a, b"k": b}
    # Revoking the first lease no longer deletes the key.
    assert m.run(LeaseRevoke(a)).deleted == 1
    assert m.value(b"k") == b"w"
    assert m.sm.get(b"j") is None


def test_moving_a_key_from_its_own_lease_to_a_shared_one_ends_its_own() -> None:
    m = Machine()
    shared = m.grant(1000)
    own = m.run(Put(b"k", b"v", ttl_ms=50)).lease
    assert own is not None
    m.events()
    assert m.run(Put(b"k", b"w", lease=shared)).ok
    assert own.id not in m.sm.leases
    assert m.lease(shared).keys == {b"k"}
    assert m.events() == [(own.id, None)]


def test_writing_or_deleting_a_key_of_a_shared_lease_keeps_the_lease() -> None:
    m = Machine()
    lease_id = m.grant(1000)
    m.run(Put(b"a", b"v", lease=lease_id))
    m.run(Put(b"b", b"v", lease=lease_id))
    m.events()
    m.run(Put(b"a", b"w"))
    m.run(Delete(b"b"))
    assert m.lease(lease_id).keys == set()
    assert m.sm.leases.key_leases == {}
    assert m.events() == []
    # Revoking it now deletes nothing, the rewritten key included.
    assert m.run(LeaseRevoke(lease_id)).deleted == 0
    assert m.value(b"a") == b"w"


def test_a_put_whose_condition_fails_attaches_and_creates_nothing() -> None:
    m = Machine()
    a = m.grant(1000)
    b = m.grant(1000)
    m.run(Put(b"k", b"v", lease=a))  # 3
    m.events()
    moved = m.run(Put(b"k", b"w", 99, lease=b))
    assert moved.status is Status.CONFLICT
    assert moved.current_revision == 3
    assert moved.lease is None
    assert m.sm.leases.lease_of(b"k") == a
    assert m.lease(b).keys == set()
    ttl = m.run(Put(b"k", b"w", 0, ttl_ms=100))  # 0: only if absent
    assert ttl.status is Status.CONFLICT
    assert ttl.lease is None
    assert m.sm.leases.ids() == [a, b]
    assert m.sm.leases.lease_of(b"k") == a
    absent = m.run(Put(b"new", b"w", 7, ttl_ms=100))
    assert absent.status is Status.CONFLICT
    assert b"new" not in m.sm
    assert m.sm.leases.ids() == [a, b]
    assert m.events() == []
    # No id was used up by the failed puts.
    assert m.grant(10) == 3


def test_a_put_naming_another_keys_own_lease_is_refused() -> None:
    """A key's own lease ends with that key: no other key may join it. (Joining it would
    leave a private lease with two keys, which no snapshot can hold.)"""
    m = Machine()
    own = m.run(Put(b"k", b"v", ttl_ms=1000)).lease
    assert own is not None
    result = m.run(Put(b"j", b"v", lease=own.id))
    assert result.status is Status.NOT_FOUND
    assert b"j" not in m.sm
    assert m.lease(own.id).keys == {b"k"}
    restored = KVStateMachine()
    restored.restore(m.sm.snapshot())
    assert restored.state_hash() == m.sm.state_hash()


def test_a_put_naming_the_keys_own_lease_is_refused_without_raising() -> None:
    """Rewriting a key ends its own lease before the new lease is attached: naming that
    lease must not leave the key written and the lease gone (nor raise from apply)."""
    m = Machine()
    own = m.run(Put(b"k", b"v", ttl_ms=1000)).lease
    assert own is not None
    result = m.run(Put(b"k", b"w", lease=own.id))
    assert result.status is Status.NOT_FOUND
    assert m.sm.get(b"k") == KeyValue(b"k", b"v", 1, 1, 1)
    assert m.lease(own.id).keys == {b"k"}
    assert m.sm.applied_index == 2


# -- checkpoints -----------------------------------------------------------------------


def test_a_checkpoint_records_the_time_left_capped_at_the_ttl() -> None:
    m = Machine()
    a = m.grant(1000)
    b = m.grant(2000)
    c = m.grant(3000)
    result = m.run(LeaseCheckpoint(((a, 400), (b, 99_999), (c + 10, 5))))
    assert result == ApplyResult(Status.OK, 4)
    assert m.lease(a).remaining_ms == 400
    assert m.lease(b).remaining_ms == 2000
    assert m.lease(c).remaining_ms == 3000  # not named
    assert c + 10 not in m.sm.leases
    # A checkpoint is no renewal.
    assert [m.lease(x).renewed_index for x in (a, b, c)] == [1, 2, 3]
    assert m.run(LeaseCheckpoint(((a, 0),))).ok
    assert m.lease(a).remaining_ms == 0
    assert m.run(LeaseCheckpoint(())).ok


# -- timer events ----------------------------------------------------------------------


def test_timer_events_tell_the_lease_clock_what_the_log_said() -> None:
    m = Machine()
    assert m.events() == []
    a = m.grant(1000)
    b = m.grant(2000)
    assert m.events() == [(a, 1000), (b, 2000)]
    assert m.events() == []  # taken
    m.run(LeaseKeepAlive(a))
    m.run(LeaseCheckpoint(((a, 300), (b, 5000), (99, 1))))
    assert m.events() == [(a, 1000), (a, 300), (b, 2000)]
    m.run(Put(b"k", b"v", lease=a))
    m.run(Put(b"t", b"v", ttl_ms=70))  # lease 3
    assert m.events() == [(3, 70)]
    m.run(LeaseRevoke(a))
    m.run(LeaseExpire(b, 2))
    m.run(Delete(b"t"))
    assert m.events() == [(a, None), (b, None), (3, None)]
    # What changes nothing tells nothing.
    m.run(LeaseKeepAlive(a))
    m.run(LeaseRevoke(a))
    m.run(LeaseExpire(a, 1))
    m.run(LeaseGrant(0, MAX_TTL_MS + 1))
    m.run(Put(b"x", b"v", lease=a))
    assert m.events() == []


def test_timer_events_say_which_time_a_checkpoint_told() -> None:
    m = Machine()
    lease_id = m.grant(1000)
    m.run(LeaseCheckpoint(((lease_id, 300),)))
    m.run(LeaseKeepAlive(lease_id))
    m.run(LeaseRevoke(lease_id))
    assert m.sm.leases.take_timer_events() == [
        (lease_id, 1000, False),
        (lease_id, 300, True),
        (lease_id, 1000, False),
        (lease_id, None, False),
    ]
    assert not m.sm.leases.has_timer_events


def test_all_timers_lists_every_live_lease() -> None:
    m = Machine()
    a = m.grant(1000)
    b = m.grant(2000)
    m.run(LeaseCheckpoint(((b, 10),)))
    assert sorted(told(m.sm.leases.all_timers())) == [(a, 1000), (b, 10)]


# -- the table on its own --------------------------------------------------------------


def test_the_table_attaches_detaches_and_removes() -> None:
    table = LeaseTable()
    assert not table.in_use()
    shared = table.grant(5, 0, 1000)
    own = table.grant(6, 0, 500, private=True)
    assert (shared.id, own.id) == (1, 2)
    assert table.in_use()
    table.attach(b"a", shared.id)
    table.attach(b"b", shared.id)
    table.attach(b"c", own.id)
    assert table.attached_keys() == 3
    table.attach(b"a", shared.id)  # already there
    assert shared.keys == {b"a", b"b"}
    table.detach(b"zzz")  # attached to nothing: nothing happens
    table.detach(b"c")
    assert own.id not in table
    assert table.get(own.id) is None
    table.attach(b"a", table.grant(7, 0, 10).id)
    assert shared.keys == {b"b"}
    ended = table.remove(shared.id)
    assert ended is shared
    assert table.key_leases == {b"a": 3}
    assert table.remove(shared.id) is None
    assert told(table.take_timer_events()) == [
        (1, 1000),
        (2, 500),
        (2, None),
        (3, 10),
        (1, None),
    ]
    # A table whose leases all ended still differs from a new one: its counter moved.
    table.remove(3)
    assert len(table) == 0
    assert table.in_use()


def test_the_table_round_trips_through_its_chunks() -> None:
    table = LeaseTable()
    table.grant(3, 0, 1000)
    table.grant(4, 9, 2000, private=True)
    table.attach(b"b", 1)
    table.attach(b"a", 1)
    table.attach(b"c", 9)
    table.checkpoint([(1, 250)])
    data = b"".join(table.chunks())
    reader = Reader(memoryview(data))
    live = {b"a": b"", b"b": b"", b"c": b""}
    loaded = LeaseTable.load(reader, 4, live)
    assert reader.at_end()
    assert b"".join(loaded.chunks()) == data
    assert loaded.key_leases == table.key_leases
    assert told(loaded.all_timers()) == [(1, 250), (9, 2000)]
    assert loaded.take_timer_events() == []
    # The counter came along: the next chosen id is the same.
    assert loaded.grant(5, 0, 1).id == table.grant(5, 0, 1).id == 2


# -- snapshots -------------------------------------------------------------------------


def _leased_machine() -> Machine:
    m = Machine()
    a = m.grant(10_000)  # 1
    b = m.grant(20_000)  # 2
    gone = m.grant(1)  # 3
    m.run(Put(b"k1", b"one", lease=a))  # 4
    m.run(Put(b"k0", b"zero", lease=a))  # 5
    m.run(Put(b"k2", b"two", lease=b))  # 6
    m.run(Put(b"own", b"mine", ttl_ms=700))  # 7: lease 4
    m.run(Put(b"plain", b"p"))  # 8
    m.run(LeaseRevoke(gone))  # 9
    m.run(LeaseCheckpoint(((a, 4000), (b, 123))))  # 10
    m.run(LeaseKeepAlive(b))  # 11
    m.grant(50, 77)  # 12
    return m


def test_a_snapshot_round_trip_keeps_the_leases() -> None:
    m = _leased_machine()
    image = m.sm.snapshot()
    assert snapshot_version(image) == 3
    restored = KVStateMachine()
    restored.restore(image)
    assert restored.state_hash() == m.sm.state_hash()
    assert restored.snapshot() == image
    assert (
        lease_state(restored)
        == lease_state(m.sm)
        == [
            (1, 10_000, 4000, 1, False, [b"k0", b"k1"]),
            (2, 20_000, 20_000, 11, False, [b"k2"]),
            (4, 700, 700, 7, True, [b"own"]),
            (77, 50, 50, 12, False, []),
        ]
    )
    assert restored.leases.key_leases == m.sm.leases.key_leases
    assert restored.range() == m.sm.range()
    assert sorted(told(restored.leases.all_timers())) == [
        (1, 4000),
        (2, 20_000),
        (4, 700),
        (77, 50),
    ]
    assert restored.leases.take_timer_events() == []
    # Both go on the same way: the next chosen id, ends and detaches included.
    later: list[Command] = [
        LeaseGrant(0, 300),
        Put(b"own", b"rewritten"),
        LeaseRevoke(1),
        Put(b"k2", b"again", ttl_ms=10),
        LeaseExpire(2, 11),
    ]
    for offset, command in enumerate(later, m.index + 1):
        data = encode_command(command)
        assert restored.apply(offset, data) == m.sm.apply(offset, data)
    assert restored.state_hash() == m.sm.state_hash()
    assert restored.leases.ids() == m.sm.leases.ids() == [5, 6, 77]


def test_a_restore_replaces_the_leases() -> None:
    target = _leased_machine().sm
    target.restore(Machine().sm.snapshot())
    assert len(target.leases) == 0
    assert not target.leases.in_use()
    assert target.leases.key_leases == {}
    target.apply(1, encode_command(LeaseGrant(0, 10)))
    assert target.leases.ids() == [1]


def test_a_state_that_never_had_leases_is_written_as_version_2() -> None:
    m = Machine()
    m.run(Put(b"k", b"v", client_id=3, seq=1, first_incomplete=1))
    m.run(Delete(b"nothing"))
    assert snapshot_version(m.sm.snapshot()) == 2
    m.grant(100)
    assert snapshot_version(m.sm.snapshot()) == 3
    # Once ids were chosen the counter is state, even with every lease gone.
    m.run(LeaseRevoke(1))
    image = m.sm.snapshot()
    assert snapshot_version(image) == 3
    restored = KVStateMachine()
    restored.restore(image)
    assert restored.state_hash() == m.sm.state_hash()
    assert restored.apply(m.index + 1, encode_command(LeaseGrant(0, 5))).lease == LeaseAnswer(2, 5)


def test_a_named_lease_that_ended_leaves_a_version_2_state() -> None:
    m = Machine()
    m.grant(100, 5)
    assert snapshot_version(m.sm.snapshot()) == 3
    m.run(LeaseRevoke(5))
    image = m.sm.snapshot()
    assert snapshot_version(image) == 2  # the same state as one that never had leases
    restored = KVStateMachine()
    restored.restore(image)
    assert restored.state_hash() == m.sm.state_hash()


def test_a_key_with_a_ttl_makes_a_version_3_snapshot() -> None:
    m = Machine()
    m.run(Put(b"k", b"v", ttl_ms=10))
    assert snapshot_version(m.sm.snapshot()) == 3


@pytest.mark.parametrize(
    "command",
    [
        LeaseGrant(0, 5000, client_id=7, seq=1, first_incomplete=1),
        Put(b"k", b"v", client_id=7, seq=1, first_incomplete=1, ttl_ms=5000),
    ],
)
def test_a_retried_grant_after_a_restore_gets_the_same_lease(command: Command) -> None:
    m = Machine()
    first = m.run(command)
    assert first.lease == LeaseAnswer(1, 5000)
    m.run(LeaseKeepAlive(1))
    image = m.sm.snapshot()
    assert snapshot_version(image) == 3
    restored = KVStateMachine()
    restored.restore(image)
    again = restored.apply(3, encode_command(command))
    assert again == first
    assert again.entry_index == 1
    assert restored.leases.ids() == [1]  # not granted twice
    assert again == m.run(command)  # as on the node that never restored
    assert restored.state_hash() == m.sm.state_hash()


def test_a_retained_lease_answer_alone_makes_a_version_3_snapshot() -> None:
    m = Machine()
    m.run(LeaseGrant(4, 5000, client_id=7, seq=1, first_incomplete=1))
    m.run(LeaseRevoke(4))  # the table is as new, the client table is not
    assert not m.sm.leases.in_use()
    image = m.sm.snapshot()
    assert snapshot_version(image) == 3
    restored = KVStateMachine()
    restored.restore(image)
    retry = LeaseGrant(4, 5000, client_id=7, seq=1, first_incomplete=1)
    assert restored.apply(3, encode_command(retry)).lease == LeaseAnswer(4, 5000)
    assert len(restored.leases) == 0


# -- corrupt lease sections ------------------------------------------------------------

# _corruptible(): keys a, b, c; lease 1 (ttl 1000) holds a and b, lease 2 (ttl 2000,
# private) holds c; the applied index is 4 and the counter stands at 3.
APPLIED = 4


def _corruptible() -> KVStateMachine:
    commands: list[Command] = [
        LeaseGrant(0, 1000),
        Put(b"a", b"1", lease=1),
        Put(b"b", b"2", lease=1),
        Put(b"c", b"3", ttl_ms=2000),
    ]
    sm = KVStateMachine()
    for index, command in enumerate(commands, 1):
        assert sm.apply(index, encode_command(command)).ok
    return sm


def _record(
    lease_id: int,
    ttl: int,
    remaining: int,
    renewed: int,
    private: int,
    keys: list[bytes],
    count: int | None = None,
) -> bytes:
    head = LEASE_RECORD.pack(
        lease_id, ttl, remaining, renewed, private, len(keys) if count is None else count
    )
    return head + b"".join(U32.pack(len(key)) + key for key in keys)


def _section(next_id: int, records: list[bytes], count: int | None = None) -> bytes:
    return (
        U64.pack(next_id) + U64.pack(len(records) if count is None else count) + b"".join(records)
    )


A = _record(1, 1000, 1000, 1, 0, [b"a", b"b"])
C = _record(2, 2000, 2000, 4, 1, [b"c"])
VALID = _section(3, [A, C])


def _with_section(sm: KVStateMachine, section: bytes) -> bytes:
    """``sm``'s snapshot with its lease section replaced by ``section``, sealed again."""
    body = sm.snapshot()[:-DIGEST]
    current = b"".join(sm.leases.chunks())
    assert body.endswith(current)
    return seal([body[: len(body) - len(current)] + section])


def test_the_lease_section_has_the_documented_layout() -> None:
    sm = _corruptible()
    assert b"".join(sm.leases.chunks()) == VALID
    restored = KVStateMachine()
    restored.restore(_with_section(sm, VALID))
    assert restored.state_hash() == sm.state_hash()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (_section(3, [_record(1, 1000, 1000, 1, 0, [b"a", b"zz"]), C]), "key list"),
        (_section(3, [C, A]), "order"),
        (_section(3, [A, A]), "order"),
        (_section(3, [_record(0, 1000, 1000, 1, 0, [b"a", b"b"]), C]), "order"),
        (_section(3, [A, _record(2**63, 2000, 2000, 4, 1, [b"c"])]), "too large"),
        (_section(0, [A, C]), "counter"),
        (_section(3, [_record(1, 0, 0, 1, 0, [b"a", b"b"]), C]), "times"),
        (_section(3, [_record(1, MAX_TTL_MS + 1, 1, 1, 0, [b"a", b"b"]), C]), "times"),
        (_section(3, [_record(1, 1000, 1001, 1, 0, [b"a", b"b"]), C]), "times"),
        (_section(3, [_record(1, 1000, 1000, 0, 0, [b"a", b"b"]), C]), "index"),
        (_section(3, [_record(1, 1000, 1000, APPLIED + 1, 0, [b"a", b"b"]), C]), "index"),
        (_section(3, [A, _record(2, 2000, 2000, 4, 2, [b"c"])]), "private"),
        (_section(3, [A, _record(2, 2000, 2000, 4, 1, [])]), "private"),
        (
            _section(
                3, [_record(1, 1000, 1000, 1, 0, [b"a"]), _record(2, 2000, 0, 4, 1, [b"b", b"c"])]
            ),
            "private",
        ),
        (_section(3, [_record(1, 1000, 1000, 1, 0, [b"b", b"a"]), C]), "key list"),
        (_section(3, [_record(1, 1000, 1000, 1, 0, [b"a", b"a"]), C]), "key list"),
        (_section(3, [_record(1, 1000, 1000, 1, 0, [b"a", b"b", b"c"]), C]), "key list"),
        (_section(3, [_record(1, 1000, 1000, 1, 0, [b"", b"a"]), C]), "key list"),
        (_section(3, [A, C], count=3), "truncated"),
        (_section(3, [A, C], count=1), "trailing"),
        (_section(3, [_record(1, 1000, 1000, 1, 0, [b"a", b"b"], count=5), C]), "truncated|key"),
        (VALID[:-1], "truncated"),
        (VALID[:8], "truncated"),
        (VALID + b"\x00", "trailing"),
    ],
)
def test_a_corrupt_lease_section_is_refused(section: bytes, message: str) -> None:
    image = _with_section(_corruptible(), section)
    target = _leased_machine().sm
    before = target.snapshot()
    with pytest.raises(SnapshotFormatError, match=message):
        target.restore(image)
    assert target.snapshot() == before  # left as it was


def test_a_version_2_snapshot_with_a_lease_section_is_refused() -> None:
    sm = _corruptible()
    body = bytearray(sm.snapshot()[:-DIGEST])
    magic, _, applied, count = HEADER.unpack_from(body)
    HEADER.pack_into(body, 0, magic, 2, applied, count)
    with pytest.raises(SnapshotFormatError, match="trailing"):
        KVStateMachine().restore(seal([bytes(body)]))


def test_a_lease_key_missing_from_the_key_records_is_refused() -> None:
    """The key records of another state (without "b") under this lease section."""
    sm = _corruptible()
    other = KVStateMachine()
    for index, command in enumerate([Put(b"a", b"1"), Put(b"c", b"3"), Put(b"x", b"x")], 1):
        other.apply(index, encode_command(command))
    other.advance(APPLIED)
    body = bytearray(other.snapshot()[:-DIGEST])
    magic, _, applied, count = HEADER.unpack_from(body)
    HEADER.pack_into(body, 0, magic, 3, applied, count)
    with pytest.raises(SnapshotFormatError, match="key list for lease 1"):
        KVStateMachine().restore(seal([bytes(body) + b"".join(sm.leases.chunks())]))


def test_restored_changes_start_a_new_watch_history() -> None:
    m = _leased_machine()
    restored = KVStateMachine()
    restored.restore(m.sm.snapshot())
    assert restored.history.floor == m.index
    result = restored.apply(m.index + 1, encode_command(LeaseRevoke(1)))
    assert result.deleted == 2
    changes = restored.history.after(m.index) or []
    assert [Change(c.revision, c.key, None, None) for c in changes] == [
        Change(m.index + 1, b"k0", None, None),
        Change(m.index + 1, b"k1", None, None),
    ]


def test_a_keep_alive_batch_renews_each_lease_and_reports_the_gone_ones() -> None:
    from raftkv.kv.commands import LeaseKeepAliveMany, decode_command

    sm = KVStateMachine()
    sm.apply(1, encode_command(LeaseGrant(3, 5_000)))
    sm.apply(2, encode_command(LeaseGrant(5, 7_000)))
    sm.leases.take_timer_events()
    command = LeaseKeepAliveMany((3, 4, 5))
    assert decode_command(encode_command(command)) == command
    result = sm.apply(3, encode_command(command))
    assert result.status == Status.OK
    assert result.lease_ttls == (5_000, 0, 7_000)
    assert [lease.renewed_index for lease in sm.leases.leases()] == [3, 3]
    assert sm.leases.take_timer_events() == [(3, 5_000, False), (5, 7_000, False)]


@pytest.mark.parametrize("ids", [(), (2, 1), (1, 1), (0, 1), (2**63,)])
def test_a_keep_alive_batch_needs_increasing_ids(ids: tuple[int, ...]) -> None:
    from raftkv.kv.commands import LeaseKeepAliveMany

    with pytest.raises(ValueError):
        encode_command(LeaseKeepAliveMany(ids))
