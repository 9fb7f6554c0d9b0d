"""The watch checker on synthetic histories: a faithful set of watchers passes, and each
kind of violation (gap, duplicate, reorder, phantom, wrong value, bad resync, and the
rest) is caught and named."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from itertools import pairwise

import pytest

from raftkv.testing.watch_check import (
    Change,
    Connection,
    Events,
    FinalState,
    Intervals,
    Item,
    Message,
    Progress,
    Resync,
    Start,
    WatchCase,
    WatchRecord,
    WatchVerdict,
    Write,
    check_watches,
)

# (revision, op, key or prefix, value): a committed history of the writers' keys, and
# one change outside them (an "other" key a whole-keyspace watcher also sees).
OPS: list[tuple[int, str, str, str]] = [
    (3, "put", "w/a/1", "v1"),
    (5, "put", "w/a/2", "v2"),
    (6, "put", "w/a/1", "v3"),
    (7, "put", "other", "o1"),
    (8, "put", "w/a/1", "v4"),
    (9, "put", "w/b/1", "v5"),
    (11, "delete_prefix", "w/a/", ""),
    (12, "put", "w/a/1", "v6"),
    (13, "delete", "w/b/1", ""),
    (15, "put", "w/b/1", "v7"),
]
FINAL = 17


def committed(ops: Sequence[tuple[int, str, str, str]] = OPS) -> list[Change]:
    """The changes the ops make, with create revisions, versions and prev states."""
    state: dict[str, Item] = {}
    changes: list[Change] = []
    for revision, op, key, value in ops:
        if op == "put":
            before = state.get(key)
            create = before.create_revision if before else revision
            version = before.version + 1 if before else 1
            changes.append(Change(revision, key, "put", value, create, version, before))
            state[key] = Item(key, value, create, revision, version)
        else:
            keys = sorted(k for k in state if (k.startswith(key) if op != "delete" else k == key))
            for name in keys:
                changes.append(Change(revision, name, "delete", prev=state.pop(name)))
    return changes


def state_at(revision: int, prefix: str = "") -> tuple[Item, ...]:
    items: dict[str, Item] = {}
    for change in committed():
        if change.revision > revision:
            break
        after = change.after()
        if after is None:
            items.pop(change.key, None)
        else:
            items[change.key] = after
    return tuple(items[k] for k in sorted(items) if k.startswith(prefix))


def messages(
    changes: Sequence[Change], prefix: str, low: int, high: int, *, with_prev: bool = False
) -> list[Message]:
    """Events messages for the range's changes in (low, high], one per revision, and a
    progress message at ``high``."""
    out: list[Message] = []
    for revision in sorted({c.revision for c in changes if low < c.revision <= high}):
        batch = tuple(
            c if with_prev else replace(c, prev=None)
            for c in changes
            if c.revision == revision and c.key.startswith(prefix)
        )
        if batch:
            out.append(Events(revision, batch))
    out.append(Progress(high))
    return out


def stream(
    prefix: str,
    cuts: Sequence[int] = (),
    *,
    since: int = 0,
    through: int = FINAL,
    with_prev: bool = False,
    name: str | None = None,
) -> WatchRecord:
    """A faithful watcher of ``prefix`` from ``since``, reconnecting at each cut."""
    changes = committed()
    points = [since, *cuts, through]
    connections: list[Connection] = []
    for low, high in pairwise(points):
        body = messages(changes, prefix, low, high, with_prev=with_prev)
        connections.append(Connection(low, (Start(low), *body), node=len(connections) % 3 + 1))
    return WatchRecord(name or f"watch {prefix!r}", prefix, tuple(connections), with_prev)


def all_writes() -> list[Write]:
    out: list[Write] = []
    for revision, op, key, value in OPS:
        if not key.startswith("w/"):
            continue
        if op == "put":
            out.append(Write("put", key, "ok", value, revision))
        elif op == "delete":
            out.append(Write("delete", key, "ok", revision=revision))
        else:
            deleted = sum(1 for c in committed() if c.revision == revision)
            out.append(Write("delete_prefix", key, "ok", revision=revision, deleted=deleted))
    # Some that did not happen, or may not have.
    out.append(Write("put", "w/a/3", "failed", "never"))
    out.append(Write("put", "w/a/3", "unknown", "maybe"))
    return out


def base_records() -> list[WatchRecord]:
    return [
        stream("", name="replay node 1"),
        stream("", cuts=(6, 11), name="all"),
        stream("w/a/", cuts=(5, 8), since=2, with_prev=True, name="prefix a"),
        stream("w/b/", cuts=(12,), since=4, name="prefix b"),
    ]


def final_state() -> FinalState:
    return FinalState(FINAL, "w/", state_at(FINAL, "w/"))


DEFAULT = final_state()


def case(
    records: Sequence[WatchRecord],
    *,
    writes: Sequence[Write] | None = None,
    final: FinalState | None = DEFAULT,
) -> WatchCase:
    return WatchCase(tuple(records), tuple(all_writes() if writes is None else writes), "w/", final)


def check(
    records: Sequence[WatchRecord],
    *,
    writes: Sequence[Write] | None = None,
    final: FinalState | None = DEFAULT,
) -> WatchVerdict:
    return check_watches(case(records, writes=writes, final=final))


def kinds(verdict: WatchVerdict) -> set[str]:
    return {v.kind for v in verdict.violations}


def edit(record: WatchRecord, connection: int, messages: Sequence[Message]) -> WatchRecord:
    connections = list(record.connections)
    connections[connection] = replace(connections[connection], messages=tuple(messages))
    return replace(record, connections=tuple(connections))


def without(record: WatchRecord, revision: int) -> WatchRecord:
    """The record with every event at ``revision`` dropped."""
    connections = []
    for connection in record.connections:
        kept: list[Message] = []
        for message in connection.messages:
            if isinstance(message, Events):
                changes = tuple(c for c in message.changes if c.revision != revision)
                if not changes:
                    continue
                message = Events(message.revision, changes)
            kept.append(message)
        connections.append(replace(connection, messages=tuple(kept)))
    return replace(record, connections=tuple(connections))


# -- a faithful run ---------------------------------------------------------------------


def test_faithful_watchers_pass() -> None:
    verdict = check(base_records())
    assert verdict.ok, verdict.summary()
    assert verdict.watchers == 4
    assert verdict.events_unverified == 0
    assert verdict.events_checked == verdict.events
    assert verdict.reference_changes == len(committed())
    assert verdict.covered_revisions == FINAL
    assert verdict.cross_checked_revisions == len({c.revision for c in committed()})


def test_the_case_survives_json() -> None:
    original = case(base_records())
    again = WatchCase.from_json(original.to_json())
    assert again == original
    assert check_watches(again).ok


def test_intervals() -> None:
    spans = Intervals([(5, 9), (0, 3), (3, 4), (12, 12), (8, 10)])
    assert list(spans) == [(0, 4), (5, 10)]
    assert spans.total() == 9
    assert not spans.contains(0) and spans.contains(1) and spans.contains(4)
    assert not spans.contains(5) and spans.contains(6) and spans.contains(10)
    assert not spans.contains(11)
    assert spans.contains_range(0, 4) and spans.contains_range(6, 10)
    assert not spans.contains_range(3, 6) and spans.contains_range(7, 7)


# -- each kind of violation ---------------------------------------------------------------


def test_a_gap_in_one_watcher_is_caught() -> None:
    records = base_records()
    records[2] = without(records[2], 6)  # prefix a misses put w/a/1=v3
    verdict = check(records)
    gaps = [v for v in verdict.violations if v.kind == "gap"]
    assert gaps and all(v.source == "prefix a" for v in gaps), verdict.summary()
    assert any(v.revision == 6 for v in gaps)
    assert "lost_ack" in kinds(verdict)  # the write was acknowledged, too


def test_a_gap_in_every_stream_is_caught_by_the_key_life_and_the_writers() -> None:
    # Revision 6 (the second put of w/a/1) missed by every stream: the third put's
    # version 3 no longer follows, and the acknowledged write is not in the history.
    records = [without(r, 6) for r in base_records()]
    verdict = check(records)
    assert "inconsistent_history" in kinds(verdict), verdict.summary()
    assert "lost_ack" in kinds(verdict)


def test_a_missed_delete_breaks_the_key_life() -> None:
    # The delete of w/b/1 at 13, missed by every stream and not acknowledged: the put
    # at 15 starts a new life (version 1) on a key that still existed.
    records = [without(r, 13) for r in base_records()]
    verdict = check(records, writes=[w for w in all_writes() if w.revision != 13])
    assert "inconsistent_history" in kinds(verdict), verdict.summary()


def test_a_repeated_event_is_a_duplicate() -> None:
    records = base_records()
    watcher = records[1]  # "all": connections (0..6], (6..11], (11..17]
    second = list(watcher.connections[1].messages)
    repeat = next(
        m for m in watcher.connections[0].messages if isinstance(m, Events) and m.revision == 6
    )
    second.insert(1, repeat)  # the resumed stream sends revision 6 again
    records[1] = edit(watcher, 1, second)
    verdict = check(records)
    assert kinds(verdict) == {"duplicate"}, verdict.summary()
    assert verdict.violations[0].source == "all"


def test_two_events_for_one_key_at_one_revision_is_a_duplicate() -> None:
    records = base_records()
    watcher = records[0]
    body = list(watcher.connections[0].messages)
    index = next(i for i, m in enumerate(body) if isinstance(m, Events) and m.revision == 6)
    event = body[index]
    assert isinstance(event, Events)
    body[index] = Events(6, event.changes * 2)
    records[0] = edit(watcher, 0, body)
    assert "duplicate" in kinds(check(records))


def test_events_out_of_order_are_a_reorder() -> None:
    records = base_records()
    watcher = records[0]
    body = list(watcher.connections[0].messages)
    i = next(i for i, m in enumerate(body) if isinstance(m, Events) and m.revision == 8)
    j = next(i for i, m in enumerate(body) if isinstance(m, Events) and m.revision == 9)
    body[i], body[j] = body[j], body[i]  # 9 before 8
    records[0] = edit(watcher, 0, body)
    verdict = check(records)
    assert "reorder" in kinds(verdict), verdict.summary()
    assert all(v.source == "replay node 1" for v in verdict.violations if v.kind == "reorder")


def test_events_out_of_order_within_a_message_are_a_reorder() -> None:
    records = base_records()
    watcher = records[0]
    body = [
        m
        for m in watcher.connections[0].messages
        if not (isinstance(m, Events) and m.revision in (8, 9))
    ]
    changes = {c.revision: c for c in committed() if c.revision in (8, 9)}
    index = next(i for i, m in enumerate(body) if isinstance(m, Events) and m.revision == 7)
    body.insert(index + 1, Events(9, (changes[9], changes[8])))
    records[0] = edit(watcher, 0, body)
    assert "reorder" in kinds(check(records))


def test_an_event_never_committed_is_a_phantom() -> None:
    records = base_records()
    watcher = records[2]  # prefix a, stream (5..8]
    body = list(watcher.connections[1].messages)
    body.insert(2, Events(7, (Change(7, "w/a/3", "put", "maybe", 7, 1),)))
    records[2] = edit(watcher, 1, body)
    verdict = check(records)
    assert "phantom" in kinds(verdict), verdict.summary()
    assert {v.source for v in verdict.violations if v.kind == "phantom"} == {"prefix a"}


def test_an_event_outside_the_range_is_a_phantom() -> None:
    records = base_records()
    watcher = records[3]  # prefix b
    body = list(watcher.connections[0].messages)
    other = next(c for c in committed() if c.key == "other")
    body.insert(1, Events(7, (other,)))
    records[3] = edit(watcher, 0, body)
    assert "phantom" in kinds(check(records))


def test_a_write_refused_as_not_applied_may_not_appear() -> None:
    # Every stream agrees on a put whose writer was told "not applied".
    extra = (14, "put", "w/a/3", "never")
    ops = sorted([*OPS, extra])
    changes = committed(ops)
    records = []
    for record in base_records():
        connections = []
        for connection in record.connections:
            first = connection.messages[0]
            last = connection.messages[-1]
            assert isinstance(first, Start) and isinstance(last, Progress)
            body = messages(
                changes, record.prefix, first.revision, last.revision, with_prev=record.with_prev
            )
            connections.append(replace(connection, messages=(first, *body)))
        records.append(replace(record, connections=tuple(connections)))
    final_items = tuple(
        sorted((*state_at(FINAL, "w/"), Item("w/a/3", "never", 14, 14, 1)), key=lambda i: i.key)
    )
    verdict = check(records, final=FinalState(FINAL, "w/", final_items))
    assert kinds(verdict) == {"phantom"}, verdict.summary()
    assert "refused" in verdict.violations[0].detail


def test_a_wrong_value_is_caught() -> None:
    records = base_records()
    watcher = records[1]
    body = list(watcher.connections[0].messages)
    index = next(i for i, m in enumerate(body) if isinstance(m, Events) and m.revision == 6)
    event = body[index]
    assert isinstance(event, Events)
    body[index] = Events(6, (replace(event.changes[0], value="v3-corrupted"),))
    records[1] = edit(watcher, 0, body)
    verdict = check(records)
    assert "wrong_value" in kinds(verdict), verdict.summary()
    assert any(v.source == "all" and v.revision == 6 for v in verdict.violations)


def test_a_wrong_version_is_a_wrong_value() -> None:
    records = base_records()
    watcher = records[2]
    body = list(watcher.connections[1].messages)
    index = next(i for i, m in enumerate(body) if isinstance(m, Events) and m.revision == 6)
    event = body[index]
    assert isinstance(event, Events)
    body[index] = Events(6, (replace(event.changes[0], version=5, prev=None),))
    records[2] = edit(watcher, 1, body)
    verdict = check(records)
    assert "wrong_value" in kinds(verdict), verdict.summary()


def test_a_wrong_prev_is_a_wrong_value() -> None:
    records = base_records()
    watcher = records[2]  # with prev
    body = list(watcher.connections[1].messages)
    index = next(i for i, m in enumerate(body) if isinstance(m, Events) and m.revision == 6)
    event = body[index]
    assert isinstance(event, Events)
    stale = Item("w/a/1", "v0", 3, 3, 1)
    body[index] = Events(6, (replace(event.changes[0], prev=stale),))
    records[2] = edit(watcher, 1, body)
    verdict = check(records)
    assert kinds(verdict) == {"wrong_value"}, verdict.summary()
    assert "prev" in verdict.violations[0].detail


def resynced(prefix: str, image_at: int, image: Sequence[Item], name: str) -> WatchRecord:
    """A watcher of ``prefix`` from 2 whose second stream resyncs at ``image_at``."""
    changes = committed()
    first = (Start(2), *messages(changes, prefix, 2, 5))
    chunks = [Resync(image_at, tuple(image[:1]), done=False), Resync(image_at, tuple(image[1:]))]
    second = (Start(5), *chunks, *messages(changes, prefix, image_at, FINAL))
    return WatchRecord(name, prefix, (Connection(2, first), Connection(5, second)))


def test_a_faithful_resync_passes() -> None:
    records = [*base_records(), resynced("w/", 9, state_at(9, "w/"), "resynced")]
    verdict = check(records)
    assert verdict.ok, verdict.summary()
    assert verdict.resyncs == 1 and verdict.images_checked == 1


def test_a_resync_image_that_is_wrong_is_caught() -> None:
    image = list(state_at(9, "w/"))
    image[0] = replace(image[0], value="stale", mod_revision=6, version=2)  # w/a/1 at 6
    verdict = check([*base_records(), resynced("w/", 9, image, "resynced")])
    assert "bad_resync" in kinds(verdict), verdict.summary()
    assert {v.source for v in verdict.violations} == {"resynced"}


def test_a_resync_image_missing_an_acknowledged_write_is_caught() -> None:
    # The image at 9 lacks w/b/1 (put at 9); the watcher never got that write.
    image = [i for i in state_at(9, "w/") if i.key != "w/b/1"]
    verdict = check([*base_records(), resynced("w/", 9, image, "resynced")])
    assert "bad_resync" in kinds(verdict), verdict.summary()
    assert any("w/b/1" in v.detail for v in verdict.violations)


def test_a_resync_that_goes_back_is_caught() -> None:
    changes = committed()
    first = (Start(0), *messages(changes, "", 0, 9))
    second = (Start(9), Resync(6, state_at(6)), *messages(changes, "", 6, FINAL))
    record = WatchRecord("back", "", (Connection(0, first), Connection(9, second)))
    assert "backwards" in kinds(check([*base_records(), record]))


def test_resync_chunks_out_of_order_are_a_protocol_violation() -> None:
    image = list(reversed(state_at(9, "w/")))
    assert "protocol" in kinds(check([*base_records(), resynced("w/", 9, image, "r")]))


def test_the_history_is_rebuilt_across_a_hole_from_an_image() -> None:
    # Every full-keyspace stream resyncs over (4, 9]: the committed history has a hole
    # there, and the image at 9 anchors what follows. Events in the hole delivered by a
    # prefix watcher can be neither confirmed nor refuted.
    changes = committed()
    holed = []
    for name in ("replay node 1", "all"):
        first = (Start(0), *messages(changes, "", 0, 4))
        second = (Start(4), Resync(9, state_at(9)), *messages(changes, "", 9, FINAL))
        holed.append(WatchRecord(name, "", (Connection(0, first), Connection(4, second))))
    verdict = check([*holed, *base_records()[2:]])
    assert verdict.ok, verdict.summary()
    assert verdict.events_unverified > 0
    assert verdict.covered_revisions == FINAL - 5


def test_streams_that_disagree_are_reported() -> None:
    records = base_records()
    records[1] = without(records[1], 7)  # "all" misses the change to "other"
    verdict = check(records)
    assert "disagreement" in kinds(verdict), verdict.summary()
    assert "gap" in kinds(verdict)


def test_a_final_state_that_differs_is_caught() -> None:
    items = tuple(i for i in state_at(FINAL, "w/") if i.key != "w/b/1")
    verdict = check(base_records(), final=FinalState(FINAL, "w/", items))
    assert kinds(verdict) == {"final_state"}, verdict.summary()


def test_an_acknowledged_write_missing_from_every_stream_is_lost() -> None:
    # The last put of w/b/1 (15), acknowledged, missed by every stream: nothing after
    # it in that key's life would show it, but the writer knows.
    records = [without(r, 15) for r in base_records()]
    verdict = check(records, final=None)
    assert "lost_ack" in kinds(verdict), verdict.summary()


def test_a_write_applied_twice_is_a_duplicate() -> None:
    ops = sorted([*OPS, (16, "put", "w/a/1", "v6")])  # v6 again, a second time
    changes = committed(ops)
    records = [
        WatchRecord("replay", "", (Connection(0, (Start(0), *messages(changes, "", 0, FINAL))),))
    ]
    final = FinalState(FINAL, "w/", ())
    verdict = check(records, final=final)
    assert "duplicate" in kinds(verdict), verdict.summary()


def test_a_stream_must_start_where_it_asked() -> None:
    records = base_records()
    watcher = records[1]
    body = list(watcher.connections[1].messages)
    body[0] = Start(5)  # asked since=6
    records[1] = edit(watcher, 1, body)
    assert "protocol" in kinds(check(records))


def test_a_stream_without_start_is_a_protocol_violation() -> None:
    records = base_records()
    watcher = records[1]
    records[1] = edit(watcher, 1, watcher.connections[1].messages[1:])
    verdict = check(records)
    assert "protocol" in kinds(verdict)


def test_a_resume_from_the_wrong_place_is_the_harness_fault() -> None:
    records = base_records()
    watcher = records[1]
    connections = list(watcher.connections)
    connections[1] = replace(connections[1], since=5)
    records[1] = replace(watcher, connections=tuple(connections))
    assert "harness" in kinds(check(records))


def test_a_progress_that_goes_back_is_caught() -> None:
    records = base_records()
    watcher = records[3]
    body = list(watcher.connections[0].messages)
    body.insert(len(body) - 1, Progress(3))
    records[3] = edit(watcher, 0, body)
    assert "backwards" in kinds(check(records))


@pytest.mark.parametrize("cut", [3, 7, 11])
def test_where_a_watcher_breaks_does_not_matter(cut: int) -> None:
    records = [*base_records(), stream("w/a/", cuts=(cut,), since=0, name="cut")]
    assert check(records).ok
