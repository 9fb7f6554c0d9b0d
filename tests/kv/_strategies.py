"""Hypothesis strategies shared by the kv tests."""

from __future__ import annotations

from hypothesis import strategies as st

from raftkv.kv import Command, Delete, DeletePrefix, Put
from raftkv.kv.commands import Txn
from raftkv.kv.txn import (
    MAX_TXN_LIST_LIMIT,
    Compare,
    CompareOperator,
    CompareTarget,
    TxnBody,
    TxnOp,
    TxnOpKind,
    write_conflict,
)

U64_MAX = 2**64 - 1

u64 = st.integers(min_value=0, max_value=U64_MAX)

# A tiny alphabet makes keys collide and share prefixes, and includes the bytes at the
# ends of the range so that prefix bounds (0x00, 0xff) are exercised.
_ALPHABET = st.sampled_from(b"ab\x00\xff")
small_keys = st.lists(_ALPHABET, min_size=1, max_size=3).map(bytes)
small_prefixes = st.lists(_ALPHABET, min_size=0, max_size=2).map(bytes)
small_values = st.binary(max_size=8)


@st.composite
def tags(draw: st.DrawFn) -> dict[str, int]:
    """A valid request tag: untagged, or client_id > 0 with first_incomplete <= seq."""
    if draw(st.booleans()):
        return {"client_id": 0, "seq": 0, "first_incomplete": 0}
    client_id = draw(st.integers(min_value=1, max_value=U64_MAX))
    seq = draw(u64)
    first_incomplete = draw(st.integers(min_value=0, max_value=seq))
    return {"client_id": client_id, "seq": seq, "first_incomplete": first_incomplete}


prev_revisions = st.one_of(st.none(), u64)


@st.composite
def any_commands(draw: st.DrawFn) -> Command:
    """Any valid command, with fields across their whole ranges."""
    tag = draw(tags())
    kind = draw(st.sampled_from(["put", "delete", "delete_prefix"]))
    if kind == "put":
        return Put(
            draw(st.binary(min_size=1, max_size=64)),
            draw(st.binary(max_size=256)),
            draw(prev_revisions),
            **tag,
        )
    if kind == "delete":
        return Delete(draw(st.binary(min_size=1, max_size=64)), draw(prev_revisions), **tag)
    if draw(st.booleans()):
        return Txn(
            draw(txn_bodies(st.binary(min_size=1, max_size=16), st.binary(max_size=16))), **tag
        )
    return DeletePrefix(draw(st.binary(max_size=64)), **tag)


@st.composite
def compares(
    draw: st.DrawFn, keys: st.SearchStrategy[bytes], values: st.SearchStrategy[bytes]
) -> Compare:
    target = draw(st.sampled_from(list(CompareTarget)))
    operand: bytes | int
    if target is CompareTarget.VALUE:
        operand = draw(values)
    elif target is CompareTarget.EXISTS:
        operand = draw(st.sampled_from([0, 1]))
    else:
        operand = draw(st.one_of(st.integers(0, 64), u64))
    operators = list(CompareOperator)
    if target is CompareTarget.EXISTS:
        operators = [CompareOperator.EQUAL, CompareOperator.NOT_EQUAL]
    return Compare(draw(keys), target, draw(st.sampled_from(operators)), operand)


@st.composite
def txn_ops(
    draw: st.DrawFn,
    keys: st.SearchStrategy[bytes],
    values: st.SearchStrategy[bytes],
    prefixes: st.SearchStrategy[bytes],
) -> TxnOp:
    kind = draw(st.sampled_from(list(TxnOpKind)))
    if kind is TxnOpKind.PUT:
        return TxnOp(kind, draw(keys), draw(values))
    if kind in (TxnOpKind.DELETE, TxnOpKind.GET):
        return TxnOp(kind, draw(keys))
    if kind is TxnOpKind.DELETE_PREFIX:
        return TxnOp(kind, draw(prefixes))
    return TxnOp(kind, draw(prefixes), limit=draw(st.integers(1, MAX_TXN_LIST_LIMIT)))


def _branch(
    keys: st.SearchStrategy[bytes],
    values: st.SearchStrategy[bytes],
    prefixes: st.SearchStrategy[bytes],
) -> st.SearchStrategy[tuple[TxnOp, ...]]:
    return (
        st.lists(txn_ops(keys, values, prefixes), max_size=4)
        .map(tuple)
        .filter(lambda ops: write_conflict(ops) is None)
    )


@st.composite
def txn_bodies(
    draw: st.DrawFn,
    keys: st.SearchStrategy[bytes] | None = None,
    values: st.SearchStrategy[bytes] | None = None,
    prefixes: st.SearchStrategy[bytes] | None = None,
) -> TxnBody:
    """A valid transaction body (no branch writes a key twice)."""
    keys = small_keys if keys is None else keys
    values = small_values if values is None else values
    prefixes = small_prefixes if prefixes is None else prefixes
    return TxnBody(
        tuple(draw(st.lists(compares(keys, values), max_size=3))),
        draw(_branch(keys, values, prefixes)),
        draw(_branch(keys, values, prefixes)),
    )


# Revisions that sometimes match: the state machine tests use indexes 1..~60.
small_prev = st.one_of(st.none(), st.just(0), st.integers(min_value=1, max_value=60))


@st.composite
def kv_commands(draw: st.DrawFn) -> Command:
    """An untagged command over a small key space, conditions that sometimes hold."""
    kind = draw(st.sampled_from(["put", "put", "put", "delete", "delete", "delete_prefix"]))
    if kind == "put":
        return Put(draw(small_keys), draw(small_values), draw(small_prev))
    if kind == "delete":
        return Delete(draw(small_keys), draw(small_prev))
    return DeletePrefix(draw(small_prefixes))


@st.composite
def tagged_workloads(draw: st.DrawFn) -> list[Command]:
    """Commands from a few pipelining clients, with retries of earlier requests.

    Each client numbers its requests 1, 2, ...; ``first_incomplete`` never exceeds the
    lowest seq the client has not yet seen committed (so it is a value the client
    could really send), and retries resend the original request unchanged or with a
    later first_incomplete.
    """
    n = draw(st.integers(min_value=0, max_value=40))
    sent: dict[int, list[Command]] = {}
    out: list[Command] = []
    for _ in range(n):
        client_id = draw(st.integers(min_value=1, max_value=3))
        history = sent.setdefault(client_id, [])
        if history and draw(st.integers(min_value=0, max_value=3)) == 0:
            out.append(draw(st.sampled_from(history)))  # a retry, byte-identical
            continue
        if draw(st.integers(min_value=0, max_value=5)) == 0:
            out.append(draw(kv_commands()))  # an untagged command in between
            continue
        seq = len(history) + 1
        first_incomplete = draw(st.integers(min_value=0, max_value=seq))
        base = draw(kv_commands())
        tag = {"client_id": client_id, "seq": seq, "first_incomplete": first_incomplete}
        cmd: Command
        if isinstance(base, Put):
            cmd = Put(base.key, base.value, base.prev_revision, **tag)
        elif isinstance(base, Delete):
            cmd = Delete(base.key, base.prev_revision, **tag)
        else:
            cmd = DeletePrefix(base.prefix, **tag)
        history.append(cmd)
        out.append(cmd)
    return out
