"""A linearizability checker for key-value histories.

A history is linearizable when every operation can be given a single instant between its
invocation and its return, such that the operations, applied one at a time in the order
of those instants to a register per key, return what the clients saw. Operations whose
outcome is unknown may take effect at any instant after their invocation, or never.

Usage::

    history = History()
    op_id = history.invoke(client, put("k", "v1"))
    history.complete(op_id, Status.OK)      # or history.fail(op_id) / history.unknown(op_id)
    result = check(history, timeout_s=60)
    assert result.ok, result.describe()

How it works:

* Keys. Each operation touches one key and the keys are independent registers, so a
  history is linearizable exactly when each key's sub-history is (Herlihy & Wing's
  locality, the P-compositionality of Lowe). Keys are checked one at a time, smallest
  first, and the first failure ends the check.
* Quick refutation. Before searching, a read of a value that nothing could have written
  by then, or of a value whose every write was overwritten before the read began, is
  reported at once (``_quick_refutation``).
* Search. Wing & Gong's, with the memoisation of Lowe ("Testing for linearizability",
  2017). The call and return events of the operations with a definite outcome are kept,
  in time order, in a doubly linked list; any operation invoked before the first
  remaining return is a candidate to be linearized next, and reaching a return means
  backtracking. Linearizing an operation lifts its events out of the list; a
  configuration (the bitsets of linearized operations, held in Python ints, plus the
  register value) already explored is not explored again. Reductions that keep a
  linearization whenever there is one cut the work further (see ``_search``).
* Unknown outcomes. A timed-out write has no return event (an infinite return time), so
  it never forces a backtrack, and the search succeeds once every operation with a
  definite outcome is placed. A get of unknown outcome has no effect and is dropped, as
  is every operation that failed definitely, and every unknown write that no operation
  could observe (``_prune_unobservable``).
* Windows. When a time limit is given and the search is slow, the checker also tries to
  refute, on its own, a window of the history ending where the search is stuck: a
  window that is not linearizable from any value the register may hold when it opens
  proves the whole history is not (``_window``). This finds anomalies on a busy key with
  many timed-out writes, where refuting the whole history would take too long.
"""

from __future__ import annotations

import bisect
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, TypeAlias

from raftkv.testing.history import (
    History,
    Operation,
    OpKind,
    OpRecord,
    Outcome,
    Result,
    Status,
    cas,
    delete,
    format_result,
    get,
    put,
)

__all__ = [
    "CheckResult",
    "History",
    "OpKind",
    "OpRecord",
    "Operation",
    "Outcome",
    "Result",
    "Status",
    "apply_operation",
    "cas",
    "check",
    "delete",
    "get",
    "put",
]

Value: TypeAlias = str | None

# ---------------------------------------------------------------------------------------
# The model: one register per key.
# ---------------------------------------------------------------------------------------


def apply_operation(state: Value, rec: OpRecord) -> tuple[bool, Value]:
    """Apply one operation of a history to a register holding ``state``.

    Returns ``(possible, new_state)``: whether the operation, linearized while the
    register holds ``state``, could have produced the result the client saw. For an
    operation with an unknown outcome, "possible" also requires that it change the
    register: taking effect without changing anything is the same as never taking effect.
    """
    op = rec.op
    if rec.outcome is not Outcome.COMPLETED:
        if op.kind is OpKind.PUT or (op.kind is OpKind.CAS and state == op.expected):
            return op.value != state, op.value
        if op.kind is OpKind.DELETE:
            return state is not None, None
        return False, state
    res = rec.result
    if op.kind is OpKind.GET:
        return res == state, state
    if op.kind is OpKind.PUT:
        return True, op.value
    if op.kind is OpKind.CAS:
        if res is Status.OK:
            return state == op.expected, op.value
        return state != op.expected, state
    if res is Status.OK:
        return state is not None, None
    return state is None, state


# Compiled form of an operation for the search loop: (mode, x, y).
_READ: Final = 0  # possible iff state == x; no change
_WRITE: Final = 1  # always possible; state := x
_WRITE_IF: Final = 2  # possible iff state == x; state := y
_CONFLICT: Final = 3  # possible iff state != x; no change
_REMOVE: Final = 4  # possible iff state is not None; state := None
_ABSENT: Final = 5  # possible iff state is None; no change
_WRITE_CHANGE: Final = 6  # possible iff state != x; state := x  (unknown put)


