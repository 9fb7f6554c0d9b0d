"""Tests of the linearizability checker for key-value histories."""

from __future__ import annotations

import functools
import math
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

import pytest

from raftkv.testing.linearizability import (
    CheckResult,
    History,
    Operation,
    OpKind,
    OpRecord,
    Outcome,
    Result,
    Status,
    cas,
    check,
    delete,
    get,
    put,
)

OK = Status.OK
CONFLICT = Status.CONFLICT
NOT_FOUND = Status.NOT_FOUND


# ---------------------------------------------------------------------------------------
# Helpers: an independent sequential specification, a brute-force checker and a witness
# validator, so the checker's verdicts are compared with something other than itself.
# ---------------------------------------------------------------------------------------

_IMPOSSIBLE = object()


def spec_step(state: str | None, rec: OpRecord) -> object:
    """The register after ``rec``, or ``_IMPOSSIBLE`` if its result cannot happen."""
    op = rec.op
    if rec.outcome is not Outcome.COMPLETED:  # unknown: it took effect here
        if op.kind is OpKind.PUT:
            return op.value
        if op.kind is OpKind.CAS:
            return op.value if state == op.expected else state
        if op.kind is OpKind.DELETE:
            return None
        return state
    if op.kind is OpKind.GET:
        return state if rec.result == state else _IMPOSSIBLE
    if op.kind is OpKind.PUT:
        return op.value
    if op.kind is OpKind.CAS:
        matched = state == op.expected
        if (rec.result is OK) != matched:
            return _IMPOSSIBLE
        return op.value if matched else state
    exists = state is not None
    if (rec.result is OK) != exists:
        return _IMPOSSIBLE
    return None


def brute_force(records: Sequence[OpRecord]) -> bool:
    """Linearizability by trying every order (small histories only)."""
    recs = [r for r in records if r.outcome is not Outcome.FAILED]

    @functools.cache
    def search(remaining: frozenset[int], state: tuple[tuple[str, str | None], ...]) -> bool:
        if all(recs[j].outcome is not Outcome.COMPLETED for j in remaining):
            return True  # operations with unknown outcome may never take effect
        values = dict(state)
        for i in remaining:
            r = recs[i]
            if any(
                recs[j].outcome is Outcome.COMPLETED and recs[j].ret < r.call
                for j in remaining
                if j != i
            ):
                continue  # something that finished before r started is still unplaced
            after = spec_step(values.get(r.key), r)
            if after is _IMPOSSIBLE:
                continue
            assert after is None or isinstance(after, str)
            new_values = {**values, r.key: after}
            if search(remaining - {i}, tuple(sorted(new_values.items()))):
                return True
        return False

    return search(frozenset(range(len(recs))), ())


def assert_valid_witness(history: History, result: CheckResult) -> None:
    """The linearization the checker returned must be a legal sequential execution."""
    assert result.ok, result.describe()
    recs = {r.id: r for r in history.records}
    for key, order in result.linearizations.items():
        placed = set(order)
        state: str | None = None
        for pos, op_id in enumerate(order):
            r = recs[op_id]
            assert r.key == key
            assert r.outcome is not Outcome.FAILED
            after = spec_step(state, r)
            assert after is not _IMPOSSIBLE, f"{r} impossible on {state!r}"
            assert after is None or isinstance(after, str)
            state = after
            for later in order[pos + 1 :]:
                # nothing placed later may have returned before this one was invoked
                assert not recs[later].ret < r.call, f"{recs[later]} precedes {r}"
        for r in recs.values():
            if r.key == key and r.outcome is Outcome.COMPLETED:
                assert r.id in placed, f"{r} missing from the linearization"


class Builder:
    """Builds a history from explicit times."""

    def __init__(self) -> None:
        self.h = History()

    def ok(self, client: int, op: Operation, call: float, ret: float, result: Result = OK) -> int:
        return self.h.record(client, op, call, ret, result)

    def unknown(self, client: int, op: Operation, call: float) -> int:
        return self.h.record(client, op, call, None, outcome=Outcome.UNKNOWN)

    def failed(self, client: int, op: Operation, call: float, ret: float) -> int:
        return self.h.record(client, op, call, ret, outcome=Outcome.FAILED)


def assert_linearizable(h: History) -> CheckResult:
    res = check(h)
    assert res.ok, res.describe()
    assert not res.unknown
    assert_valid_witness(h, res)
    return res


def assert_not_linearizable(h: History, key: str) -> CheckResult:
    res = check(h)
    assert not res.ok
    assert not res.unknown
    assert res.key == key, res.describe()
    assert res.unplaced, "a failure must name operations that could not be placed"
    assert all(r.key == key for r in res.linearized + res.unplaced)
    return res


# ---------------------------------------------------------------------------------------
# Known-good histories.
# ---------------------------------------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    res = check(History())
    assert res.ok
    assert res.keys_checked == 0


