"""The watch checker: did every watcher see exactly the committed history of its range?

Pure: it reads what watchers recorded and what writers were told, and does no I/O. The
chaos runner (``raftkv.testing.watch_workload``) produces its input.

What a watcher records
----------------------
A ``WatchRecord`` is everything one watcher received, connection by connection: the
``since`` each stream was asked for (None: "from now"), and every message of that stream
(``Start``, ``Events``, ``Resync`` chunks, ``Progress``, as in docs/api.md, "Watch").
From it the checker derives, with the protocol's own rules, the watcher's *segments*: a
segment starts at the watcher's first start revision or at a completed resync image
(revision S), and claims that the changes to the range in ``(start, end]`` are exactly
the events it delivered. Between two segments lies a resync gap ``(end, S]`` whose
changes were replaced by the image at S.

Where the committed history comes from
---------------------------------------
Watching from ``since=0`` on a healthy node at the end is not a sound reference on its
own: a node's history is not only bounded by ``--watch-history`` but also starts again
at the snapshot's index whenever the node restores a snapshot (a restart, a snapshot
sent by the leader to a follower that fell behind, a repaired or rejoined node), and a
chaos run restarts every node, often all at once. After such a run no node may hold the
history from 0, however large ``--watch-history`` is. Reconstructing it from the
writers' acknowledgements is not sound either: a write of unknown outcome may or may
not be in it, and a prefix delete's answer does not say which keys it deleted.

So the reference is assembled from every *full-keyspace* stream (the watchers of the
whole keyspace, one of which starts at ``since=0`` before any write, and, at the end,
a ``since=0`` stream from every member, which yields the node's history as events, or an
image at S where it has to resync, and events after S), and it is then checked against
evidence that does not come from watches:

* Several streams usually cover a revision; they must agree (``disagreement``), and the
  majority is taken as the reference. A revision covered by no full-keyspace stream is
  *unknown*; events there are counted as unverified, never assumed right.
* Every put carries ``create_revision`` and ``version``, and a delete says the key
  existed: replayed in revision order from the empty keyspace at revision 0 (or from a
  full-keyspace image where the coverage restarts), every change must continue its
  key's life exactly (version n+1 after n, a new life at version 1 after a delete). A
  change missing from every stream breaks this chain (``inconsistent_history``); so
  does a wrong version or create revision. Only a key created and deleted again, both
  changes missed by every full-keyspace stream and neither acknowledged, could escape.
* One revision is one Raft entry, so one command: one put, or deletes of distinct keys.
* The writers' knowledge: every acknowledged write is in the reference at its revision
  and is the only change there (``lost_ack``/``wrong_value``/``phantom``); every put of
  the workload's keys carries a value some writer sent for that key and was not told
  "not applied" (values are unique, so each appears once: ``duplicate`` otherwise); a
  delete of a workload key follows a delete some writer sent.
* The final state read at the end (``GET /kv?prefix=``) equals the replay at that
  revision (``final_state``).

The checks of each watcher
--------------------------
Protocol, without the reference: each stream starts with ``start`` at the ``since`` it
asked for; message revisions never go back (``backwards``); every event is above the
position the stream was complete through (a repeat is a ``duplicate``, anything else
out of order a ``reorder``); within a message, revisions do not decrease; a revision
never has two events for one key; events are in the watched range (``phantom``); a
resync's chunks share one revision and come in key order; a resumed stream asks for the
position after the last message received in full (``harness``: the consumer's bug).

Against the reference, per segment: in every revision the reference knows, the events
delivered for the range are exactly the committed ones (``gap``, ``phantom``,
``wrong_value``: key, type, value, create revision and version); the image that starts a
segment equals the committed state of the range at its revision (``bad_resync``); with
``prev=true``, each event's ``prev`` is what the watcher's own view held.

Against the writers, independently of the reference: every acknowledged write of the
range after the watcher's start and through its final position is delivered in its
segment (``lost_ack``), or, when it falls in a resync gap, the image after the gap shows
its effect (the key at that revision or later, or the key gone or re-created after a
delete; ``bad_resync``).
"""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

__all__ = [
    "VIOLATION_KINDS",
    "Change",
    "ChangeType",
    "Connection",
    "Events",
    "FinalState",
    "Intervals",
    "Item",
    "Message",
    "Progress",
    "Resync",
    "Start",
    "Violation",
    "WatchCase",
    "WatchRecord",
    "WatchVerdict",
    "Write",
    "WriteKind",
    "check_watches",
]

VIOLATION_KINDS = (
    "gap",
    "duplicate",
    "reorder",
    "phantom",
    "wrong_value",
    "bad_resync",
    "backwards",
    "protocol",
    "lost_ack",
    "disagreement",
    "inconsistent_history",
    "final_state",
    "harness",
)

ChangeType: TypeAlias = Literal["put", "delete"]
WriteKind: TypeAlias = Literal["put", "delete", "delete_prefix"]
Outcome: TypeAlias = Literal["ok", "failed", "unknown"]