def _compile(rec: OpRecord) -> tuple[int, Value, Value]:
    op = rec.op
    definite = rec.outcome is Outcome.COMPLETED
    if op.kind is OpKind.GET:
        assert definite
        return _READ, _as_value(rec.result), None
    if op.kind is OpKind.PUT:
        return (_WRITE if definite else _WRITE_CHANGE), op.value, None
    if op.kind is OpKind.CAS:
        if not definite or rec.result is Status.OK:
            return _WRITE_IF, op.expected, op.value
        return _CONFLICT, op.expected, None
    if not definite or rec.result is Status.OK:
        return _REMOVE, None, None
    return _ABSENT, None, None


def _as_value(result: Result) -> Value:
    if isinstance(result, Status):
        raise TypeError(f"a get cannot return {result!r}")
    return result


def _written_value(rec: OpRecord) -> Value:
    """The value an (unknown-outcome) write leaves in the register if it takes effect."""
    return rec.op.value if rec.op.kind is not OpKind.DELETE else None


# ---------------------------------------------------------------------------------------
# Preparing a key's sub-history.
# ---------------------------------------------------------------------------------------


def _relevant(rec: OpRecord) -> bool:
    if rec.outcome is Outcome.FAILED:
        return False
    if rec.outcome is Outcome.COMPLETED:
        return True
    # unknown or pending: a read has no effect; a cas that writes what it expects neither
    return not rec.op.is_read and not (
        rec.op.kind is OpKind.CAS and rec.op.expected == rec.op.value
    )


def _observes(other: OpRecord, w: Value) -> bool:
    """Whether ``other``, linearized while the register holds ``w``, depends on it being ``w``
    rather than some other value (see ``_prune_unobservable``)."""
    kind = other.op.kind
    if kind is OpKind.CAS and other.op.expected == w:
        return True
    if other.outcome is not Outcome.COMPLETED:
        return False
    if kind is OpKind.GET:
        return other.result == w
    if kind is OpKind.CAS:
        return other.result is Status.CONFLICT
    if kind is OpKind.DELETE:
        return other.result is (Status.NOT_FOUND if w is None else Status.OK)
    return False


def _prune_unobservable(recs: list[OpRecord]) -> list[OpRecord]:
    """Drop unknown-outcome writes whose effect no operation of the key can observe.

    Let an unknown write W leave value w in the register, and take any linearization L
    that contains W. Between W and the next operation of L that changes the register, the
    register holds w, and every operation there (and the one that ends the stretch)
    returns after W's invocation. Those that depend on the value being w are: a get
    returning w, a cas expecting w (whatever its outcome), any cas that conflicted, and a
    delete returning not_found (w is None) or ok (w is not None). If no operation of the
    key that returns after W's invocation is of these kinds, the stretch holds no
    operation with a definite outcome, and the write that ends it, if any, is a put
    (possible on any value) or an unknown write that is possible on the value before W
    as well or turns into a no-op that can be left out. So L without W is a
    linearization too: W may be taken never to have happened. The condition does not
    depend on the other unknown writes, so all such writes go at once.
    """
    kept = []
    for r in recs:
        if r.outcome is not Outcome.COMPLETED:
            w = _written_value(r)
            if not any(o is not r and o.ret >= r.call and _observes(o, w) for o in recs):
                continue
        kept.append(r)
    return kept


# ---------------------------------------------------------------------------------------
# The search.
# ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class _KeyVerdict:
    status: str  # "ok", "fail", or "running" while the search goes on
    order: list[int] = field(default_factory=list)  # indices into the key's ops
    value: Value = None
    unplaced: list[int] = field(default_factory=list)
    steps: int = 0


_CHECK_EVERY: Final = 1023  # steps between two looks at the clock (mask)
# Search phases, in order: unknown writes (placed only where an operation needs them
# next, so trying them first finds linearizations sooner), then definite operations.
_UNKNOWN: Final = 0
_DEFINITE: Final = 1
_NEVER: Final = -1


def _expiry_masks(recs: list[OpRecord]) -> list[int]:
    """For each unknown write, the bitset of the definite operations that may observe it.

    Once all of them are linearized, the write is never placed any more: by the argument
    of ``_prune_unobservable``, placing it later cannot matter. ``_NEVER`` when an
    operation with an unknown outcome (a cas expecting the value) may observe it.
    """
    masks = [_NEVER] * len(recs)
    for i, r in enumerate(recs):
        if r.outcome is Outcome.COMPLETED:
            continue
        w = _written_value(r)
        mask = 0
        for j, o in enumerate(recs):
            if j != i and o.ret >= r.call and _observes(o, w):
                if o.outcome is not Outcome.COMPLETED:
                    mask = _NEVER
                    break
                mask |= 1 << j
        masks[i] = mask
    return masks