def test_sequential_history() -> None:
    b = Builder()
    b.ok(1, get("x"), 0, 1, None)
    b.ok(1, put("x", "1"), 2, 3)
    b.ok(2, get("x"), 4, 5, "1")
    b.ok(2, cas("x", "1", "2"), 6, 7, OK)
    b.ok(1, cas("x", "1", "3"), 8, 9, CONFLICT)
    b.ok(1, get("x"), 10, 11, "2")
    b.ok(2, delete("x"), 12, 13, OK)
    b.ok(1, delete("x"), 14, 15, NOT_FOUND)
    b.ok(2, cas("x", None, "4"), 16, 17, OK)
    b.ok(1, cas("x", "4", None), 18, 19, OK)
    b.ok(2, get("x"), 20, 21, None)
    res = assert_linearizable(b.h)
    assert res.linearizations["x"] == tuple(range(11))


@pytest.mark.parametrize(
    ("mid_read", "final_read"),
    [("a", "b"), ("b", "a"), (None, "a"), (None, "b"), ("a", "a"), ("b", "b")],
)
def test_concurrent_writes_allow_several_orders(mid_read: str | None, final_read: str) -> None:
    # Two puts overlap each other and a read; either order of the puts is valid.
    b = Builder()
    b.ok(1, put("x", "a"), 0, 10)
    b.ok(2, put("x", "b"), 1, 10)
    b.ok(3, get("x"), 2, 3, mid_read)
    b.ok(3, get("x"), 11, 12, final_read)
    b.ok(4, get("x"), 13, 14, final_read)
    res = assert_linearizable(b.h)
    order = res.linearizations["x"]
    last_put = 0 if final_read == "a" else 1
    assert order.index(last_put) > order.index(1 - last_put)


def test_only_one_interleaving_is_valid() -> None:
    # put(a) spans put(b); the read after put(b) returned sees a, so b went first.
    b = Builder()
    pa = b.ok(1, put("x", "a"), 0, 10)
    pb = b.ok(2, put("x", "b"), 1, 3)
    g1 = b.ok(3, get("x"), 4, 5, "a")
    g2 = b.ok(2, get("x"), 11, 12, "a")
    res = assert_linearizable(b.h)
    assert res.linearizations["x"] == (pb, pa, g1, g2)


def test_cas_chain_orders_concurrent_operations() -> None:
    # cas(1->2) is invoked before cas(0->1) but can only succeed after it.
    b = Builder()
    p0 = b.ok(1, put("x", "0"), 0, 1)
    c12 = b.ok(2, cas("x", "1", "2"), 2, 10, OK)
    c01 = b.ok(3, cas("x", "0", "1"), 3, 9, OK)
    c03 = b.ok(4, cas("x", "0", "3"), 4, 8, CONFLICT)
    g = b.ok(1, get("x"), 11, 12, "2")
    res = assert_linearizable(b.h)
    order = res.linearizations["x"]
    assert order[0] == p0
    assert order.index(c01) < order.index(c12) < order.index(g)
    assert order.index(c03) > order.index(c01)


def test_touching_intervals_count_as_concurrent() -> None:
    # put returns at t=5 and get is invoked at t=5: they may be in either order.
    b = Builder()
    b.ok(1, put("x", "1"), 0, 5)
    b.ok(2, get("x"), 5, 6, None)
    assert_linearizable(b.h)


def test_unknown_write_that_took_effect() -> None:
    b = Builder()
    b.ok(1, put("x", "1"), 0, 1)
    u = b.unknown(1, put("x", "2"), 2)
    b.ok(2, get("x"), 3, 4, "2")
    b.ok(3, get("x"), 5, 6, "2")
    res = assert_linearizable(b.h)
    assert u in res.linearizations["x"]


def test_unknown_write_that_did_not_take_effect() -> None:
    b = Builder()
    b.ok(1, put("x", "1"), 0, 1)
    u = b.unknown(1, put("x", "2"), 2)
    b.ok(2, get("x"), 3, 4, "1")
    b.ok(3, get("x"), 50, 51, "1")
    res = assert_linearizable(b.h)
    assert u not in res.linearizations["x"]


def test_unknown_write_may_take_effect_long_after_it_timed_out() -> None:
    b = Builder()
    b.unknown(1, put("x", "u"), 0)
    b.ok(1, get("x"), 5, 6, None)
    b.ok(2, get("x"), 7, 8, None)
    b.ok(2, get("x"), 100, 101, "u")
    assert_linearizable(b.h)
    # ... but only once: the value cannot disappear again without another write
    b.ok(3, get("x"), 102, 103, None)
    assert_not_linearizable(b.h, "x")


def test_unknown_write_cannot_take_effect_before_its_invocation() -> None:
    b = Builder()
    b.ok(1, get("x"), 0, 1, "u")
    b.unknown(2, put("x", "u"), 2)
    assert_not_linearizable(b.h, "x")


def test_unknown_cas_and_delete_either_way() -> None:
    for seen in ("1", "2"):
        b = Builder()
        b.ok(1, put("x", "1"), 0, 1)
        b.unknown(1, cas("x", "1", "2"), 2)
        b.ok(2, get("x"), 3, 4, seen)
        assert_linearizable(b.h)
    for seen_del in ("1", None):
        b = Builder()
        b.ok(1, put("x", "1"), 0, 1)
        b.unknown(1, delete("x"), 2)
        b.ok(2, get("x"), 3, 4, seen_del)
        assert_linearizable(b.h)
    # an unknown cas whose comparison cannot hold never takes effect
    b = Builder()
    b.ok(1, put("x", "1"), 0, 1)
    b.unknown(1, cas("x", "0", "2"), 2)
    b.ok(2, get("x"), 3, 4, "2")
    assert_not_linearizable(b.h, "x")


