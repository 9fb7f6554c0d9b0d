"""Transactions and leases: puts with a TTL or a lease, and compares on a key's lease
(raftkv/kv/txn.py, raftkv/kv/state_machine.py)."""

from __future__ import annotations

import pytest

from raftkv.kv import KVStateMachine, Put, Status, encode_command
from raftkv.kv.commands import LeaseGrant, Txn
from raftkv.kv.results import ApplyResult
from raftkv.kv.txn import (
    Compare,
    CompareOperator,
    CompareTarget,
    TxnBody,
    TxnBodyError,
    TxnOp,
    TxnOpKind,
    decode_txn_body,
    encode_txn_body,
)


class Machine:
    def __init__(self) -> None:
        self.sm = KVStateMachine()
        self.index = 0

    def run(self, command: Put | LeaseGrant | Txn) -> ApplyResult:
        self.index += 1
        return self.sm.apply(self.index, encode_command(command))

    def txn(self, *ops: TxnOp, compares: tuple[Compare, ...] = ()) -> ApplyResult:
        return self.run(Txn(TxnBody(compares, ops, ())))


def _put(key: bytes, *, lease: int = 0, ttl_ms: int = 0) -> TxnOp:
    return TxnOp(TxnOpKind.PUT, key, b"v", lease=lease, ttl_ms=ttl_ms)


def test_a_put_with_a_lease_attaches_the_key_and_revoke_deletes_it() -> None:
    m = Machine()
    lease = m.run(LeaseGrant(0, 10_000)).lease
    assert lease is not None
    result = m.txn(_put(b"a", lease=lease.id), _put(b"b"))
    assert result.status == Status.OK
    assert m.sm.leases.lease_of(b"a") == lease.id
    assert m.sm.leases.lease_of(b"b") == 0


def test_a_put_with_a_ttl_gets_a_private_lease() -> None:
    m = Machine()
    m.txn(_put(b"a", ttl_ms=5_000))
    lease_id = m.sm.leases.lease_of(b"a")
    lease = m.sm.leases.get(lease_id)
    assert lease is not None and lease.private and lease.ttl_ms == 5_000


def test_a_missing_lease_fails_the_whole_transaction_before_any_write() -> None:
    m = Machine()
    result = m.txn(_put(b"first"), _put(b"second", lease=99))
    assert result.status == Status.NOT_FOUND
    assert "lease 99 not found" in result.error
    assert result.entry_index == m.index
    assert m.sm.get(b"first") is None


def test_the_lease_compare_sees_the_key_s_lease() -> None:
    m = Machine()
    lease = m.run(LeaseGrant(7, 10_000)).lease
    assert lease is not None and lease.id == 7
    m.run(Put(b"k", b"v", lease=7))
    m.run(Put(b"plain", b"v"))

    def holds(key: bytes, lease_id: int) -> bool:
        compare = Compare(key, CompareTarget.LEASE, CompareOperator.EQUAL, lease_id)
        result = m.txn(compares=(compare,))
        assert result.txn is not None
        return result.txn.succeeded

    assert holds(b"k", 7)
    assert not holds(b"k", 0)
    assert holds(b"plain", 0)
    assert holds(b"absent", 0)


def test_leased_puts_encode_canonically() -> None:
    body = TxnBody((), (_put(b"a", lease=3), _put(b"b", ttl_ms=1500), _put(b"c")), ())
    encoded = encode_txn_body(body)
    assert decode_txn_body(encoded) == body
    # A plain put keeps the plain code: the leased form is used only when it must be.
    assert encode_txn_body(TxnBody((), (_put(b"c"),), ())) != encode_txn_body(
        TxnBody((), (_put(b"c", ttl_ms=1),), ())
    )


@pytest.mark.parametrize(
    "op",
    [
        TxnOp(TxnOpKind.PUT, b"k", b"v", lease=1, ttl_ms=1),
        TxnOp(TxnOpKind.DELETE, b"k", lease=1),
        TxnOp(TxnOpKind.GET, b"k", ttl_ms=1),
        TxnOp(TxnOpKind.PUT, b"k", b"v", lease=2**63),
    ],
)
def test_bad_lease_fields_are_refused(op: TxnOp) -> None:
    with pytest.raises(TxnBodyError):
        encode_txn_body(TxnBody((), (op,), ()))


def test_a_leased_put_with_neither_field_does_not_decode() -> None:
    encoded = bytearray(encode_txn_body(TxnBody((), (_put(b"a", lease=3),), ())))
    # The body ends with the put's lease and TTL (16 bytes), then the failure count (2).
    encoded[-18:-10] = bytes(8)
    with pytest.raises(TxnBodyError, match="neither"):
        decode_txn_body(bytes(encoded))