def _search(recs: list[OpRecord], initials: Iterable[Value] = (None,)) -> Iterator[_KeyVerdict]:
    """Search for a linearization of one key's operations, from any of the ``initials``
    (the value the register holds first; the caches are shared, as what can follow a
    configuration does not depend on how it was reached).

    A generator, so that the caller can pause and resume it: it yields the verdict
    object every so many steps (with ``status`` "running" and the deepest dead end so
    far), and yields it a last time when ``status`` is "ok" or "fail".

    The events of the operations with a definite outcome sit in the linked list; the
    unknown ones, which have no return event, sit in an array sorted by invocation time.
    At each configuration the candidates are the operations invoked before the first
    remaining return: the unknown ones are tried first (they may only be placed where an
    operation needs them next, see below, so this finds linearizations sooner), then
    the definite ones.

    On top of the memoised search, four reductions. Each keeps a linearization if there
    is one: from any linearization of the remaining operations, one of the restricted
    shape can be made.

    * Forced steps. An operation that never changes the register (a get, a cas that
      conflicted, a delete that found nothing) and fits the current value is placed at
      once, without trying the alternatives: in any linearization of the remaining
      operations it can be moved to the front, since it is a candidate (nothing
      unplaced returned before it was invoked) and moving it changes no value anyone
      sees. If that leads nowhere, the configuration before it is dead too.
    * Expiry. An unknown write all of whose possible observers are linearized is not
      placed any more (see ``_expiry_masks``).
    * Unknown writes only right before an operation that needs them. In a
      linearization, an unknown write that is followed directly by an operation that
      does not depend on the value it wrote (a put, another unknown write, nothing at
      all) can be left out (the argument of ``_prune_unobservable``). So right after
      placing an unknown write, only these may come next: a get, conflict or not-found
      delete that fits (a forced step; it did not fit before the write, or it would
      have been forced then), a cas expecting the value, or a definite delete that
      found the key if the key was absent before the write (otherwise the delete fits
      without the write, with the same outcome). Such a "restricted" configuration is
      cached apart from the same configuration reached freely.
    * Dominance. A configuration is dead if one with the same definite operations and
      value, but a subset of its unknown operations placed, was found dead: every
      continuation of the first is one of the second that leaves the extra unknown
      operations out.
    """
    n = len(recs)
    code = [_compile(r) for r in recs]
    mode = [c[0] for c in code]
    arg_x = [c[1] for c in code]
    arg_y = [c[2] for c in code]
    expiry = _expiry_masks(recs)
    definite = [r.outcome is Outcome.COMPLETED for r in recs]
    definite_total = sum(definite)

    verdict = _KeyVerdict("running")
    if definite_total == 0:
        verdict.status = "ok"
        yield verdict
        return

    # Events of definite operations in time order; at equal times calls come first, so
    # that an operation that returns at t and one invoked at t count as concurrent.
    events: list[tuple[float, int, int]] = []
    for i, r in enumerate(recs):
        if definite[i]:
            events.append((r.call, 0, i))
            events.append((r.ret, 1, i))
    events.sort()
    m = len(events)
    head = m  # sentinel node
    nxt = [*range(1, m), -1, 0]
    prv = [head, *range(m - 1), -1]
    ev_time = [e[0] for e in events]
    ev_op = [e[2] for e in events]
    ev_call = [e[1] == 0 for e in events]
    call_node = [-1] * n
    ret_node = [-1] * n
    for node, (_, is_ret, i) in enumerate(events):
        if is_ret:
            ret_node[i] = node
        else:
            call_node[i] = node
    unk = sorted((recs[i].call, i) for i in range(n) if not definite[i])
    unk_calls = [u[0] for u in unk]
    unk_ops = [u[1] for u in unk]
    unk_pos = [0] * n
    for pos, i in enumerate(unk_ops):
        unk_pos[i] = pos
    n_unk = len(unk_ops)

    # Configurations seen: (definite bits, unknown bits, value, restricted). Dead free
    # configurations, for dominance: (definite bits, value) -> unknown bitsets.
    seen: set[tuple[int, int, Value, bool]] = set()
    dead: dict[tuple[int, Value], list[int]] = {}
    stack_ops: list[int] = []
    stack_states: list[Value] = []
    stack_forced: list[bool] = []
    state: Value = None
    dbits = 0
    ubits = 0
    remaining = definite_total
    restricted = False  # the last step placed an unknown write
    best = -1
    steps = 0
    entry = -1  # next node to look at (definite phase)
    first_ret = -1  # the first return node of the configuration
    limit = math.inf  # its time: unknowns invoked up to then are candidates
    phase = _UNKNOWN
    upos = 0  # next unknown to look at (unknown phase)
    ustart = 0  # unknowns before this position are placed or expired
    stack_ustart: list[int] = []
    fresh = True  # just arrived at a configuration: look for a forced step first
    exhausted = False  # every way on from the initial value is dead

    for state in initials:
        exhausted = False
        fresh = True
        while True:
            steps += 1
            if not steps & _CHECK_EVERY:
                verdict.steps = steps
                yield verdict

            i = -1
            forced = False
            new = state
            if fresh:
                fresh = False
                while ustart < n_unk:
                    j = unk_ops[ustart]
                    mask = expiry[j]
                    if not (ubits >> j & 1 or (mask != _NEVER and dbits & mask == mask)):
                        break
                    ustart += 1
                node = nxt[head]
                while node >= 0 and ev_call[node]:
                    j = ev_op[node]
                    md = mode[j]
                    if (
                        (md == _READ and state == arg_x[j])
                        or (md == _CONFLICT and state != arg_x[j])
                        or (md == _ABSENT and state is None)
                    ):
                        i = j
                        forced = True
                        break
                    node = nxt[node]
                if not forced:
                    first_ret = node
                    limit = ev_time[node] if node >= 0 else math.inf
                    phase = _UNKNOWN
                    entry = nxt[head]
                    upos = ustart
                    continue
            elif phase == _DEFINITE:
                if entry >= 0 and ev_call[entry]:
                    j = ev_op[entry]
                    md = mode[j]
                    entry = nxt[entry]
                    if md == _WRITE_IF:
                        if state == arg_x[j]:
                            i = j
                            new = arg_y[j]
                    elif md == _REMOVE:
                        if state is not None and (not restricted or stack_states[-1] is None):
                            i = j
                            new = None
                    elif md == _WRITE and not restricted:
                        i = j
                        new = arg_x[j]
                    # Operations that change nothing were looked at by the forced step and
                    # do not fit here.
                    if i < 0:
                        continue
                else:
                    i = -2  # no candidate left
            elif upos < n_unk and unk_calls[upos] <= limit:
                j = unk_ops[upos]
                upos += 1
                if ubits >> j & 1:
                    continue
                mask = expiry[j]
                if mask != _NEVER and dbits & mask == mask:
                    continue  # an unknown write nobody can observe any more
                md = mode[j]
                if md == _WRITE_IF:
                    if state == arg_x[j]:
                        i = j
                        new = arg_y[j]
                elif restricted:
                    continue  # a put or delete does not need the unknown write just placed
                elif md == _WRITE_CHANGE:
                    if state != arg_x[j]:
                        i = j
                        new = arg_x[j]
                elif state is not None:  # _REMOVE
                    i = j
                    new = None
                if i < 0:
                    continue
            else:
                phase = _DEFINITE
                entry = nxt[head]
                continue

            if i == -2:
                # No candidate left: the return of an unplaced operation ends this path.
                placed = definite_total - remaining
                if placed > best and first_ret >= 0:
                    best = placed
                    verdict.order = list(stack_ops)
                    verdict.value = state
                    blocker = ev_op[first_ret]
                    others = []
                    node = nxt[head]
                    while node != first_ret:
                        if ev_call[node] and ev_op[node] != blocker:
                            others.append(ev_op[node])
                        node = nxt[node]
                    verdict.unplaced = [blocker, *others]
            else:
                if definite[i]:
                    nd, nu, nr = dbits | (1 << i), ubits, False
                    known = (nd, nu, new, False) in seen
                else:
                    nd, nu, nr = dbits, ubits | (1 << i), True
                    known = (nd, nu, new, True) in seen or (nd, nu, new, False) in seen
                if not known and n_unk:
                    for u in dead.get((nd, new), ()):
                        if u | nu == nu:
                            known = True
                            break
                if not known:
                    seen.add((nd, nu, new, nr))
                    stack_ops.append(i)
                    stack_states.append(state)
                    stack_forced.append(forced)
                    stack_ustart.append(ustart)
                    dbits, ubits, state, restricted = nd, nu, new, nr
                    if definite[i]:
                        # lift the operation's events out of the list
                        c = call_node[i]
                        a, b = prv[c], nxt[c]
                        nxt[a] = b
                        if b >= 0:
                            prv[b] = a
                        rn = ret_node[i]
                        a, b = prv[rn], nxt[rn]
                        nxt[a] = b
                        if b >= 0:
                            prv[b] = a
                        remaining -= 1
                        if remaining == 0:
                            verdict.status = "ok"
                            verdict.order = stack_ops
                            verdict.value = state
                            verdict.steps = steps
                            yield verdict
                            return
                    fresh = True
                    continue
                if not forced:
                    continue  # explored before: try the next candidate
                # a forced step into a configuration known dead: this one is dead too

            # Backtrack: undo forced steps, then the last free choice, and resume the scan
            # after that choice. Every configuration left on the way is dead.
            while True:
                if not stack_ops:
                    exhausted = True
                    break
                if n_unk and not restricted:
                    dead.setdefault((dbits, state), []).append(ubits)
                i = stack_ops.pop()
                state = stack_states.pop()
                forced = stack_forced.pop()
                ustart = stack_ustart.pop()
                if definite[i]:
                    dbits ^= 1 << i
                    # put the events back, in the reverse order of their removal
                    rn = ret_node[i]
                    nxt[prv[rn]] = rn
                    if nxt[rn] >= 0:
                        prv[nxt[rn]] = rn
                    remaining += 1
                    c = call_node[i]
                    nxt[prv[c]] = c
                    if nxt[c] >= 0:
                        prv[nxt[c]] = c
                else:
                    ubits ^= 1 << i
                restricted = bool(stack_ops) and not definite[stack_ops[-1]]
                if not forced:
                    break
            if exhausted:
                break
            node = nxt[head]
            while node >= 0 and ev_call[node]:
                node = nxt[node]
            first_ret = node
            limit = ev_time[node] if node >= 0 else math.inf
            if definite[i]:
                phase = _DEFINITE
                entry = nxt[call_node[i]]
            else:
                phase = _UNKNOWN
                upos = unk_pos[i] + 1
                entry = nxt[head]

    verdict.status = "fail"
    verdict.steps = steps
    yield verdict