def test_unknown_write_observed_only_through_a_conflict() -> None:
    # The conflict of the cas is explained only by the unknown put having happened.
    b = Builder()
    b.ok(1, put("x", "a"), 0, 1)
    b.unknown(1, put("x", "b"), 2)
    b.ok(2, cas("x", "a", "c"), 3, 4, CONFLICT)
    assert_linearizable(b.h)
    assert brute_force(b.h.records)
    # Without the unknown put the same cas must have succeeded.
    b2 = Builder()
    b2.ok(1, put("x", "a"), 0, 1)
    b2.ok(2, cas("x", "a", "c"), 3, 4, CONFLICT)
    assert_not_linearizable(b2.h, "x")


def test_unknown_writes_used_too_early_are_still_available_later() -> None:
    # The search meets "both puts placed, register 'a'" twice: first with the unknown
    # put and cas spent (a dead end: nothing is left to write 'w' for the last read),
    # then with them unspent, where the history is linearizable. The first must not be
    # taken to stand for the second.
    b = Builder()
    b.ok(1, put("x", "a"), 0, 10)
    b.ok(2, put("x", "b"), 0, 10)
    b.unknown(3, put("x", "w"), 0)
    b.unknown(4, cas("x", "w", "a"), 0)
    b.ok(5, get("x"), 11, 12, "a")
    b.ok(5, get("x"), 20, 21, "w")
    assert brute_force(b.h.records)
    assert_linearizable(b.h)


def test_unknown_read_is_ignored() -> None:
    b = Builder()
    b.ok(1, put("x", "1"), 0, 1)
    b.h.record(2, get("x"), 2, None, outcome=Outcome.UNKNOWN)
    b.ok(3, get("x"), 3, 4, "1")
    res = assert_linearizable(b.h)
    assert res.operations_checked == 2


def test_failed_write_must_not_be_visible() -> None:
    b = Builder()
    b.ok(1, put("x", "1"), 0, 1)
    b.failed(2, put("x", "f"), 2, 3)
    b.ok(3, get("x"), 4, 5, "1")
    assert_linearizable(b.h)
    b.ok(3, get("x"), 6, 7, "f")
    assert_not_linearizable(b.h, "x")


def test_pending_operation_is_treated_as_unknown() -> None:
    h = History()
    w = h.invoke(1, put("x", "p"))
    r = h.invoke(2, get("x"))
    h.complete(r, "p")
    res = check(h)
    assert res.ok, res.describe()
    assert h[w].outcome is Outcome.PENDING
    assert math.isinf(h[w].ret)


# ---------------------------------------------------------------------------------------
# Anomalies the checker must reject.
# ---------------------------------------------------------------------------------------


QUICK_STALE = "after it was overwritten"
SEARCHED = "no order of its operations is consistent with their results"


def test_stale_read() -> None:
    b = Builder()
    b.ok(1, put("x", "1"), 0, 1)
    b.ok(1, put("x", "2"), 2, 3)
    stale = b.ok(2, get("x"), 4, 5, "1")
    res = assert_not_linearizable(b.h, "x")
    assert [r.id for r in res.unplaced] == [stale]
    assert QUICK_STALE in res.reason
    assert "#0 wrote it, then #1 put('x', '2') overwrote it" in res.reason


def test_stale_read_check_respects_touching_intervals() -> None:
    # The newer put returns exactly when the read is invoked: they are concurrent.
    b = Builder()
    b.ok(1, put("x", "1"), 0, 1)
    b.ok(1, put("x", "2"), 2, 5)
    b.ok(2, get("x"), 5, 6, "1")
    assert_linearizable(b.h)
    # The newer put is invoked exactly when the older returns: either may come first.
    b2 = Builder()
    b2.ok(1, put("x", "1"), 0, 2)
    b2.ok(2, put("x", "2"), 2, 3)
    b2.ok(3, get("x"), 4, 5, "1")
    assert_linearizable(b2.h)


def test_stale_read_check_with_several_writes_of_the_value() -> None:
    # 'A' is written twice; the read is stale only if both writes were overwritten.
    b = Builder()
    b.ok(1, put("x", "A"), 0, 1)
    b.ok(2, put("x", "B"), 2, 3)
    b.ok(1, put("x", "A"), 4, 5)
    b.ok(3, get("x"), 6, 7, "A")
    assert_linearizable(b.h)
    b.ok(2, delete("x"), 8, 9, OK)
    b.ok(3, get("x"), 10, 11, "A")
    res = assert_not_linearizable(b.h, "x")
    assert QUICK_STALE in res.reason
    # an unknown write of the value may take effect late: no quick verdict, and fine
    b.unknown(4, put("x", "A"), 7.5)
    assert_linearizable(b.h)