JSON_FORMAT = "raftkv-watch-case"
JSON_VERSION = 1


# -- what watchers receive ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Item:
    """A key's state: what a resync image or a read lists."""

    key: str
    value: str
    create_revision: int
    mod_revision: int
    version: int

    def describe(self) -> str:
        return (
            f"{self.key}={self.value!r} (create {self.create_revision}, "
            f"mod {self.mod_revision}, version {self.version})"
        )


@dataclass(frozen=True, slots=True)
class Change:
    """One event: a put or a delete of ``key`` at ``revision``. ``prev`` is the key's
    state before (``prev=true`` watches only; None also for a put creating the key)."""

    revision: int
    key: str
    type: ChangeType
    value: str = ""
    create_revision: int = 0
    version: int = 0
    prev: Item | None = None

    @property
    def identity(self) -> tuple[int, str, str, str, int, int]:
        """What must match the committed change (``prev`` is checked apart)."""
        return (
            self.revision,
            self.key,
            self.type,
            self.value,
            self.create_revision,
            self.version,
        )

    def after(self) -> Item | None:
        """The key's state once the change is applied."""
        if self.type == "delete":
            return None
        return Item(self.key, self.value, self.create_revision, self.revision, self.version)

    def describe(self) -> str:
        if self.type == "delete":
            return f"delete {self.key} @{self.revision}"
        return (
            f"put {self.key}={self.value!r} @{self.revision} "
            f"(create {self.create_revision}, version {self.version})"
        )


@dataclass(frozen=True, slots=True)
class Start:
    revision: int


@dataclass(frozen=True, slots=True)
class Events:
    revision: int
    changes: tuple[Change, ...]


@dataclass(frozen=True, slots=True)
class Resync:
    """One chunk of an image of the range at ``revision``; ``done`` on the last."""

    revision: int
    items: tuple[Item, ...]
    done: bool = True


@dataclass(frozen=True, slots=True)
class Progress:
    revision: int


Message: TypeAlias = Start | Events | Resync | Progress


@dataclass(frozen=True, slots=True)
class Connection:
    """One stream: what it asked for and every message received in full, in order."""

    since: int | None
    messages: tuple[Message, ...]
    node: int | None = None


@dataclass(frozen=True, slots=True)
class WatchRecord:
    """Everything one watcher of ``prefix`` ("" = every key) received."""

    name: str
    prefix: str
    connections: tuple[Connection, ...]
    with_prev: bool = False


# -- what writers were told ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Write:
    """One write a writer sent. ``key`` is the prefix of a ``delete_prefix``.

    ``ok`` with ``revision`` 0: applied without a change (a delete answered 404, a
    prefix delete that found nothing). ``failed``: certainly not applied. ``unknown``:
    may or may not have been applied."""

    kind: WriteKind
    key: str
    outcome: Outcome
    value: str = ""
    revision: int = 0
    deleted: int = 0

    def touches(self, key: str) -> bool:
        if self.kind == "delete_prefix":
            return key.startswith(self.key)
        return key == self.key


@dataclass(frozen=True, slots=True)
class FinalState:
    """Every key under ``prefix`` as read once the cluster had converged and nothing was
    written any more, and the revision that state is at."""

    revision: int
    prefix: str
    items: tuple[Item, ...]


# -- verdicts -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Violation:
    kind: str
    source: str
    revision: int | None
    detail: str

    def __str__(self) -> str:
        where = "" if self.revision is None else f" at revision {self.revision}"
        return f"{self.kind} in {self.source}{where}: {self.detail}"


@dataclass(slots=True)
class WatchVerdict:
    violations: list[Violation] = field(default_factory=list)
    watchers: int = 0
    connections: int = 0
    events: int = 0
    events_checked: int = 0
    events_unverified: int = 0
    resyncs: int = 0
    images_checked: int = 0
    acked_writes: int = 0
    reference_changes: int = 0
    reference_revisions: int = 0
    covered_revisions: int = 0
    cross_checked_revisions: int = 0
    final_revision: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    def counts(self) -> dict[str, int]:
        return dict(Counter(v.kind for v in self.violations))

    def summary(self) -> str:
        lines = [
            f"watch check: {self.watchers} watchers, {self.connections} streams, "
            f"{self.events} events ({self.events_checked} checked against the committed "
            f"history, {self.events_unverified} at revisions no full-keyspace stream "
            f"covered), {self.resyncs} resyncs ({self.images_checked} images checked), "
            f"{self.acked_writes} acknowledged writes",
            f"  committed history: {self.reference_changes} changes, "
            f"{self.covered_revisions} of {self.final_revision} revisions covered, "
            f"{self.cross_checked_revisions} changed revisions seen by two or more streams",
        ]
        if self.violations:
            lines.append(f"  VIOLATIONS ({len(self.violations)}): {self.counts()}")
            lines.extend(f"    - {v}" for v in self.violations[:40])
            if len(self.violations) > 40:
                lines.append(f"    ... and {len(self.violations) - 40} more")
        else:
            lines.append("  violations: none")
        return "\n".join(lines)