def _run(search: Iterator[_KeyVerdict], deadline: float | None) -> _KeyVerdict:
    """Run a search until it ends or the deadline passes (then ``status`` is "running")."""
    for verdict in search:
        if verdict.status != "running":
            return verdict
        if deadline is not None and time.monotonic() > deadline:
            return verdict
    raise AssertionError("the search ended without a verdict")


# ---------------------------------------------------------------------------------------
# Refuting a window of the history.
# ---------------------------------------------------------------------------------------


def _as_unknown(rec: OpRecord) -> OpRecord | None:
    """The operation as one of unknown outcome; None if it has no effect wherever it is
    placed (a get, a cas that conflicted, a delete that found nothing)."""
    op = rec.op
    if op.is_read or (rec.outcome is Outcome.COMPLETED and rec.result is not Status.OK):
        return None
    if op.kind is OpKind.CAS and op.expected == op.value:
        return None
    return replace(rec, ret=math.inf, outcome=Outcome.UNKNOWN, result=None)


def _window(recs: list[OpRecord], t0: float, x: float) -> list[OpRecord]:
    """The operations of one key seen through the window [t0, x].

    If the history is linearizable, so is this window from some initial value (see
    ``_window_initial_values``): take a linearization, drop the operations invoked after
    x (they all come after every operation that returned by x) and the ones in flight at
    x that come after those, and cut it right after the last operation that returned
    before t0 (every operation invoked from t0 on comes after that point). What is left
    are the operations invoked from t0 to x that returned by x, with their results, and
    some of the others, which the window holds as unknown-outcome operations (a
    definite operation placed where it took effect has the same effect as an unknown
    one placed there). So a window that is not linearizable from any initial value
    proves the whole history is not.
    """
    out = []
    for r in recs:
        if r.call > x:
            continue
        if r.outcome is Outcome.COMPLETED:
            if r.ret < t0:
                continue  # before the window: summed up by the initial value
            if r.call >= t0 and r.ret <= x:
                out.append(r)
                continue
        u = _as_unknown(r)
        if u is not None:
            out.append(u)
    return out


