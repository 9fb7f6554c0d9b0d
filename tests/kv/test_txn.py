"""Transactions: the body's encoding, compares, and what the state machine does with them
(one revision, the branch the compares choose, reads that see the writes before them,
retries, snapshots, the watch history), against a reference model."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftkv.kv import Command, KeyValue, KVStateMachine, Put, Status, encode_command
from raftkv.kv.commands import Txn, decode_command
from raftkv.kv.snapshot_format import HEADER
from raftkv.kv.txn import (
    MAX_TXN_LIST_LIMIT,
    Compare,
    CompareOperator,
    CompareTarget,
    TxnBody,
    TxnBodyError,
    TxnOp,
    TxnOpKind,
    TxnOpResult,
    TxnResult,
    compare_holds,
    decode_txn_body,
    decode_txn_result,
    encode_txn_body,
    encode_txn_result,
    write_conflict,
)

from ._strategies import kv_commands, txn_bodies

EQ, NE, LT, GT = (
    CompareOperator.EQUAL,
    CompareOperator.NOT_EQUAL,
    CompareOperator.LESS,
    CompareOperator.GREATER,
)
PUT, DELETE, DELETE_PREFIX, GET, LIST = (
    TxnOpKind.PUT,
    TxnOpKind.DELETE,
    TxnOpKind.DELETE_PREFIX,
    TxnOpKind.GET,
    TxnOpKind.LIST_PREFIX,
)


def put(key: bytes, value: bytes) -> TxnOp:
    return TxnOp(PUT, key, value)


# -- the body ------------------------------------------------------------------------------


@given(txn_bodies(st.binary(min_size=1, max_size=8), st.binary(max_size=8)))
def test_a_body_round_trips(body: TxnBody) -> None:
    assert decode_txn_body(encode_txn_body(body)) == body


@given(txn_bodies(), st.data())
def test_mutated_bodies_decode_canonically_or_fail(body: TxnBody, data: st.DataObject) -> None:
    raw = bytearray(encode_txn_body(body))
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_txn_body(bytes(raw))
    except TxnBodyError:
        return
    assert encode_txn_body(decoded) == bytes(raw)


@given(st.binary(max_size=64))
def test_garbage_raises_only_txn_body_error(data: bytes) -> None:
    try:
        body = decode_txn_body(data)
    except TxnBodyError:
        return
    assert encode_txn_body(body) == data


def test_the_layout_is_stable() -> None:
    """The bytes are part of the log format: they must never change silently."""
    body = TxnBody(
        (Compare(b"k", CompareTarget.MOD_REVISION, LT, 7),),
        (put(b"k", b"v"),),
        (TxnOp(LIST, b"p", limit=2),),
    )
    assert encode_txn_body(body).hex() == (
        "0100"  # one compare
        "03"
        "02"
        "01000000"
        "6b"  # mod_revision < ..., key "k"
        "0700000000000000"  # 7
        "0100"  # one success operation
        "01"
        "01000000"
        "6b"
        "01000000"
        "76"  # put "k" = "v"
        "0100"  # one failure operation
        "05"
        "01000000"
        "70"
        "02000000"  # list prefix "p", limit 2
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (TxnBody((Compare(b"", CompareTarget.VERSION, EQ, 1),)), "needs a key"),
        (TxnBody((Compare(b"k", CompareTarget.VALUE, EQ, 1),)), "needs a value"),
        (TxnBody((Compare(b"k", CompareTarget.VERSION, EQ, b"1"),)), "needs a number"),
        (TxnBody((Compare(b"k", CompareTarget.VERSION, EQ, -1),)), "needs a number"),
        (TxnBody((Compare(b"k", CompareTarget.EXISTS, LT, 1),)), "== or !="),
        (TxnBody((Compare(b"k", CompareTarget.EXISTS, EQ, 2),)), "true or false"),
        (TxnBody(success=(put(b"", b"v"),)), "put needs a key"),
        (TxnBody(success=(TxnOp(GET, b""),)), "get needs a key"),
        (TxnBody(success=(TxnOp(DELETE, b"k", b"v"),)), "takes no value"),
        (TxnBody(success=(TxnOp(LIST, b"p"),)), "limit must be between"),
        (TxnBody(success=(TxnOp(LIST, b"p", limit=MAX_TXN_LIST_LIMIT + 1),)), "limit"),
        (TxnBody(success=(TxnOp(GET, b"k", limit=1),)), "takes no limit"),
        (TxnBody(success=(put(b"k", b"1"), put(b"k", b"2"))), "written twice"),
        (TxnBody(failure=(put(b"k", b"1"), TxnOp(DELETE, b"k"))), "written twice"),
        (TxnBody(success=(TxnOp(DELETE_PREFIX, b"p/"), put(b"p/a", b"1"))), "deleted prefix"),
        (TxnBody(success=(put(b"p/a", b"1"), TxnOp(DELETE_PREFIX, b"p"))), "deleted prefix"),
    ],
)
def test_invalid_bodies_are_refused(body: TxnBody, message: str) -> None:
    with pytest.raises(TxnBodyError, match=message):
        encode_txn_body(body)


def test_reads_and_separate_branches_may_share_keys() -> None:
    assert write_conflict((put(b"k", b"1"), TxnOp(GET, b"k"), TxnOp(LIST, b"", limit=5))) is None
    # Two overlapping prefix deletes write nothing twice (the second finds nothing more).
    assert write_conflict((TxnOp(DELETE_PREFIX, b"p"), TxnOp(DELETE_PREFIX, b"p/"))) is None
    body = TxnBody(success=(put(b"k", b"1"),), failure=(put(b"k", b"2"),))
    assert decode_txn_body(encode_txn_body(body)) == body


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated"),
        (b"\x00\x00\x00\x00", "truncated"),
        (b"\x00\x00" * 3 + b"\x00", "after the transaction"),
        (b"\x01\x00" + struct.pack("<BBI", 9, 0, 1) + b"k", "compare target"),
        (b"\x01\x00" + struct.pack("<BBI", 1, 9, 1) + b"k", "compare operator"),
        (b"\x00\x00\x01\x00" + struct.pack("<BI", 9, 1) + b"k", "operation code"),
        (b"\x00\x00\x01\x00" + struct.pack("<BI", 2, 5) + b"k", "overruns"),
    ],
)
def test_specific_garbage(data: bytes, message: str) -> None:
    with pytest.raises(TxnBodyError, match=message):
        decode_txn_body(data)


# -- compares --------------------------------------------------------------------------------

KV = KeyValue(b"k", b"m", 3, 5, 2)


@pytest.mark.parametrize(
    ("compare", "holds_on_kv", "holds_when_absent"),
    [
        (Compare(b"k", CompareTarget.VALUE, EQ, b"m"), True, False),
        (Compare(b"k", CompareTarget.VALUE, NE, b"m"), False, False),
        (Compare(b"k", CompareTarget.VALUE, LT, b"n"), True, False),
        (Compare(b"k", CompareTarget.VALUE, GT, b"l"), True, False),
        (Compare(b"k", CompareTarget.VERSION, EQ, 2), True, False),
        (Compare(b"k", CompareTarget.VERSION, EQ, 0), False, True),
        (Compare(b"k", CompareTarget.CREATE_REVISION, LT, 4), True, True),
        (Compare(b"k", CompareTarget.MOD_REVISION, GT, 4), True, False),
        (Compare(b"k", CompareTarget.MOD_REVISION, NE, 5), False, True),
        (Compare(b"k", CompareTarget.EXISTS, EQ, 1), True, False),
        (Compare(b"k", CompareTarget.EXISTS, EQ, 0), False, True),
        (Compare(b"k", CompareTarget.EXISTS, NE, 1), False, True),
    ],
)
def test_compares(compare: Compare, holds_on_kv: bool, holds_when_absent: bool) -> None:
    assert compare_holds(compare, KV) is holds_on_kv
    assert compare_holds(compare, None) is holds_when_absent


# -- results -------------------------------------------------------------------------------


def test_a_result_round_trips() -> None:
    result = TxnResult(
        True,
        (
            TxnOpResult(PUT, prev=KV),
            TxnOpResult(DELETE, prev=KV, deleted=1),
            TxnOpResult(DELETE_PREFIX, deleted=3),
            TxnOpResult(GET),
            TxnOpResult(LIST, items=(KV, KeyValue(b"k2", b"", 1, 1, 1)), more=True),
        ),
    )
    data = b"xx" + encode_txn_result(result) + b"yy"
    assert decode_txn_result(data, 2) == (result, len(data) - 2)
    for size in range(2, len(data) - 2):
        with pytest.raises(TxnBodyError):
            decode_txn_result(data[:size], 2)


# -- in the state machine ------------------------------------------------------------------


class Machine:
    def __init__(self) -> None:
        self.sm = KVStateMachine()
        self.index = 0

    def run(self, command: Command) -> object:
        self.index += 1
        return self.sm.apply(self.index, encode_command(command))

    def txn(
        self,
        compares: tuple[Compare, ...] = (),
        success: tuple[TxnOp, ...] = (),
        failure: tuple[TxnOp, ...] = (),
        **tag: int,
    ) -> TxnResult:
        result = self.run(Txn(TxnBody(compares, success, failure), **tag))
        assert result.status == Status.OK, result  # type: ignore[attr-defined]
        assert result.entry_index == self.index  # type: ignore[attr-defined]
        txn = result.txn  # type: ignore[attr-defined]
        assert isinstance(txn, TxnResult)
        return txn


def test_a_transaction_writes_every_key_at_one_revision() -> None:
    m = Machine()
    m.run(Put(b"a", b"1"))
    m.run(Put(b"p/x", b"x"))
    m.run(Put(b"p/y", b"y"))
    result = m.txn(
        (Compare(b"a", CompareTarget.VALUE, EQ, b"1"),),
        (put(b"a", b"2"), put(b"b", b"new"), TxnOp(DELETE_PREFIX, b"p/"), TxnOp(GET, b"b")),
    )
    assert result.succeeded
    assert result.results == (
        TxnOpResult(PUT, prev=KeyValue(b"a", b"1", 1, 1, 1)),
        TxnOpResult(PUT),
        TxnOpResult(DELETE_PREFIX, deleted=2),
        TxnOpResult(GET, items=(KeyValue(b"b", b"new", 4, 4, 1),)),  # sees the put before it
    )
    assert m.sm.get(b"a") == KeyValue(b"a", b"2", 1, 4, 2)
    assert m.sm.range() == [KeyValue(b"a", b"2", 1, 4, 2), KeyValue(b"b", b"new", 4, 4, 1)]
    # The watch history has every change, at the transaction's revision, in its order.
    changes = m.sm.history.after(3) or []
    assert [(c.revision, c.key) for c in changes] == [
        (4, b"a"),
        (4, b"b"),
        (4, b"p/x"),
        (4, b"p/y"),
    ]


def test_a_failed_compare_runs_the_failure_branch() -> None:
    m = Machine()
    m.run(Put(b"a", b"1"))
    result = m.txn(
        (Compare(b"a", CompareTarget.VALUE, EQ, b"1"), Compare(b"b", CompareTarget.EXISTS, EQ, 1)),
        (put(b"a", b"success"),),
        (TxnOp(GET, b"a"), TxnOp(DELETE, b"a"), TxnOp(DELETE, b"never")),
    )
    assert not result.succeeded
    assert result.results == (
        TxnOpResult(GET, items=(KeyValue(b"a", b"1", 1, 1, 1),)),
        TxnOpResult(DELETE, prev=KeyValue(b"a", b"1", 1, 1, 1), deleted=1),
        TxnOpResult(DELETE),
    )
    assert len(m.sm) == 0


def test_a_transaction_that_writes_nothing_changes_no_revision() -> None:
    m = Machine()
    m.run(Put(b"a", b"1"))
    outcome = m.run(
        Txn(TxnBody((Compare(b"a", CompareTarget.VERSION, GT, 5),), (put(b"a", b"2"),)))
    )
    assert outcome.revision == 0  # type: ignore[attr-defined]
    assert outcome.txn == TxnResult(False, ())  # type: ignore[attr-defined]
    assert m.sm.get(b"a") == KeyValue(b"a", b"1", 1, 1, 1)
    assert m.sm.applied_index == 2
    assert m.sm.history.after(1) == []


def test_a_list_in_a_transaction_says_when_there_are_more() -> None:
    m = Machine()
    for key in (b"p/a", b"p/b", b"p/c", b"q"):
        m.run(Put(key, b"v"))
    result = m.txn(success=(TxnOp(LIST, b"p/", limit=2), TxnOp(LIST, b"p/", limit=3)))
    first, second = result.results
    assert [kv.key for kv in first.items] == [b"p/a", b"p/b"] and first.more
    assert [kv.key for kv in second.items] == [b"p/a", b"p/b", b"p/c"] and not second.more


def test_an_invalid_body_in_the_log_is_a_bad_command() -> None:
    m = Machine()
    m.run(Put(b"k", b"v"))
    header = encode_command(Txn(TxnBody()))[:26]
    bad = header + b"\x00\x00\x02\x00" + struct.pack("<BI", 1, 1) + b"k" + struct.pack("<I", 1)
    bad += b"1" + struct.pack("<BI", 2, 1) + b"k" + b"\x00\x00"  # writes "k" twice
    with pytest.raises(ValueError, match="written twice"):
        decode_command(bad)
    result = m.sm.apply(2, bad)
    assert result.status == Status.BAD_COMMAND
    assert "written twice" in result.error
    assert m.sm.get(b"k") == KeyValue(b"k", b"v", 1, 1, 1)


def test_a_retried_transaction_is_answered_from_the_client_table() -> None:
    m = Machine()
    body = TxnBody((Compare(b"n", CompareTarget.EXISTS, EQ, 0),), (put(b"n", b"1"),))
    first = m.txn(body.compares, body.success, client_id=7, seq=1)
    again = m.run(Txn(body, client_id=7, seq=1))
    assert again.txn == first and first.succeeded  # type: ignore[attr-defined]
    assert again.entry_index == 1  # type: ignore[attr-defined]
    assert m.sm.get(b"n") == KeyValue(b"n", b"1", 1, 1, 1)


def test_snapshots_carry_retained_transaction_results() -> None:
    m = Machine()
    m.run(Put(b"k", b"v", client_id=3, seq=1))
    plain = m.sm.snapshot()
    assert HEADER.unpack_from(plain)[1] == 2  # no transaction result: still version 2
    m.txn(success=(TxnOp(GET, b"k"), put(b"j", b"w")), client_id=3, seq=2)
    image = m.sm.snapshot()
    assert HEADER.unpack_from(image)[1] == 3
    restored = KVStateMachine()
    restored.restore(image)
    assert restored.state_hash() == m.sm.state_hash()
    retried = restored.apply(3, encode_command(Txn(TxnBody(), client_id=3, seq=2)))
    assert retried.txn is not None and retried.txn.results[0].items == (
        KeyValue(b"k", b"v", 1, 1, 1),
    )
    assert retried.entry_index == 2


# -- against a reference model ---------------------------------------------------------------


class Model:
    """Transactions done the obvious way on a dict of key -> (value, create, mod, version)."""

    def __init__(self) -> None:
        self.data: dict[bytes, tuple[bytes, int, int, int]] = {}

    def kv(self, key: bytes) -> KeyValue | None:
        found = self.data.get(key)
        return None if found is None else KeyValue(key, *found)

    def apply(self, index: int, body: TxnBody) -> TxnResult:
        succeeded = all(compare_holds(c, self.kv(c.key)) for c in body.compares)
        results = []
        for op in body.success if succeeded else body.failure:
            before = self.kv(op.key)
            if op.kind is PUT:
                create, version = (
                    (index, 1) if before is None else (before.create_revision, before.version + 1)
                )
                self.data[op.key] = (op.value, create, index, version)
                results.append(TxnOpResult(PUT, prev=before))
            elif op.kind is DELETE:
                self.data.pop(op.key, None)
                results.append(TxnOpResult(DELETE, prev=before, deleted=int(before is not None)))
            elif op.kind is DELETE_PREFIX:
                doomed = [k for k in self.data if k.startswith(op.key)]
                for k in doomed:
                    del self.data[k]
                results.append(TxnOpResult(DELETE_PREFIX, deleted=len(doomed)))
            elif op.kind is GET:
                results.append(TxnOpResult(GET, items=() if before is None else (before,)))
            else:
                keys = sorted(k for k in self.data if k.startswith(op.key))
                items = tuple(self.kv(k) for k in keys[: op.limit])
                results.append(TxnOpResult(LIST, items=items, more=len(keys) > op.limit))  # type: ignore[arg-type]
        return TxnResult(succeeded, tuple(results))


@settings(max_examples=300)
@given(st.lists(st.one_of(txn_bodies(), kv_commands()), max_size=20))
def test_transactions_match_the_reference(steps: list[object]) -> None:
    m = Machine()
    model = Model()
    for step in steps:
        if isinstance(step, TxnBody):
            got = m.txn(step.compares, step.success, step.failure)
            assert got == model.apply(m.index, step)
        else:
            m.run(step)  # type: ignore[arg-type]  # a plain write, from kv_commands
            # The model follows the state machine's plain writes by copying them.
            model.data = {kv.key: (kv.value, *kv[2:]) for kv in m.sm.range()}
        assert {kv.key: kv for kv in m.sm.range()} == {key: model.kv(key) for key in model.data}


def test_the_lists_of_a_transaction_share_a_byte_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from raftkv.kv import state_machine

    monkeypatch.setattr(state_machine, "MAX_TXN_LIST_BYTES", 25)
    m = Machine()
    for key in (b"p/a", b"p/b", b"p/c"):
        m.run(Put(key, b"1234567"))  # 10 bytes of key and value each
    first, second = m.txn(
        success=(TxnOp(LIST, b"p/", limit=5), TxnOp(LIST, b"p/", limit=5))
    ).results
    assert [kv.key for kv in first.items] == [b"p/a", b"p/b"] and first.more
    assert second.items == () and second.more  # the budget is spent


def test_which_key_a_conflict_names_does_not_depend_on_hash_order() -> None:
    ops = (put(b"a", b"1"), put(b"b", b"2"), put(b"c", b"3"), TxnOp(DELETE_PREFIX, b""))
    assert write_conflict(ops) == "key 'a' is written twice: also under deleted prefix ''"


def test_a_version_3_snapshot_without_transaction_results_is_refused() -> None:
    m = Machine()
    m.run(Put(b"k", b"v"))
    image = m.sm.snapshot()
    body = bytearray(image[:-32])
    magic, _, applied, count = HEADER.unpack_from(body)
    HEADER.pack_into(body, 0, magic, 3, applied, count)
    from raftkv.kv.snapshot_format import SnapshotFormatError, seal

    # A well-formed version 3 body: an unused lease table (next id 1, no leases) follows.
    empty_leases = (1).to_bytes(8, "little") + (0).to_bytes(8, "little")
    with pytest.raises(SnapshotFormatError, match="does not match its contents"):
        KVStateMachine().restore(seal([bytes(body) + empty_leases]))


@given(txn_bodies())
def test_a_command_from_an_encoded_body_is_the_command_encoded_whole(body: TxnBody) -> None:
    from raftkv.kv.commands import encode_txn_command

    tag = {"client_id": 9, "seq": 4, "first_incomplete": 2}
    assert encode_txn_command(encode_txn_body(body), **tag) == encode_command(Txn(body, **tag))


def test_a_command_from_a_body_that_does_not_decode_is_refused() -> None:
    from raftkv.kv.commands import encode_txn_command

    with pytest.raises(ValueError, match="truncated"):
        encode_txn_command(b"\x01\x00")