def test_stale_read_behind_a_slow_write_needs_the_search() -> None:
    # put(2) is still running when the first read sees it, so no single write is known
    # to have replaced 1 before the second read: only the search can tell.
    b = Builder()
    b.ok(1, put("x", "1"), 0, 1)
    b.ok(2, put("x", "2"), 2, 20)
    b.ok(3, get("x"), 3, 4, "2")
    back = b.ok(3, get("x"), 5, 6, "1")
    res = assert_not_linearizable(b.h, "x")
    assert res.reason.startswith(SEARCHED)
    assert [r.id for r in res.linearized] == [0, 1, 2]
    assert res.value_after_prefix == "2"
    assert [r.id for r in res.unplaced] == [back]


def test_lost_write() -> None:
    # put(2) was acknowledged, yet every later read still sees 1.
    b = Builder()
    b.ok(1, put("x", "1"), 0, 1)
    b.ok(2, put("x", "2"), 2, 3)
    b.ok(3, get("x"), 4, 5, "1")
    b.ok(1, get("x"), 6, 7, "1")
    b.ok(2, get("x"), 8, 9, "1")
    res = assert_not_linearizable(b.h, "x")
    assert res.unplaced[0].op.is_read
    assert res.unplaced[0].result == "1"


def test_duplicated_write() -> None:
    # A single put(A) shows up again after B replaced it: it was applied twice.
    b = Builder()
    b.ok(1, put("x", "A"), 0, 1)
    b.ok(2, put("x", "B"), 2, 3)
    b.ok(3, get("x"), 4, 5, "B")
    again = b.ok(3, get("x"), 6, 7, "A")
    res = assert_not_linearizable(b.h, "x")
    assert res.unplaced[0].id == again
    assert QUICK_STALE in res.reason
    # the same with the second put still running when B is read: found by the search
    b2 = Builder()
    b2.ok(1, put("x", "A"), 0, 1)
    b2.ok(2, put("x", "B"), 2, 30)
    b2.ok(3, get("x"), 4, 5, "B")
    again2 = b2.ok(3, get("x"), 6, 7, "A")
    res2 = assert_not_linearizable(b2.h, "x")
    assert res2.reason.startswith(SEARCHED)
    assert res2.unplaced[0].id == again2
    assert "register holds 'B'" in res2.describe()


def test_read_of_a_value_never_written() -> None:
    b = Builder()
    b.ok(1, put("x", "1"), 0, 10)
    bogus = b.ok(2, get("x"), 1, 2, "zzz")
    res = assert_not_linearizable(b.h, "x")
    assert bogus in {r.id for r in res.unplaced}


def test_cas_succeeded_where_it_must_conflict() -> None:
    b = Builder()
    b.ok(1, put("x", "1"), 0, 1)
    b.ok(1, put("x", "2"), 2, 3)
    bad = b.ok(2, cas("x", "1", "3"), 4, 5, OK)
    res = assert_not_linearizable(b.h, "x")
    assert res.unplaced[0].id == bad


def test_cas_conflicted_where_it_must_succeed() -> None:
    b = Builder()
    b.ok(1, put("x", "1"), 0, 1)
    bad = b.ok(2, cas("x", "1", "3"), 2, 3, CONFLICT)
    res = assert_not_linearizable(b.h, "x")
    assert res.unplaced[0].id == bad


def test_cas_on_absent_key() -> None:
    b = Builder()
    b.ok(1, cas("x", None, "1"), 0, 1, OK)
    b.ok(2, cas("x", None, "2"), 2, 3, CONFLICT)
    assert_linearizable(b.h)
    b.ok(3, cas("x", None, "3"), 4, 5, OK)
    assert_not_linearizable(b.h, "x")


def test_read_goes_back_in_time() -> None:
    # The second put is still running, so a read may see either value, but two
    # sequential reads cannot see the new value and then the old one.
    b = Builder()
    b.ok(1, put("x", "1"), 0, 1)
    b.ok(2, put("x", "2"), 2, 20)
    b.ok(3, get("x"), 3, 4, "2")
    back = b.ok(3, get("x"), 5, 6, "1")
    res = assert_not_linearizable(b.h, "x")
    assert back in {r.id for r in res.unplaced}
    # the same reads in the other order are fine
    fwd = Builder()
    fwd.ok(1, put("x", "1"), 0, 1)
    fwd.ok(2, put("x", "2"), 2, 20)
    fwd.ok(3, get("x"), 3, 4, "1")
    fwd.ok(3, get("x"), 5, 6, "2")
    assert_linearizable(fwd.h)


def test_delete_results_must_match_existence() -> None:
    b = Builder()
    b.ok(1, put("x", "1"), 0, 1)
    b.ok(1, delete("x"), 2, 3, NOT_FOUND)
    assert_not_linearizable(b.h, "x")
    b2 = Builder()
    b2.ok(1, delete("x"), 0, 1, OK)
    assert_not_linearizable(b2.h, "x")
    b3 = Builder()
    b3.ok(1, put("x", "1"), 0, 1)
    b3.ok(1, delete("x"), 2, 3, OK)
    b3.ok(2, get("x"), 4, 5, "1")
    assert_not_linearizable(b3.h, "x")