def _window_initial_values(recs: list[OpRecord], t0: float) -> set[Value]:
    """The values the register may hold after the last operation that returned before
    t0, in a linearization cut as in ``_window``.

    It is the value of the last write placed before the cut (or None for none). A write
    invoked before t0 that was followed, before t0, by a definite write that returned
    before t0 is not the last: that other write is placed after it and before the cut.
    """
    changers = sorted(
        (r for r in recs if r.outcome is Outcome.COMPLETED and _changes(r)),
        key=lambda r: r.call,
    )
    calls = [r.call for r in changers]
    earliest_ret = [math.inf] * (len(changers) + 1)
    for k in range(len(changers) - 1, -1, -1):
        earliest_ret[k] = min(changers[k].ret, earliest_ret[k + 1])

    def overwritten(after: float) -> bool:
        return earliest_ret[bisect.bisect_right(calls, after)] < t0

    values: set[Value] = set()
    if not overwritten(-math.inf):
        values.add(None)  # the initial absence of the key
    for r in recs:
        writes = not r.op.is_read and (r.outcome is not Outcome.COMPLETED or _changes(r))
        if writes and r.call < t0 and not overwritten(r.ret):
            values.add(_written_value(r))
    return values


def _changes(rec: OpRecord) -> bool:
    """Whether a definite operation sets the register (a put, a matching cas, a delete
    that found the key)."""
    return not rec.op.is_read and rec.result is Status.OK