# -- intervals ----------------------------------------------------------------------------


class Intervals:
    """A union of revision intervals ``(a, b]`` (revisions a+1 through b)."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, spans: Iterable[tuple[int, int]] = ()) -> None:
        merged: list[list[int]] = []
        for start, end in sorted(s for s in spans if s[1] > s[0]):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self._starts = [span[0] for span in merged]
        self._ends = [span[1] for span in merged]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        return len(self._starts)

    def total(self) -> int:
        return sum(end - start for start, end in self)

    def contains(self, revision: int) -> bool:
        index = bisect_left(self._starts, revision) - 1
        return index >= 0 and revision <= self._ends[index]

    def contains_range(self, low: int, high: int) -> bool:
        """Whether every revision in ``(low, high]`` is in the set."""
        if high <= low:
            return True
        index = bisect_right(self._starts, low) - 1
        return index >= 0 and high <= self._ends[index]


# -- a watcher's segments -----------------------------------------------------------------


@dataclass(slots=True)
class _Segment:
    start: int
    image: dict[str, Item] | None
    end: int
    changes: dict[int, list[Change]] = field(default_factory=dict)

    def contains(self, revision: int) -> bool:
        return self.start < revision <= self.end


@dataclass(slots=True)
class _Timeline:
    record: WatchRecord
    segments: list[_Segment]
    first: int | None
    final: int | None
    events: int = 0

    @property
    def name(self) -> str:
        return self.record.name

    def spans(self) -> list[tuple[int, int]]:
        return [(s.start, s.end) for s in self.segments]


def _in_range(prefix: str, key: str) -> bool:
    return key.startswith(prefix)


def _shape_problem(change: Change) -> str | None:
    if change.type != "put":
        return None
    if change.version < 1:
        return f"version {change.version}"
    if not 0 < change.create_revision <= change.revision:
        return f"create revision {change.create_revision} not in (0, {change.revision}]"
    if (change.version == 1) != (change.create_revision == change.revision):
        return (
            f"version {change.version} with create revision {change.create_revision} "
            f"at revision {change.revision}"
        )
    return None


def _timeline(record: WatchRecord, out: list[Violation]) -> _Timeline:
    """The record's segments, by the protocol's rules, and its protocol violations."""
    name = record.name
    prefix = record.prefix

    def flag(kind: str, revision: int | None, detail: str) -> None:
        out.append(Violation(kind, name, revision, detail))

    segments: list[_Segment] = []
    current: _Segment | None = None
    position: int | None = None
    first: int | None = None
    delivered: dict[tuple[int, str], Change] = {}
    events = 0
    for number, connection in enumerate(record.connections):
        messages = connection.messages
        if not messages:
            continue  # never connected, or nothing received: nothing claimed
        on = f"stream {number}" + (f" (node {connection.node})" if connection.node else "")
        if position is not None and connection.since != position:
            flag(
                "harness",
                position,
                f"{on} asked for since={connection.since} after a stream complete "
                f"through {position}",
            )
        head = messages[0]
        if not isinstance(head, Start):
            flag("protocol", None, f"{on} began with {type(head).__name__}, not start")
            continue
        if connection.since is not None and head.revision != connection.since:
            flag(
                "protocol",
                head.revision,
                f"{on} asked since={connection.since}, started at {head.revision}",
            )
        if position is None:
            position = first = head.revision
            current = _Segment(position, None, position)
        elif head.revision != position:
            position = head.revision
        assert current is not None
        pending: list[Resync] = []
        for message in messages[1:]:
            if isinstance(message, Start):
                flag("protocol", message.revision, f"{on}: a second start message")
                continue
            if pending and (
                not isinstance(message, Resync) or message.revision != pending[0].revision
            ):
                flag(
                    "protocol",
                    message.revision,
                    f"{on}: a resync at {pending[0].revision} interrupted by "
                    f"{type(message).__name__} at {message.revision}",
                )
                pending = []
            if isinstance(message, Resync):
                pending.append(message)
                if not message.done:
                    continue
                image = _assemble(pending, prefix, on, flag)
                pending = []
                if message.revision < position:
                    flag(
                        "backwards",
                        message.revision,
                        f"{on}: a resync at {message.revision} after the stream was "
                        f"complete through {position}",
                    )
                segments.append(current)
                position = message.revision
                current = _Segment(position, image, position)
                continue
            if message.revision < position:
                flag(
                    "backwards",
                    message.revision,
                    f"{on}: {type(message).__name__.lower()} at {message.revision} after "
                    f"the stream was complete through {position}",
                )
            if isinstance(message, Events):
                last = position
                for change in message.changes:
                    events += 1
                    slot = (change.revision, change.key)
                    if not _in_range(prefix, change.key):
                        flag(
                            "phantom",
                            change.revision,
                            f"{on}: {change.describe()} is outside the range {prefix!r}",
                        )
                        continue
                    if change.revision > message.revision:
                        flag(
                            "protocol",
                            change.revision,
                            f"{on}: {change.describe()} in a message at {message.revision}",
                        )
                    if change.revision <= position:
                        earlier = delivered.get(slot)
                        if earlier is not None and earlier.identity == change.identity:
                            flag(
                                "duplicate",
                                change.revision,
                                f"{on}: {change.describe()} again, after the stream was "
                                f"complete through {position}",
                            )
                        else:
                            flag(
                                "reorder",
                                change.revision,
                                f"{on}: {change.describe()} after the stream was complete "
                                f"through {position}",
                            )
                        continue
                    if change.revision < last:
                        flag(
                            "reorder",
                            change.revision,
                            f"{on}: {change.describe()} after an event at {last}",
                        )
                    if slot in delivered:
                        flag(
                            "duplicate",
                            change.revision,
                            f"{on}: a second event for {change.key} at {change.revision}",
                        )
                        continue
                    problem = _shape_problem(change)
                    if problem is not None:
                        flag(
                            "wrong_value", change.revision, f"{on}: {change.describe()}: {problem}"
                        )
                    last = max(last, change.revision)
                    delivered[slot] = change
                    current.changes.setdefault(change.revision, []).append(change)
            position = message.revision
            current.end = max(current.end, position)
    if current is not None:
        segments.append(current)
    return _Timeline(record, segments, first, position, events)


_Flag: TypeAlias = Callable[[str, int | None, str], None]


def _assemble(chunks: list[Resync], prefix: str, on: str, flag: _Flag) -> dict[str, Item]:
    image: dict[str, Item] = {}
    previous: str | None = None
    revision = chunks[-1].revision
    for chunk in chunks:
        for item in chunk.items:
            if previous is not None and item.key <= previous:
                flag(
                    "protocol",
                    revision,
                    f"{on}: resync items out of key order ({previous!r} then {item.key!r})",
                )
            previous = item.key
            if not _in_range(prefix, item.key):
                flag(
                    "phantom",
                    revision,
                    f"{on}: resync item {item.key!r} is outside the range {prefix!r}",
                )
                continue
            if not 0 < item.create_revision <= item.mod_revision <= revision or item.version < 1:
                flag("bad_resync", revision, f"{on}: impossible item {item.describe()}")
            image[item.key] = item
    return image


# -- the committed history ----------------------------------------------------------------


_Vote: TypeAlias = tuple[tuple[int, str, str, str, int, int], ...]


def _vote_key(changes: Sequence[Change]) -> _Vote:
    return tuple(sorted(change.identity for change in changes))


@dataclass(slots=True)
class _Reference:
    covered: Intervals
    changes: dict[int, tuple[Change, ...]]
    revisions: list[int]
    anchors: dict[int, dict[str, Item]]
    cross_checked: int

    def between(self, low: int, high: int) -> list[int]:
        """The revisions with changes in ``(low, high]``."""
        revisions = self.revisions
        return revisions[bisect_right(revisions, low) : bisect_right(revisions, high)]


def _build_reference(sources: Sequence[_Timeline], out: list[Violation]) -> _Reference:
    coverage = [Intervals(t.spans()) for t in sources]
    per_source: list[dict[int, list[Change]]] = []
    for timeline in sources:
        merged: dict[int, list[Change]] = {}
        for segment in timeline.segments:
            merged.update(segment.changes)
        per_source.append(merged)
    candidates = sorted({r for changes in per_source for r in changes})
    reference: dict[int, tuple[Change, ...]] = {}
    cross_checked = 0
    for revision in candidates:
        tally: Counter[_Vote] = Counter()
        said: dict[_Vote, list[str]] = defaultdict(list)
        example: dict[_Vote, list[Change]] = {}
        first_said: dict[_Vote, int] = {}
        for index, timeline in enumerate(sources):
            if not coverage[index].contains(revision):
                continue
            changes = per_source[index].get(revision, [])
            vote = _vote_key(changes)
            tally[vote] += 1
            said[vote].append(timeline.name)
            example.setdefault(vote, changes)
            first_said.setdefault(vote, index)
        if sum(tally.values()) >= 2:
            cross_checked += 1
        # The majority; on a tie, the version of the earliest source.
        winner = max(tally, key=lambda v: (tally[v], -first_said[v]))
        if len(tally) > 1:
            versions = "; ".join(
                f"{', '.join(names)}: "
                + (", ".join(c.describe() for c in example[vote]) or "no change")
                for vote, names in said.items()
            )
            out.append(Violation("disagreement", "full-keyspace streams", revision, versions))
        if winner:
            reference[revision] = tuple(
                sorted(
                    (
                        Change(c.revision, c.key, c.type, c.value, c.create_revision, c.version)
                        for c in example[winner]
                    ),
                    key=lambda c: c.key,
                )
            )
    anchors: dict[int, dict[str, Item]] = {}
    for timeline in sources:
        for segment in timeline.segments:
            if segment.image is not None:
                anchors.setdefault(segment.start, segment.image)
    covered = Intervals(span for t in sources for span in t.spans())
    return _Reference(covered, reference, sorted(reference), anchors, cross_checked)


@dataclass(slots=True)
class _Known:
    """What is known of the whole keyspace at one revision: every key in ``items`` (None:
    known absent); when ``complete``, a key not listed is absent, else unknown."""

    items: dict[str, Item | None]
    complete: bool

    def lookup(self, key: str) -> tuple[bool, Item | None]:
        if key in self.items:
            return True, self.items[key]
        return self.complete, None

    def copy(self) -> _Known:
        return _Known(dict(self.items), self.complete)


def _continue_life(known: bool, before: Item | None, change: Change) -> str | None:
    """Why ``change`` cannot follow ``before`` (the key's state), None if it can."""
    if change.type == "delete":
        if known and before is None:
            return f"{change.describe()}, but the key did not exist"
        return None
    if not known:
        return None
    if before is None:
        if change.version != 1 or change.create_revision != change.revision:
            return f"{change.describe()} follows no life of the key (it did not exist)"
        return None
    if change.create_revision != before.create_revision or change.version != before.version + 1:
        return f"{change.describe()} does not follow {before.describe()}"
    return None


def _replay(
    reference: _Reference, queries: Iterable[int], out: list[Violation]
) -> dict[int, _Known]:
    """Replay the reference in revision order: the chain of every key's life, and what
    is known of the keyspace at each queried revision."""
    wanted = set(queries)
    points = sorted(set(reference.revisions) | set(reference.anchors) | wanted)
    known = _Known({}, complete=True)  # the empty keyspace at revision 0
    last = 0
    found: dict[int, _Known] = {}
    for point in points:
        if point > last and not reference.covered.contains_range(last, point):
            known = _Known({}, complete=False)
        changes = reference.changes.get(point, ()) if reference.covered.contains(point) else ()
        puts = sum(1 for c in changes if c.type == "put")
        if puts > 1 or (puts and len(changes) > 1):
            out.append(
                Violation(
                    "inconsistent_history",
                    "committed history",
                    point,
                    "one entry, more than one change: " + ", ".join(c.describe() for c in changes),
                )
            )
        for change in changes:
            is_known, before = known.lookup(change.key)
            problem = _continue_life(is_known, before, change)
            if problem is not None:
                out.append(Violation("inconsistent_history", "committed history", point, problem))
            known.items[change.key] = change.after()
        anchor = reference.anchors.get(point)
        if anchor is not None and not known.complete:
            # What the replay learnt wins; the image is checked as its stream's.
            for key, item in anchor.items():
                known.items.setdefault(key, item)
            known.complete = True
        if point in wanted:
            found[point] = known.copy()
        last = point
    return found


# -- checking -------------------------------------------------------------------------------


def _compare_image(
    name: str,
    kind: str,
    revision: int,
    prefix: str,
    image: Mapping[str, Item],
    state: _Known | None,
    out: list[Violation],
) -> int:
    """Compare an image of ``prefix`` with the committed state; the number of keys
    that could be compared (0: nothing is known of the range at ``revision``)."""
    if state is None:
        return 0
    compared = 0
    for key in sorted(set(image) | {k for k in state.items if _in_range(prefix, k)}):
        is_known, committed = state.lookup(key)
        if not is_known:
            continue
        compared += 1
        got = image.get(key)
        if got == committed:
            continue
        if committed is None:
            detail = f"{got.describe() if got else key} is in the image, but the key did not exist"
        elif got is None:
            detail = f"{committed.describe()} is missing from the image"
        else:
            detail = f"{got.describe()} in the image, committed {committed.describe()}"
        out.append(Violation(kind, name, revision, detail))
    if state.complete:
        compared += 1  # an empty image of an empty range was checked too
    return compared


def _check_against_reference(
    timeline: _Timeline,
    reference: _Reference,
    states: Mapping[int, _Known],
    verdict: WatchVerdict,
    out: list[Violation],
) -> None:
    name = timeline.name
    prefix = timeline.record.prefix
    covered = reference.covered
    for segment in timeline.segments:
        if segment.image is not None:
            verdict.resyncs += 1
            if _compare_image(
                name,
                "bad_resync",
                segment.start,
                prefix,
                segment.image,
                states.get(segment.start),
                out,
            ):
                verdict.images_checked += 1
        for revision in reference.between(segment.start, segment.end):
            expected = {c.key: c for c in reference.changes[revision] if _in_range(prefix, c.key)}
            got = {c.key: c for c in segment.changes.get(revision, [])}
            for key, change in expected.items():
                mine = got.get(key)
                if mine is None:
                    out.append(
                        Violation(
                            "gap",
                            name,
                            revision,
                            f"{change.describe()} was "
                            f"not delivered (segment {segment.start}..{segment.end})",
                        )
                    )
                elif mine.identity != change.identity:
                    out.append(
                        Violation(
                            "wrong_value",
                            name,
                            revision,
                            f"delivered {mine.describe()}, committed {change.describe()}",
                        )
                    )
        for revision, changes in segment.changes.items():
            if not covered.contains(revision):
                verdict.events_unverified += len(changes)
                continue
            verdict.events_checked += len(changes)
            committed = {c.key for c in reference.changes.get(revision, ())}
            for change in changes:
                if change.key not in committed:
                    out.append(
                        Violation(
                            "phantom", name, revision, f"{change.describe()} was never committed"
                        )
                    )


def _check_own_view(timeline: _Timeline, out: list[Violation]) -> None:
    """Each event continues what the watcher itself knew of the key; with ``prev=true``
    its ``prev`` is that state."""
    name = timeline.name
    with_prev = timeline.record.with_prev
    for segment in timeline.segments:
        # At revision 0 the keyspace is empty; after an image the range is what it says.
        view = _Known(
            dict(segment.image or {}), complete=segment.image is not None or segment.start == 0
        )
        for revision in sorted(segment.changes):
            for change in segment.changes[revision]:
                is_known, before = view.lookup(change.key)
                problem = _continue_life(is_known, before, change)
                if problem is not None:
                    out.append(
                        Violation(
                            "gap",
                            name,
                            revision,
                            f"not continuous with what it delivered before: {problem}",
                        )
                    )
                if with_prev and is_known and change.prev != before:
                    shown = change.prev.describe() if change.prev else "none"
                    had = before.describe() if before else "none (absent)"
                    out.append(
                        Violation(
                            "wrong_value",
                            name,
                            revision,
                            f"{change.describe()} has prev {shown}, the watcher had {had}",
                        )
                    )
                view.items[change.key] = change.after()


def _ack_effect_in_image(write: Write, image: Mapping[str, Item]) -> str | None:
    """Why the image at a later revision cannot follow the acknowledged ``write``."""
    if write.kind == "put":
        item = image.get(write.key)
        if item is not None and item.mod_revision < write.revision:
            return f"{item.describe()}, older than the acknowledged put @{write.revision}"
        return None
    for key, item in image.items():
        if write.touches(key) and item.create_revision <= write.revision:
            return (
                f"{item.describe()} was created before the acknowledged {write.kind} of "
                f"{write.key!r} @{write.revision}"
            )
    return None


def _deleted_since(reference: _Reference, key: str, low: int, high: int) -> bool:
    """Whether ``key`` may have been deleted in ``(low, high]``: a delete of it is
    committed there, or the reference does not know all of it."""
    if not reference.covered.contains_range(low, high):
        return True
    return any(
        c.type == "delete" and c.key == key
        for r in reference.between(low, high)
        for c in reference.changes[r]
    )


def _check_acknowledged(
    timeline: _Timeline,
    writes: Sequence[Write],
    reference: _Reference,
    out: list[Violation],
) -> None:
    name = timeline.name
    prefix = timeline.record.prefix
    first, final = timeline.first, timeline.final
    if first is None or final is None:
        return
    segments = timeline.segments
    starts = [s.start for s in segments]
    for write in writes:
        revision = write.revision
        if write.outcome != "ok" or revision == 0 or not first < revision <= final:
            continue
        if write.kind == "delete_prefix":
            if not (write.key.startswith(prefix) or prefix.startswith(write.key)):
                continue
        elif not _in_range(prefix, write.key):
            continue
        index = bisect_left(starts, revision) - 1
        segment = segments[index]
        if segment.contains(revision):
            got = segment.changes.get(revision, [])
            if write.kind == "put":
                ok = any(
                    c.type == "put" and c.key == write.key and c.value == write.value for c in got
                )
            elif write.kind == "delete":
                ok = any(c.type == "delete" and c.key == write.key for c in got)
            else:
                deletes = [c for c in got if c.type == "delete" and write.touches(c.key)]
                # The whole prefix is in the range: every deleted key is delivered;
                # else the range holds some of them.
                whole = write.key.startswith(prefix)
                ok = len(deletes) == write.deleted if whole else len(deletes) <= write.deleted
            if not ok:
                out.append(
                    Violation(
                        "lost_ack",
                        name,
                        revision,
                        f"the acknowledged {write.kind} of {write.key!r}"
                        + (f"={write.value!r}" if write.kind == "put" else "")
                        + " was not delivered",
                    )
                )
            continue
        # In the resync gap before the next segment: its image must show the write.
        following = segments[index + 1] if index + 1 < len(segments) else None
        if following is None or following.image is None:
            continue
        problem = _ack_effect_in_image(write, following.image)
        if (
            problem is None
            and write.kind == "put"
            and write.key not in following.image
            and not _deleted_since(reference, write.key, revision, following.start)
        ):
            problem = f"{write.key} is missing, and no delete of it was committed since"
        if problem is not None:
            out.append(
                Violation(
                    "bad_resync",
                    name,
                    following.start,
                    f"the image does not show an acknowledged write: {problem}",
                )
            )


def _check_writes(
    reference: _Reference, writes: Sequence[Write], prefix: str, out: list[Violation]
) -> None:
    """The committed history against what the writers sent and were told."""
    source = "committed history"
    covered = reference.covered
    issued: dict[tuple[str, str], list[Write]] = defaultdict(list)
    deleted_keys: set[str] = set()
    deleted_prefixes: set[str] = set()
    acked_at: dict[int, Write] = {}
    for write in writes:
        if write.kind == "put":
            issued[(write.key, write.value)].append(write)
        elif write.outcome != "failed":
            (deleted_keys if write.kind == "delete" else deleted_prefixes).add(write.key)
        if write.outcome != "ok" or write.revision == 0:
            continue
        if write.revision in acked_at:
            out.append(
                Violation(
                    "inconsistent_history",
                    "writes",
                    write.revision,
                    "two writes were acknowledged at one revision",
                )
            )
        acked_at[write.revision] = write
    for revision, write in sorted(acked_at.items()):
        if not covered.contains(revision):
            continue
        got = reference.changes.get(revision, ())
        if write.kind == "put":
            expected = [(write.key, "put", write.value)]
        elif write.kind == "delete":
            expected = [(write.key, "delete", "")]
        else:
            expected = [(c.key, "delete", "") for c in got if write.touches(c.key)]
            if len(expected) != write.deleted:
                out.append(
                    Violation(
                        "lost_ack",
                        source,
                        revision,
                        f"the prefix delete of {write.key!r} was acknowledged "
                        f"deleting {write.deleted} keys, {len(expected)} were "
                        "committed",
                    )
                )
        if sorted((c.key, c.type, c.value) for c in got) != sorted(expected):
            kind = "lost_ack" if not got else "wrong_value"
            out.append(
                Violation(
                    kind,
                    source,
                    revision,
                    f"the acknowledged {write.kind} of {write.key!r}"
                    + (f"={write.value!r}" if write.kind == "put" else "")
                    + " is committed as: "
                    + (", ".join(c.describe() for c in got) or "nothing"),
                )
            )
    # Every change of the writers' keys comes from a write they sent.
    occurrences: dict[tuple[str, str], list[int]] = defaultdict(list)
    for revision in reference.revisions:
        for change in reference.changes[revision]:
            if not change.key.startswith(prefix):
                continue
            if change.type == "put":
                occurrences[(change.key, change.value)].append(revision)
            elif (
                revision not in acked_at
                and change.key not in deleted_keys
                and not any(change.key.startswith(p) for p in deleted_prefixes)
            ):
                out.append(
                    Violation(
                        "phantom", source, revision, f"{change.describe()}: no writer deleted it"
                    )
                )
    for (key, value), revisions in occurrences.items():
        described = f"put {key}={value!r}"
        if len(revisions) > 1:
            out.append(
                Violation(
                    "duplicate",
                    source,
                    revisions[1],
                    f"{described} committed at {revisions}: one write applied more than once",
                )
            )
        sent = issued.get((key, value))
        if not sent:
            out.append(
                Violation(
                    "phantom", source, revisions[0], f"{described}: no writer sent that value"
                )
            )
        elif all(w.outcome == "failed" for w in sent):
            out.append(
                Violation(
                    "phantom",
                    source,
                    revisions[0],
                    f"{described}: the write was refused as not applied",
                )
            )
        else:
            for write in sent:
                if write.outcome == "ok" and write.revision not in revisions:
                    out.append(
                        Violation(
                            "wrong_value",
                            source,
                            revisions[0],
                            f"{described} committed at {revisions}, acknowledged "
                            f"at {write.revision}",
                        )
                    )


# -- the whole check ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WatchCase:
    """Everything one run's watch check reads (saved with a failing run for replay)."""

    records: tuple[WatchRecord, ...]
    writes: tuple[Write, ...] = ()
    writes_prefix: str = ""
    final: FinalState | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": JSON_FORMAT,
                "version": JSON_VERSION,
                "records": [_record_json(r) for r in self.records],
                "writes": [_write_json(w) for w in self.writes],
                "writes_prefix": self.writes_prefix,
                "final": None
                if self.final is None
                else {
                    "revision": self.final.revision,
                    "prefix": self.final.prefix,
                    "items": [_item_json(i) for i in self.final.items],
                },
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> WatchCase:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("format") != JSON_FORMAT:
            raise ValueError("not a raftkv watch case document")
        if doc.get("version") != JSON_VERSION:
            raise ValueError(f"unsupported watch case version {doc.get('version')!r}")
        final = doc.get("final")
        return cls(
            tuple(_record_from(r) for r in doc["records"]),
            tuple(_write_from(w) for w in doc["writes"]),
            str(doc.get("writes_prefix", "")),
            None
            if final is None
            else FinalState(
                int(final["revision"]),
                str(final["prefix"]),
                tuple(_item_from(i) for i in final["items"]),
            ),
        )


def check_watches(case: WatchCase) -> WatchVerdict:
    """Check every record of ``case`` (see the module's documentation)."""
    verdict = WatchVerdict()
    out = verdict.violations
    timelines = [_timeline(record, out) for record in case.records]
    sources = [t for t in timelines if t.record.prefix == ""]
    reference = _build_reference(sources, out)
    queries = {s.start for t in timelines for s in t.segments if s.image is not None}
    if case.final is not None:
        queries.add(case.final.revision)
    states = _replay(reference, queries, out)
    _check_writes(reference, case.writes, case.writes_prefix, out)
    for timeline in timelines:
        _check_own_view(timeline, out)
        _check_against_reference(timeline, reference, states, verdict, out)
        _check_acknowledged(timeline, case.writes, reference, out)
        verdict.connections += sum(1 for c in timeline.record.connections if c.messages)
        verdict.events += timeline.events
    if case.final is not None:
        final = case.final
        image = {item.key: item for item in final.items}
        state = states.get(final.revision)
        if state is None or not state.complete:
            out.append(
                Violation(
                    "final_state",
                    "final state",
                    final.revision,
                    "the committed history does not reach the final revision",
                )
            )
        else:
            _compare_image(
                "final state", "final_state", final.revision, final.prefix, image, state, out
            )
    verdict.watchers = len(timelines)
    verdict.acked_writes = sum(1 for w in case.writes if w.outcome == "ok")
    verdict.reference_changes = sum(len(c) for c in reference.changes.values())
    verdict.reference_revisions = len(reference.revisions)
    verdict.covered_revisions = reference.covered.total()
    verdict.cross_checked_revisions = reference.cross_checked
    verdict.final_revision = max((t.final or 0 for t in timelines), default=0)
    return verdict


# -- JSON ---------------------------------------------------------------------------------


def _item_json(item: Item) -> list[Any]:
    return [item.key, item.value, item.create_revision, item.mod_revision, item.version]


def _item_from(doc: list[Any]) -> Item:
    key, value, create, mod, version = doc
    return Item(str(key), str(value), int(create), int(mod), int(version))


def _change_json(change: Change) -> list[Any]:
    return [
        change.revision,
        change.key,
        change.type,
        change.value,
        change.create_revision,
        change.version,
        None if change.prev is None else _item_json(change.prev),
    ]


def _change_from(doc: list[Any]) -> Change:
    revision, key, kind, value, create, version, prev = doc
    if kind not in ("put", "delete"):
        raise ValueError(f"unknown change type {kind!r}")
    return Change(
        int(revision),
        str(key),
        kind,
        str(value),
        int(create),
        int(version),
        None if prev is None else _item_from(prev),
    )


def _message_json(message: Message) -> dict[str, Any]:
    if isinstance(message, Events):
        return {
            "k": "events",
            "r": message.revision,
            "e": [_change_json(c) for c in message.changes],
        }
    if isinstance(message, Resync):
        return {
            "k": "resync",
            "r": message.revision,
            "done": message.done,
            "i": [_item_json(i) for i in message.items],
        }
    kind = "start" if isinstance(message, Start) else "progress"
    return {"k": kind, "r": message.revision}


def _message_from(doc: dict[str, Any]) -> Message:
    kind, revision = doc["k"], int(doc["r"])
    if kind == "start":
        return Start(revision)
    if kind == "progress":
        return Progress(revision)
    if kind == "events":
        return Events(revision, tuple(_change_from(c) for c in doc["e"]))
    if kind == "resync":
        return Resync(revision, tuple(_item_from(i) for i in doc["i"]), bool(doc["done"]))
    raise ValueError(f"unknown message kind {kind!r}")


def _record_json(record: WatchRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "prefix": record.prefix,
        "with_prev": record.with_prev,
        "connections": [
            {"since": c.since, "node": c.node, "messages": [_message_json(m) for m in c.messages]}
            for c in record.connections
        ],
    }


def _record_from(doc: dict[str, Any]) -> WatchRecord:
    return WatchRecord(
        str(doc["name"]),
        str(doc["prefix"]),
        tuple(
            Connection(
                None if c["since"] is None else int(c["since"]),
                tuple(_message_from(m) for m in c["messages"]),
                None if c["node"] is None else int(c["node"]),
            )
            for c in doc["connections"]
        ),
        bool(doc.get("with_prev", False)),
    )


def _write_json(write: Write) -> list[Any]:
    return [write.kind, write.key, write.outcome, write.value, write.revision, write.deleted]


def _write_from(doc: list[Any]) -> Write:
    kind, key, outcome, value, revision, deleted = doc
    if kind not in ("put", "delete", "delete_prefix"):
        raise ValueError(f"unknown write kind {kind!r}")
    if outcome not in ("ok", "failed", "unknown"):
        raise ValueError(f"unknown write outcome {outcome!r}")
    return Write(kind, str(key), outcome, str(value), int(revision), int(deleted))