def test_describe_explains_the_failure() -> None:
    b = Builder()
    b.ok(1, put("x", "1"), 0, 1)
    b.ok(2, put("x", "2"), 2, 20)
    b.ok(3, get("x"), 3, 4, "2")
    b.ok(3, get("x"), 5, 6, "1")
    text = check(b.h).describe()
    assert "not linearizable: key 'x'" in text
    assert "longest linearizable prefix found: 3 operations" in text
    assert "#1 client 2: put('x', '2') -> ok [2, 20]" in text
    assert "value after the prefix: '2'" in text
    assert "get('x') -> '1' [5, 6]  <- read '1', register holds '2'" in text
    # a quick refutation names the read and the writes that prove it stale
    b2 = Builder()
    b2.ok(1, put("x", "1"), 0, 1)
    b2.ok(1, put("x", "2"), 2, 3)
    b2.ok(2, get("x"), 4, 5, "1")
    text2 = check(b2.h).describe()
    assert "key 'x': read '1' after it was overwritten" in text2
    assert "#2 client 2: get('x') -> '1' [4, 5]" in text2


# ---------------------------------------------------------------------------------------
# Partitioning by key.
# ---------------------------------------------------------------------------------------


def test_anomaly_is_reported_with_its_key() -> None:
    b = Builder()
    t = 0
    for i in range(5):
        for key in ("a", "b", "c"):
            b.ok(1, put(key, f"{key}{i}"), t, t + 1)
            b.ok(2, get(key), t + 2, t + 3, f"{key}{i}")
            t += 4
    stale = b.ok(3, get("b"), t, t + 1, "b3")
    assert_linearizable(b.h.replaced(stale, result="b4"))
    res = assert_not_linearizable(b.h, "b")
    assert res.unplaced[0].id == stale


def test_keys_are_independent_registers() -> None:
    b = Builder()
    b.ok(1, put("a", "1"), 0, 1)
    b.ok(2, get("b"), 2, 3, None)
    b.ok(2, put("b", "1"), 4, 5)
    b.ok(1, get("a"), 6, 7, "1")
    res = assert_linearizable(b.h)
    assert res.keys_checked == 2
    assert set(res.linearizations) == {"a", "b"}


# ---------------------------------------------------------------------------------------
# The recorder.
# ---------------------------------------------------------------------------------------


def test_logical_clock_orders_events() -> None:
    h = History()
    w = h.invoke(1, put("x", "1"))
    r = h.invoke(2, get("x"))
    h.complete(w, OK)
    h.complete(r, "1")  # concurrent with the put: may see it
    assert (h[w].call, h[r].call, h[w].ret, h[r].ret) == (1, 2, 3, 4)
    assert check(h).ok
    r2 = h.invoke(2, get("x"))
    h.complete(r2, None)  # after the put returned: must see it
    assert_not_linearizable(h, "x")


def test_recorder_rejects_misuse() -> None:
    h = History()
    op_id = h.invoke(1, put("x", "1"))
    with pytest.raises(ValueError, match="logical clock"):
        h.invoke(1, get("x"), at=5.0)
    with pytest.raises(ValueError, match="put returns"):
        h.complete(op_id, "1")
    h.complete(op_id, OK)
    with pytest.raises(ValueError, match="already ended"):
        h.fail(op_id)
    g = h.invoke(1, get("x"))
    with pytest.raises(ValueError, match="get returns"):
        h.complete(g, OK)
    with pytest.raises(KeyError):
        h.unknown(999)
    explicit = History()
    explicit.invoke(1, get("x"), at=10.0)
    with pytest.raises(ValueError, match="explicit"):
        explicit.invoke(1, get("x"))
    with pytest.raises(ValueError, match="before its call"):
        explicit.record(1, get("x"), 5.0, 4.0, None)
    with pytest.raises(ValueError):
        put("x", None)  # type: ignore[arg-type]


def test_recorder_is_thread_safe() -> None:
    h = History()

    def client(n: int) -> None:
        key = f"k{n}"
        for i in range(200):
            w = h.invoke(n, put(key, str(i)))
            h.complete(w, OK)
            r = h.invoke(n, get(key))
            h.complete(r, str(i))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(h) == 8 * 400
    times = sorted(t for r in h.records for t in (r.call, r.ret))
    assert times == list(range(1, 2 * 8 * 400 + 1))  # every event got its own tick
    res = assert_linearizable(h)
    assert res.keys_checked == 8


def test_json_round_trip() -> None:
    h = History()
    a = h.invoke(1, put("x", "1"))
    b = h.invoke(2, cas("x", None, "2"))
    c = h.invoke(3, delete("y"))
    d = h.invoke(4, get("x"))
    e = h.invoke(5, put("y", "q"))
    h.complete(a, OK)
    h.complete(b, CONFLICT)
    h.complete(c, NOT_FOUND)
    h.complete(d, None)
    h.unknown(e)
    f = h.invoke(1, cas("x", "1", None))
    h.fail(f)
    g = h.invoke(2, get("y"))  # left pending
    text = h.to_json(indent=2)
    back = History.from_json(text)
    assert back.records == h.records
    assert back.to_json(indent=2) == text
    assert math.isinf(back[e].ret)
    assert back[g].outcome is Outcome.PENDING
    assert check(back).ok == check(h).ok
    # the clock carries on where it stopped
    nxt = back.invoke(6, get("x"))
    assert nxt == g + 1
    assert back[nxt].call > max(r.call for r in h.records)
    with pytest.raises(ValueError):
        History.from_json('{"format": "something-else"}')