@dataclass(slots=True)
class _Refutation:
    t0: float
    x: float
    ops: list[OpRecord]
    verdict: _KeyVerdict


def _window_refutes(recs: list[OpRecord], t0: float, x: float) -> bool:
    """Whether the window [t0, x] of one key's operations alone shows they are not
    linearizable (no time limit: for tests)."""
    recs = [r for r in recs if _relevant(r)]
    window = _prune_unobservable(_window(recs, t0, x))
    return _run(_search(window, _window_initial_values(recs, t0)), None).status == "fail"


def _refute_in_windows(
    recs: list[OpRecord], blocker: OpRecord, deadline: float
) -> _Refutation | None:
    """Try to prove a key's history not linearizable on windows that end where the
    search got stuck (``blocker``'s return), from short to long."""
    definite_calls = sorted(r.call for r in recs if r.outcome is Outcome.COMPLETED)
    end = bisect.bisect_right(definite_calls, blocker.call)
    x = blocker.ret
    size = 16
    while time.monotonic() < deadline:
        start = max(0, end - size)
        t0 = definite_calls[start]
        window = _prune_unobservable(_window(recs, t0, x))
        initials = sorted(_window_initial_values(recs, t0), key=lambda v: (v is not None, v))
        verdict = _run(_search(window, initials), deadline)
        if verdict.status == "fail":
            return _Refutation(t0, x, window, verdict)
        if start == 0:
            break
        size *= 4
    return None


# ---------------------------------------------------------------------------------------
# Quick refutation.
# ---------------------------------------------------------------------------------------


def _quick_refutation(recs: list[OpRecord]) -> tuple[OpRecord, str] | None:
    """Cheap necessary conditions, checked before the search, that catch the commonest
    anomalies with a precise explanation. An operation that saw a value v (a get
    returning it, a cas that matched it) is impossible if

    * no operation invoked before it returned writes v (a phantom or corrupted read), or
    * every write of v has a definite outcome and is followed, entirely before the
      observer was invoked, by another definite write (a stale read). Take the last
      write of v linearized before the observer: the write that follows it is linearized
      between the two, and if it wrote v it would be a later write of v; so it wrote
      another value, and the observer cannot see v.
    """
    writers: dict[str, list[OpRecord]] = defaultdict(list)
    changers: list[OpRecord] = []  # definite operations that set the register
    for r in recs:
        op = r.op
        definite = r.outcome is Outcome.COMPLETED
        if op.kind is OpKind.GET or (definite and r.result is not Status.OK):
            continue  # reads, conflicts and deletes of absent keys write nothing
        if op.value is not None:
            writers[op.value].append(r)
        if definite:
            changers.append(r)
    changers.sort(key=lambda r: r.call)
    calls = [r.call for r in changers]
    # suffix_min[k]: the changer with the earliest return among changers[k:]
    suffix_min: list[OpRecord | None] = [None] * (len(changers) + 1)
    for k in range(len(changers) - 1, -1, -1):
        nxt = suffix_min[k + 1]
        suffix_min[k] = changers[k] if nxt is None or changers[k].ret < nxt.ret else nxt

    for r in recs:
        if r.outcome is not Outcome.COMPLETED:
            continue
        if r.op.kind is OpKind.GET and isinstance(r.result, str):
            seen, what = r.result, "read"
        elif r.op.kind is OpKind.CAS and r.result is Status.OK and r.op.expected is not None:
            seen, what = r.op.expected, "matched"
        else:
            continue
        ws = writers.get(seen, [])
        if all(w.call > r.ret for w in ws):
            return r, f"{what} {seen!r}, which no operation invoked before it returned writes"
        proof = []
        for w in ws:
            # (an unknown write returns at infinity: nothing follows it, no claim)
            later = suffix_min[bisect.bisect_right(calls, w.ret)]
            if later is None or not later.ret < r.call:
                break
            proof.append(f"#{w.id} wrote it, then #{later.id} {later.op} overwrote it")
        else:
            return r, f"{what} {seen!r} after it was overwritten: " + "; ".join(proof)
    return None


