"""The client table: retries apply once, pipelining, first_incomplete, bounded memory."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftkv.kv import (
    ApplyResult,
    ClientTable,
    Command,
    Delete,
    DeletePrefix,
    KeyValue,
    KVStateMachine,
    Put,
    Status,
    encode_command,
)

from ._strategies import tagged_workloads


class Machine:
    def __init__(self, max_clients: int = 10_000, max_results: int = 1_024) -> None:
        self.sm = KVStateMachine(max_clients=max_clients, max_results_per_client=max_results)
        self.next_index = 1

    def run(self, cmd: Command) -> ApplyResult:
        index = self.next_index
        self.next_index += 1
        return self.sm.apply(index, encode_command(cmd))


def put(
    key: bytes,
    client: int,
    seq: int,
    first_incomplete: int,
    *,
    value: bytes = b"v",
    prev: int | None = None,
) -> Put:
    return Put(key, value, prev, client_id=client, seq=seq, first_incomplete=first_incomplete)


def test_retry_returns_same_result_and_applies_once() -> None:
    m = Machine()
    cmd = put(b"k", 7, 1, 1)
    first = m.run(cmd)
    assert first == ApplyResult(Status.OK, 1, revision=1)
    m.run(Put(b"other", b"x"))
    again = m.run(cmd)
    assert again == first
    assert again.entry_index == 1
    assert m.sm.get(b"k") == KeyValue(b"k", b"v", 1, 1, 1)
    assert m.sm.applied_index == 3


def test_retry_with_changed_payload_still_answers_original() -> None:
    """The (client, seq) pair identifies the request, not the bytes."""
    m = Machine()
    first = m.run(put(b"k", 7, 1, 1, value=b"one"))
    again = m.run(put(b"k", 7, 1, 1, value=b"two"))
    assert again == first
    kv = m.sm.get(b"k")
    assert kv is not None
    assert kv.value == b"one"


def test_retried_conflict_keeps_its_original_answer() -> None:
    """A retry is answered, not re-evaluated, even when its condition now holds."""
    m = Machine()
    m.run(Put(b"k", b"1"))
    cas = put(b"k", 7, 1, 1, value=b"cas", prev=3)
    conflict = m.run(cas)
    assert conflict == ApplyResult(Status.CONFLICT, 2, current_revision=1)
    m.run(Put(b"k", b"3"))
    assert m.sm.get(b"k") == KeyValue(b"k", b"3", 1, 3, 2)  # prev_revision=3 would hold
    assert m.run(cas) == conflict
    assert m.sm.get(b"k") == KeyValue(b"k", b"3", 1, 3, 2)


def test_retried_delete_answers_original_and_does_not_delete_again() -> None:
    m = Machine()
    m.run(Put(b"k", b"1"))
    delete = Delete(b"k", client_id=3, seq=1, first_incomplete=1)
    first = m.run(delete)
    assert first.deleted == 1
    m.run(Put(b"k", b"2"))
    assert m.run(delete) == first
    kv = m.sm.get(b"k")
    assert kv is not None
    assert kv.value == b"2"


def test_untagged_commands_are_not_deduplicated() -> None:
    m = Machine()
    cmd = Put(b"k", b"v")
    m.run(cmd)
    m.run(cmd)
    assert m.sm.get(b"k") == KeyValue(b"k", b"v", 1, 2, 2)
    assert len(m.sm.clients) == 0


def test_pipelined_seqs_out_of_order() -> None:
    m = Machine()
    order = [3, 1, 4, 2]
    results = {seq: m.run(put(b"k%d" % seq, 9, seq, 1)) for seq in order}
    assert [results[s].entry_index for s in order] == [1, 2, 3, 4]
    assert m.sm.clients.retained(9) == [1, 2, 3, 4]
    for seq in (2, 4, 1, 3, 3):
        assert m.run(put(b"k%d" % seq, 9, seq, 1)) == results[seq]
    for seq in order:
        kv = m.sm.get(b"k%d" % seq)
        assert kv is not None
        assert kv.version == 1
    # A new seq in the gap-free future is applied normally.
    assert m.run(put(b"k5", 9, 5, 1)).entry_index == 10


def test_first_incomplete_drops_old_results() -> None:
    m = Machine()
    for seq in (1, 2, 3):
        m.run(put(b"k", 9, seq, 1))
    assert m.sm.clients.retained(9) == [1, 2, 3]
    # The client has replies for 1 and 2, and says so with its next request.
    r4 = m.run(put(b"k", 9, 4, 3))
    assert r4.status is Status.OK
    assert m.sm.clients.retained(9) == [3, 4]
    assert m.sm.clients.floor(9) == 3
    stale = m.run(put(b"k", 9, 1, 1))
    assert stale.status is Status.STALE
    assert stale.entry_index == 5
    assert "settled" in stale.error
    kv = m.sm.get(b"k")
    assert kv is not None
    assert kv.version == 4
    assert kv.mod_revision == 4
    # STALE answers are not retained, and an older first_incomplete never lowers the floor.
    assert m.sm.clients.retained(9) == [3, 4]
    assert m.sm.clients.floor(9) == 3
    assert m.run(put(b"k", 9, 3, 1)).entry_index == 3


def test_retry_carrying_later_first_incomplete_drops_itself_if_acknowledged() -> None:
    m = Machine()
    m.run(put(b"a", 9, 1, 1))
    m.run(put(b"b", 9, 2, 1))
    # seq 2 retried with first_incomplete 2: seq 1 is settled, seq 2 is still answered.
    assert m.run(put(b"b", 9, 2, 2)).entry_index == 2
    assert m.sm.clients.retained(9) == [2]


def test_per_client_result_bound_evicts_lowest_seq() -> None:
    m = Machine(max_results=3)
    results = [m.run(put(b"k%d" % seq, 5, seq, 1)) for seq in range(1, 6)]
    assert m.sm.clients.retained(5) == [3, 4, 5]
    assert m.sm.clients.floor(5) == 3
    for seq in (1, 2):
        r = m.run(put(b"k%d" % seq, 5, seq, 1))
        assert r.status is Status.STALE
    for seq in (3, 4, 5):
        assert m.run(put(b"k%d" % seq, 5, seq, 1)) == results[seq - 1]
    for seq in range(1, 6):
        kv = m.sm.get(b"k%d" % seq)
        assert kv is not None
        assert kv.version == 1


def test_client_bound_evicts_least_recently_used() -> None:
    m = Machine(max_clients=3)
    m.run(put(b"a", 1, 1, 1))
    m.run(put(b"b", 2, 1, 1))
    m.run(put(b"c", 3, 1, 1))
    m.run(put(b"a", 1, 2, 2))  # client 1 is now the most recently used
    assert m.sm.clients.clients() == [2, 3, 1]
    m.run(put(b"d", 4, 1, 1))  # evicts client 2
    assert m.sm.clients.clients() == [3, 1, 4]
    assert 2 not in m.sm.clients
    assert m.sm.clients.floor(2) is None


def test_evicted_client_with_replies_is_told_its_session_expired() -> None:
    m = Machine(max_clients=1)
    m.run(put(b"a", 1, 1, 1))
    m.run(put(b"a", 1, 2, 1))
    m.run(put(b"b", 2, 1, 1))  # evicts client 1
    # Client 1 retries seq 2 (applied before eviction): it must not apply again.
    r = m.run(put(b"a", 1, 2, 2))
    assert r.status is Status.STALE
    assert "session expired" in r.error
    kv = m.sm.get(b"a")
    assert kv is not None
    assert kv.version == 2
    # No session was opened for it, so client 2 keeps its own.
    assert m.sm.clients.clients() == [2]
    # A client starting afresh (first_incomplete <= 1) opens a session.
    assert m.run(put(b"c", 3, 1, 1)).ok
    assert m.sm.clients.clients() == [3]


def test_stale_and_replayed_answers_refresh_recency() -> None:
    m = Machine(max_clients=2)
    m.run(put(b"a", 1, 1, 1))
    m.run(put(b"b", 2, 1, 1))
    m.run(put(b"a", 1, 1, 1))  # a replay touches client 1
    assert m.sm.clients.clients() == [2, 1]
    m.run(put(b"c", 3, 1, 1))
    assert m.sm.clients.clients() == [1, 3]


def test_bad_payloads_do_not_touch_the_table() -> None:
    m = Machine()
    m.run(put(b"a", 1, 1, 1))
    m.sm.apply(m.next_index, b"\x01\x09" + b"\x00" * 30)
    assert m.sm.clients.clients() == [1]
    assert m.sm.clients.retained(1) == [1]


def test_eviction_is_deterministic_across_replicas_and_restore() -> None:
    cmds: list[Command] = []
    for round_ in range(1, 4):
        for client in range(1, 8):
            cmds.append(put(b"k%d" % client, client, round_, max(1, round_ - 1)))
            cmds.append(
                DeletePrefix(b"zz", client_id=100 + client, seq=round_, first_incomplete=round_)
            )
    a, b = Machine(max_clients=5, max_results=2), Machine(max_clients=5, max_results=2)
    half = len(cmds) // 2
    for cmd in cmds[:half]:
        assert a.run(cmd) == b.run(cmd)
    restored = Machine(max_clients=5, max_results=2)
    restored.sm.restore(a.sm.snapshot())
    restored.next_index = a.next_index
    for cmd in cmds[half:]:
        ra, rb, rr = a.run(cmd), b.run(cmd), restored.run(cmd)
        assert ra == rb == rr
    assert a.sm.clients.clients() == b.sm.clients.clients() == restored.sm.clients.clients()
    assert len(a.sm.clients) == 5
    assert a.sm.state_hash() == b.sm.state_hash() == restored.sm.state_hash()


def test_table_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        ClientTable(max_clients=0)
    with pytest.raises(ValueError):
        ClientTable(max_results=0)


def test_table_direct_use() -> None:
    table = ClientTable(max_clients=2, max_results=2)
    assert table.check(1, 1, 1, index=10) is None
    ok = ApplyResult(Status.OK, 10, revision=10)
    table.record(1, 1, ok)
    assert table.check(1, 1, 1, index=11) == ok
    assert table.check(1, 2, 1, index=12) is None
    table.record(1, 2, ApplyResult(Status.NOT_FOUND, 12))
    assert table.check(1, 3, 1, index=13) is None
    table.record(1, 3, ApplyResult(Status.OK, 13, revision=13))
    assert table.retained(1) == [2, 3]
    assert table.floor(1) == 2
    stale = table.check(1, 1, 1, index=14)
    assert stale is not None
    assert stale.status is Status.STALE
    assert table.max_clients == 2
    assert table.max_results == 2


def _without_retries(cmds: list[Command]) -> list[Command | None]:
    """The log as it would be if no request had been committed twice."""
    seen: set[tuple[int, int]] = set()
    out: list[Command | None] = []
    for cmd in cmds:
        req = (cmd.client_id, cmd.seq)
        if cmd.client_id and req in seen:
            out.append(None)
        else:
            seen.add(req)
            out.append(cmd)
    return out


@settings(max_examples=300)
@given(tagged_workloads(), st.integers(min_value=1, max_value=4))
def test_tagged_requests_apply_exactly_once(cmds: list[Command], max_results: int) -> None:
    """With every client's session kept (at most 3 clients here), the state is exactly
    the state of the same log with the retried entries removed, and every retry is
    answered with the original answer or, once settled or evicted, STALE."""
    m = Machine(max_clients=3, max_results=max_results)
    ideal = KVStateMachine()
    first: dict[tuple[int, int], ApplyResult] = {}
    for index, (cmd, once) in enumerate(zip(cmds, _without_retries(cmds), strict=True), 1):
        result = m.run(cmd)
        if once is None:
            ideal.advance(index)
            assert result == first[(cmd.client_id, cmd.seq)] or result.status is Status.STALE
            continue
        expected = ideal.apply(index, encode_command(once))
        assert result == expected
        if cmd.client_id:
            first[(cmd.client_id, cmd.seq)] = result
        assert m.sm.range() == ideal.range()
    assert m.sm.range() == ideal.range()
    # Replaying the whole log again applies nothing that was already applied.
    for cmd in cmds:
        if cmd.client_id:
            again = m.run(cmd)
            assert again == first[(cmd.client_id, cmd.seq)] or again.status is Status.STALE
    assert m.sm.range() == ideal.range()


@settings(max_examples=200)
@given(
    tagged_workloads(), st.integers(min_value=1, max_value=2), st.integers(min_value=1, max_value=4)
)
def test_retries_after_session_eviction(
    cmds: list[Command], max_clients: int, max_results: int
) -> None:
    """With sessions evicted, a retry never re-applies while the session that applied
    it lives, and a client arriving without a session but with first_incomplete > 1 is
    refused. What is left is the case the dedup module docstring names: a client that
    comes back without a session and with first_incomplete <= 1 starts a new session,
    which knows nothing of its earlier requests."""
    m = Machine(max_clients=max_clients, max_results=max_results)
    generation: dict[int, int] = {}
    first: dict[tuple[int, int], tuple[int, ApplyResult]] = {}
    for cmd in cmds:
        known = cmd.client_id in m.sm.clients
        result = m.run(cmd)
        if not cmd.client_id:
            continue
        if not known:
            if cmd.first_incomplete > 1:
                assert result.status is Status.STALE
                assert "session expired" in result.error
                assert cmd.client_id not in m.sm.clients
                continue
            generation[cmd.client_id] = generation.get(cmd.client_id, 0) + 1
        gen = generation[cmd.client_id]
        req = (cmd.client_id, cmd.seq)
        if req in first and first[req][0] == gen:
            assert result == first[req][1] or result.status is Status.STALE
        elif result.status is not Status.STALE:
            first[req] = (gen, result)
        assert len(m.sm.clients) <= max_clients
        for client in m.sm.clients.clients():
            assert len(m.sm.clients.retained(client)) <= max_results