def test_json_round_trip_of_a_failing_history_replays_the_failure() -> None:
    b = Builder()
    b.ok(1, put("x", "A"), 0.5, 1.25)
    b.ok(2, put("x", "B"), 2.0, 3.0)
    b.ok(3, get("x"), 4.0, 5.0, "B")
    b.ok(3, get("x"), 6.0, 7.0, "A")
    first = check(b.h)
    replay = check(History.from_json(b.h.to_json()))
    assert not first.ok
    assert not replay.ok
    assert replay.key == first.key
    assert replay.unplaced == first.unplaced
    assert replay.linearized == first.linearized


# ---------------------------------------------------------------------------------------
# Randomized histories from a simulated linearizable store.
# ---------------------------------------------------------------------------------------


@dataclass
class Plan:
    client: int
    op: Operation
    call: float
    ret: float
    outcome: Outcome
    point: float | None  # when it takes effect; None: never


def simulate(
    rng: random.Random,
    n_ops: int,
    keys: Sequence[str],
    clients: int,
    *,
    p_unknown: float = 0.0,
    p_fail: float = 0.0,
    kinds: Sequence[str] = ("get", "put", "cas", "delete"),
    weights: Sequence[float] = (4, 3, 2, 1),
) -> History:
    """A history of a truly linearizable store: each operation takes effect at a random
    instant inside its interval (an unknown one maybe later, maybe never)."""
    cursor = [0.0] * clients
    written: dict[str, list[str]] = {k: [] for k in keys}
    plans: list[Plan] = []
    for n in range(n_ops):
        c = min(range(clients), key=lambda i: (cursor[i], rng.random()))
        call = cursor[c] + rng.uniform(0.0, 1.0)
        ret = call + rng.uniform(0.1, 3.0)
        cursor[c] = ret
        key = rng.choice(keys)
        kind = rng.choices(kinds, weights)[0]
        fresh = f"v{n}"
        if kind == "get":
            op: Operation = get(key)
        elif kind == "put":
            op = put(key, fresh)
            written[key].append(fresh)
        elif kind == "cas":
            expected = rng.choice([None, *written[key][-3:]])
            new = None if rng.random() < 0.1 else fresh
            op = cas(key, expected, new)
            if new is not None:
                written[key].append(new)
        else:
            op = delete(key)
        roll = rng.random()
        if roll < p_unknown:
            outcome = Outcome.UNKNOWN
            late = call + rng.uniform(0.0, 4 * (ret - call))
            point = late if rng.random() < 0.5 else None
        elif roll < p_unknown + p_fail:
            outcome, point = Outcome.FAILED, None
        else:
            outcome, point = Outcome.COMPLETED, rng.uniform(call, ret)
        plans.append(Plan(c, op, call, ret, outcome, point))

    state: dict[str, str | None] = {}
    results: dict[int, Result] = {}
    effective = sorted(
        (i for i, p in enumerate(plans) if p.point is not None),
        key=lambda i: plans[i].point or 0.0,
    )
    for i in effective:
        p = plans[i]
        o = p.op
        cur = state.get(o.key)
        res: Result
        if o.kind is OpKind.GET:
            res = cur
        elif o.kind is OpKind.PUT:
            state[o.key] = o.value
            res = OK
        elif o.kind is OpKind.CAS:
            if cur == o.expected:
                state[o.key] = o.value
                res = OK
            else:
                res = CONFLICT
        else:
            res = OK if cur is not None else NOT_FOUND
            state[o.key] = None
        results[i] = res

    h = History()
    for i, p in enumerate(plans):
        if p.outcome is Outcome.COMPLETED:
            h.record(p.client, p.op, p.call, p.ret, results[i])
        elif p.outcome is Outcome.FAILED:
            h.record(p.client, p.op, p.call, p.ret, outcome=Outcome.FAILED)
        else:
            h.record(p.client, p.op, p.call, None, outcome=Outcome.UNKNOWN)
    return h


def completed_reads(h: History) -> list[OpRecord]:
    return [r for r in h.records if r.op.is_read and r.outcome is Outcome.COMPLETED]


def append_back_in_time(h: History, key: str) -> tuple[History, int, int]:
    """Append to ``h``, after everything in it, two concurrent puts and three reads that
    see the first value, the second, then the first again: not linearizable, and only
    the search can tell. Returns the new history and the ids of the last two reads."""
    t = max(x for r in h.records for x in (r.call, r.ret) if not math.isinf(x)) + 1
    recs = h.records
    nid = max(r.id for r in recs) + 1

    def rec(n: int, client: int, op: Operation, call: float, ret: float, res: Result) -> OpRecord:
        return OpRecord(nid + n, client, op, call, ret, Outcome.COMPLETED, res)

    recs += [
        rec(0, 1001, put(key, "x1"), t, t + 10, OK),
        rec(1, 1002, put(key, "x2"), t, t + 10, OK),
        rec(2, 1003, get(key), t + 11, t + 12, "x1"),
        rec(3, 1003, get(key), t + 13, t + 14, "x2"),
        rec(4, 1003, get(key), t + 15, t + 16, "x1"),
    ]
    return History(recs), nid + 3, nid + 4