# ---------------------------------------------------------------------------------------
# The public entry point.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """The verdict on a history.

    ``ok`` is true only when every key was shown linearizable; ``unknown`` is true when
    the time ran out first (and no key was found non-linearizable). On failure, ``key`` is
    the offending key and ``reason`` a one-line summary; ``linearized`` is the longest
    prefix of a linearization the search found for the key (the one placing the most
    operations with a definite outcome), ``value_after_prefix`` the register value after
    it, and ``unplaced`` the operations that were candidates next but none of which fits:
    the first is the one whose return was reached without it being placed. When the
    failure was found by the quick check (a read of a value nothing could have written
    yet, or only values since overwritten), ``unplaced`` holds just that read,
    ``linearized`` is empty and ``reason`` names the writes involved. When it was found
    on a window of the history, ``reason`` gives its bounds and the prefix starts there.

    On success, ``linearizations`` maps each key to the ids of its operations in an order
    that is a valid linearization (unknown operations that did not need to take effect
    are absent).
    """

    ok: bool
    unknown: bool = False
    key: str | None = None
    reason: str = ""
    linearized: tuple[OpRecord, ...] = ()
    unplaced: tuple[OpRecord, ...] = ()
    value_after_prefix: Value = None
    timed_out_keys: tuple[str, ...] = ()
    keys_checked: int = 0
    operations_checked: int = 0
    elapsed_s: float = 0.0
    linearizations: Mapping[str, tuple[int, ...]] = field(default_factory=dict)

    def describe(self, max_prefix: int = 15) -> str:
        """A human-readable account of the verdict, for a test failure message."""
        if self.ok:
            return (
                f"linearizable: {self.operations_checked} operations over "
                f"{self.keys_checked} keys ({self.elapsed_s:.3f}s)"
            )
        if self.unknown:
            keys = ", ".join(repr(k) for k in self.timed_out_keys)
            return f"undecided: timed out after {self.elapsed_s:.3f}s on key(s) {keys}"
        lines = [f"not linearizable: key {self.key!r}: {self.reason}"]
        if not self.linearized and len(self.unplaced) == 1:
            lines.append(f"  {self.unplaced[0]}")
            return "\n".join(lines)
        lines.append(f"longest linearizable prefix found: {len(self.linearized)} operations")
        shown = self.linearized[-max_prefix:] if max_prefix > 0 else ()
        if len(shown) < len(self.linearized):
            lines.append(f"  ... {len(self.linearized) - len(shown)} earlier operations")
        lines.extend(f"  {r}" for r in shown)
        lines.append(f"value after the prefix: {self.value_after_prefix!r}")
        lines.append("operations that cannot be placed next:")
        for r in self.unplaced:
            possible, _ = apply_operation(self.value_after_prefix, r)
            if r.outcome is not Outcome.COMPLETED:
                why = "outcome unknown; left out"
            elif possible:
                why = "fits here, but nothing consistent follows"
            elif r.op.is_read:
                why = f"read {format_result(r.result)}, register holds {self.value_after_prefix!r}"
            else:
                why = f"{format_result(r.result)} impossible on {self.value_after_prefix!r}"
            lines.append(f"  {r}  <- {why}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


_SEARCHED: Final = "no order of its operations is consistent with their results"


def _fmt(t: float) -> str:
    return str(int(t)) if float(t).is_integer() else f"{t:.6f}"


def check(history: History | Iterable[OpRecord], timeout_s: float | None = None) -> CheckResult:
    """Check a key-value history for linearizability.

    Keys are checked one at a time, smallest first; the first key found not
    linearizable ends the check. With ``timeout_s``, gives up after about that many
    seconds and returns a result with ``unknown`` set, unless some key was found not
    linearizable. Each key gets a fair share of the time left when its turn comes, and
    keys that ran out of time get another try with whatever is left at the end, so one
    hard key does not hide a definite failure on another.
    """
    start = time.monotonic()
    deadline = None if timeout_s is None else start + timeout_s
    if not isinstance(history, History):
        history = History(history)  # validates the records
    records = history.records

    by_key: dict[str, list[OpRecord]] = defaultdict(list)
    for rec in records:
        if _relevant(rec):
            by_key[rec.key].append(rec)

    def failure(key: str, reason: str, checked: int, **fields: Any) -> CheckResult:
        return CheckResult(
            ok=False,
            key=key,
            reason=reason,
            keys_checked=checked,
            operations_checked=sum(len(v) for v in by_key.values()),
            elapsed_s=time.monotonic() - start,
            **fields,
        )

    keys = sorted(by_key, key=lambda k: (len(by_key[k]), k))
    for n, key in enumerate(keys, 1):
        phantom = _quick_refutation(by_key[key])
        if phantom is not None:
            return failure(key, phantom[1], n, unplaced=(phantom[0],))

    subs = {k: _prune_unobservable(by_key[k]) for k in keys}
    orders: dict[str, tuple[int, ...]] = {}
    searches: dict[str, Iterator[_KeyVerdict]] = {}
    windows_tried: set[str] = set()
    todo = keys
    for _attempt in range(2):
        timed_out: list[str] = []
        for n, key in enumerate(todo):
            recs = subs[key]
            search = searches.setdefault(key, _search(recs))
            if deadline is None:
                verdict = _run(search, None)
            else:
                # A tenth of this key's share for the search. If it is still running,
                # up to a quarter for trying to refute the history around where it is
                # stuck: that pays off when the history is not linearizable but the
                # search has a lot of ground to cover before it can tell (a hot key
                # with many unknown outcomes). Then the search goes on.
                now = time.monotonic()
                share = (deadline - now) / (len(todo) - n)
                share_end = now + share
                verdict = _run(search, now + share / 10)
                if verdict.status == "running" and verdict.unplaced and key not in windows_tried:
                    windows_tried.add(key)
                    blocker = recs[verdict.unplaced[0]]
                    refutation = _refute_in_windows(
                        by_key[key], blocker, time.monotonic() + share / 4
                    )
                    if refutation is not None:
                        ops, wv = refutation.ops, refutation.verdict
                        return failure(
                            key,
                            f"{_SEARCHED}: shown on its {len(ops)} operations between "
                            f"t={_fmt(refutation.t0)} and t={_fmt(refutation.x)}, "
                            "whatever the value before them (operations running at "
                            "either edge count as of unknown outcome)",
                            len(orders) + len(timed_out),
                            linearized=tuple(ops[i] for i in wv.order),
                            unplaced=tuple(ops[i] for i in wv.unplaced),
                            value_after_prefix=wv.value,
                            timed_out_keys=tuple(timed_out),
                        )
                if verdict.status == "running":
                    verdict = _run(search, share_end)
            if verdict.status == "running":
                timed_out.append(key)
            elif verdict.status == "fail":
                return failure(
                    key,
                    _SEARCHED,
                    len(orders) + len(timed_out),
                    linearized=tuple(recs[i] for i in verdict.order),
                    unplaced=tuple(recs[i] for i in verdict.unplaced),
                    value_after_prefix=verdict.value,
                    timed_out_keys=tuple(timed_out),
                )
            else:
                orders[key] = tuple(recs[i].id for i in verdict.order)
        todo = timed_out
        if not todo or deadline is None or time.monotonic() >= deadline:
            break

    return CheckResult(
        ok=not todo,
        unknown=bool(todo),
        key=todo[0] if todo else None,
        reason="timed out" if todo else "",
        timed_out_keys=tuple(todo),
        keys_checked=len(keys),
        operations_checked=sum(len(v) for v in subs.values()),
        elapsed_s=time.monotonic() - start,
        linearizations=orders if not todo else {},
    )