def stale_read_mutation(h: History, rng: random.Random) -> tuple[OpRecord, str] | None:
    """A read and a value it cannot return: one written by a put that was followed, both
    entirely before the read, by another put (values are unique, so it is gone)."""
    puts = [r for r in h.records if r.op.kind is OpKind.PUT and r.outcome is Outcome.COMPLETED]
    choices = []
    for r in completed_reads(h):
        before = [p for p in puts if p.key == r.key and p.ret < r.call]
        for p1 in before:
            if any(p2.call > p1.ret and p2.op.value != r.result for p2 in before):
                assert p1.op.value is not None
                if p1.op.value != r.result:
                    choices.append((r, p1.op.value))
                break
    return rng.choice(choices) if choices else None


@pytest.mark.parametrize("seed", range(40))
def test_random_linearizable_histories_pass_and_a_bogus_read_fails(seed: int) -> None:
    rng = random.Random(seed)
    h = simulate(rng, n_ops=150, keys=["a", "b", "c"], clients=5, p_unknown=0.08, p_fail=0.04)
    assert_linearizable(h)
    victim = rng.choice(completed_reads(h))
    bad = h.replaced(victim.id, result="never-written")
    res = assert_not_linearizable(bad, victim.key)
    assert victim.id in {r.id for r in res.unplaced}, res.describe()
    # a stale read: caught by the quick check
    mutation = stale_read_mutation(h, rng)
    assert mutation is not None
    stale, old_value = mutation
    res = assert_not_linearizable(h.replaced(stale.id, result=old_value), stale.key)
    assert QUICK_STALE in res.reason
    assert [r.id for r in res.unplaced] == [stale.id]
    # values going back in time after the random history: refuted by the search
    key = rng.choice(["a", "b", "c"])
    back, middle, last = append_back_in_time(h, key)
    res = assert_not_linearizable(back, key)
    assert res.reason.startswith(SEARCHED)
    assert res.unplaced[0].id in (middle, last), res.describe()
    assert len(res.linearized) > 10


def coarsen(h: History) -> History:
    """The same history on a coarse clock (whole numbers, intervals only widened), so
    that calls and returns often fall at the same instant."""
    return History(
        replace(r, call=math.floor(r.call), ret=r.ret if math.isinf(r.ret) else math.ceil(r.ret))
        for r in h.records
    )


def perturb(h: History, rng: random.Random) -> History:
    """Change one definite result into another plausible one (maybe still valid)."""
    done = [r for r in h.records if r.outcome is Outcome.COMPLETED]
    if not done:
        return h
    r = rng.choice(done)
    new: Result
    if r.op.is_read:
        new = rng.choice([x.op.value for x in h.records if x.key == r.key] + [None])
    elif r.op.kind is OpKind.CAS:
        new = CONFLICT if r.result is OK else OK
    elif r.op.kind is OpKind.DELETE:
        new = NOT_FOUND if r.result is OK else OK
    else:
        new = OK
    return h.replaced(r.id, result=new)


@pytest.mark.parametrize(
    ("seed", "max_ops", "p_unknown", "weights", "coarse"),
    [
        (2024, 7, 0.2, (4, 3, 2, 1), False),  # mixed, one or two keys
        (7, 10, 0.4, (4, 3, 2, 1), False),  # many unknown outcomes
        (8, 10, 0.4, (2, 2, 4, 2), False),  # cas-heavy
        (9, 10, 0.4, (3, 2, 0, 2), False),  # puts and deletes only
        (10, 9, 0.2, (4, 3, 2, 1), True),  # many events at the same instant
    ],
)
def test_random_small_histories_agree_with_brute_force(
    seed: int, max_ops: int, p_unknown: float, weights: tuple[int, ...], coarse: bool
) -> None:
    rng = random.Random(seed)
    verdicts = {True: 0, False: 0}
    for _ in range(300):
        keys = ["a"] if max_ops > 7 or rng.random() < 0.7 else ["a", "b"]
        h = simulate(
            rng,
            n_ops=rng.randint(3, max_ops),
            keys=keys,
            clients=rng.randint(2, 4),
            p_unknown=p_unknown,
            p_fail=0.1,
            weights=weights,
        )
        if coarse:
            h = coarsen(h)
        if rng.random() < 0.6:
            h = perturb(h, rng)
        expected = brute_force(h.records)
        res = check(h)
        assert res.ok == expected, f"brute force says {expected}:\n{h.to_json(indent=1)}"
        if res.ok:
            assert_valid_witness(h, res)
        verdicts[expected] += 1
    # both kinds of verdict must be well represented, or the comparison proves little
    assert verdicts[True] > 15
    assert verdicts[False] > 15


def test_large_history() -> None:
    rng = random.Random(7)
    keys = [f"key{i}" for i in range(10)]
    h = simulate(rng, n_ops=2000, keys=keys, clients=10, p_unknown=0.03, p_fail=0.02)
    assert len(h) == 2000
    res = assert_linearizable(h)
    assert res.keys_checked == 10
    assert res.operations_checked > 1800
    victim = completed_reads(h)[-1]
    bad = h.replaced(victim.id, result="never-written")
    assert_not_linearizable(bad, victim.key)
    mutation = stale_read_mutation(h, rng)
    assert mutation is not None
    stale, old_value = mutation
    res = assert_not_linearizable(h.replaced(stale.id, result=old_value), stale.key)
    assert [r.id for r in res.unplaced] == [stale.id]
    back, middle, last = append_back_in_time(h, "key3")
    res = assert_not_linearizable(back, "key3")
    assert res.reason.startswith(SEARCHED)
    assert res.unplaced[0].id in (middle, last), res.describe()
    assert len(res.linearized) > 100


def test_windows_never_refute_a_linearizable_history() -> None:
    # When the search is slow, the checker tries to refute a time window of a key's
    # history on its own, from any value the register may hold when it opens. Such a
    # refutation must never hit a history that brute force finds linearizable.
    from raftkv.testing import linearizability as lin

    rng = random.Random(99)
    refuted = {True: 0, False: 0}
    for n in range(300):
        h = simulate(
            rng,
            n_ops=rng.randint(3, 8),
            keys=["a"],
            clients=rng.randint(2, 4),
            p_unknown=rng.choice([0.0, 0.3]),
            p_fail=0.05,
            weights=rng.choice([(4, 3, 2, 1), (3, 2, 0, 2)]),
        )
        if n % 2:
            h = coarsen(h)  # windows whose edges fall on calls and returns
        h = perturb(h, rng)
        expected = brute_force(h.records)
        done = [r for r in h.records if r.outcome is Outcome.COMPLETED]
        cuts = sorted({t for r in done for t in (r.call, r.ret)})
        any_window = False
        for t0 in cuts:
            for x in (r.ret for r in done if r.ret >= t0):
                if lin._window_refutes(h.records, t0, x):
                    assert not expected, f"window [{t0}, {x}] of:\n{h.to_json(indent=1)}"
                    any_window = True
        if not expected:
            refuted[any_window] += 1
    assert refuted[True] > 20  # windows do refute non-linearizable histories
    assert refuted[True] > 5 * refuted[False]


def test_window_keeps_operations_returning_as_it_opens() -> None:
    # put(1) returns at t=5, exactly when put(2) is invoked, so it may take effect
    # after it: a window opening at t=5 must keep it.
    from raftkv.testing import linearizability as lin

    b = Builder()
    b.ok(1, put("x", "1"), 2, 5)
    b.ok(2, put("x", "2"), 5, 6)
    b.ok(3, get("x"), 7, 8, "1")
    assert_linearizable(b.h)
    assert not lin._window_refutes(b.h.records, 5, 8)
    b.ok(3, get("x"), 9, 10, "2")  # now 2 must come after 1 as well: impossible
    assert not check(b.h).ok
    assert lin._window_refutes(b.h.records, 5, 10)


def test_hot_key_anomaly_found_through_a_window() -> None:
    # One key, many timed-out writes: refuting the whole history takes the search far
    # too long, but the window around where it got stuck settles it.
    rng = random.Random(1)
    h = simulate(rng, n_ops=1000, keys=["k"], clients=10, p_unknown=0.05, p_fail=0.02)
    back, middle, last = append_back_in_time(h, "k")
    res = check(back, timeout_s=20)
    assert not res.ok
    assert not res.unknown, res.describe()
    assert res.key == "k"
    assert res.reason.startswith(SEARCHED)
    assert "whatever the value before them" in res.reason
    assert res.unplaced[0].id in (middle, last), res.describe()


def hard_key(b: Builder, key: str) -> None:
    """20 overlapping puts, then a read that finds the key absent: proving that no order
    works means visiting every subset of the puts."""
    for i in range(20):
        b.ok(i, put(key, str(i)), 0, 10)
    b.ok(99, get(key), 11, 12, None)


def test_timeout_gives_an_undecided_result() -> None:
    b = Builder()
    hard_key(b, "x")
    res = check(b.h, timeout_s=0.05)
    assert not res.ok
    assert res.unknown
    assert res.timed_out_keys == ("x",)
    assert "timed out" in res.describe()


def test_a_hard_key_does_not_hide_a_failure_on_another() -> None:
    b = Builder()
    hard_key(b, "hard")
    for i in range(30):  # more operations than the hard key, so it is checked after it
        b.ok(1, put("bad", str(i)), 100 + 2 * i, 101 + 2 * i)
    b.ok(2, put("bad", "slow"), 200, 250)
    b.ok(3, get("bad"), 201, 202, "slow")
    b.ok(3, get("bad"), 203, 204, "29")  # back in time: needs the search
    res = check(b.h, timeout_s=0.2)
    assert not res.ok
    assert not res.unknown
    assert res.key == "bad"
    assert res.timed_out_keys == ("hard",)


def test_read_of_a_value_written_only_later_is_caught_without_search() -> None:
    b = Builder()
    early = b.ok(1, get("x"), 0, 1, "later")
    b.ok(2, put("x", "later"), 2, 3)
    res = assert_not_linearizable(b.h, "x")
    assert [r.id for r in res.unplaced] == [early]
    assert "no operation invoked before it returned writes" in res.reason
    assert "get('x') -> 'later'" in res.describe()
    # a cas that matched a value nobody wrote is caught the same way
    b2 = Builder()
    b2.ok(1, cas("x", "ghost", "1"), 0, 1, OK)
    assert "matched 'ghost'" in check(b2.h).reason
