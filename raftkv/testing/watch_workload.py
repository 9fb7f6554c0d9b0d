"""The watch workload of a chaos run: writers on a few prefixes, watchers following them
across node failures, and the end-of-run material the watch checker needs.

* **Writers** put unique values (``w<writer>-<serial>``) to a dozen keys under the
  prefixes ``w/a/``, ``w/b/``, ``w/c/``, delete keys and, now and then, a whole prefix;
  each write is recorded with what its writer was told (``watch_check.Write``).
* **Raw watchers** read the NDJSON stream of ``GET /watch`` themselves, with the
  resumption rule of docs/api.md: remember the revision of the last message received
  in full (for a resync, its last chunk) and reconnect with ``since=`` it. They hop from
  node to node every few seconds, and are cut off by the nemeses (a node killed,
  paused, partitioned, rejoined), resuming on a node picked at random, which may be the
  one that failed. Half of them follow the whole keyspace (the first from ``since=0``,
  before any write), the others one prefix; some ask for ``prev=true``. Raw watchers
  record every message, so the checker judges the server's protocol itself: a client
  library would hide a repeated event.
* **Client watchers** follow a prefix through ``raftkv.client.Client.watch``, which
  resumes across nodes on its own; they are closed and reopened with ``since=`` their
  position every few seconds, on a client whose first endpoint changes.
* **Long pollers** follow a prefix or every key with ``GET /watch?since=R&wait=S``, each
  poll to a random node, from the revision the previous answer gave.
* Optionally, a watcher that starts late, at ``since=1``: on nodes with a small
  ``--watch-history`` it must begin with a resync.

At the end (``finish``) the watchers run until they are complete through the final
revision; every member then replays its history with a ``since=0`` stream of the whole
keyspace (events, or an image and events after it), and the final state of the writers'
keys is read. ``raftkv.testing.watch_check`` explains what is checked and why that
reference is sound.
"""

from __future__ import annotations

import base64
import json
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from raftkv.client import Client, RaftkvError
from raftkv.client.watch import WatchEvent
from raftkv.testing.cluster import LocalCluster
from raftkv.testing.watch_check import (
    Change,
    Connection,
    Events,
    FinalState,
    Item,
    Message,
    Progress,
    Resync,
    Start,
    WatchCase,
    WatchRecord,
    Write,
    WriteKind,
)
from raftkv.wire.protocol import MAX_LIST_LIMIT

__all__ = [
    "WATCH_PREFIX",
    "WatchWorkload",
    "WorkloadOptions",
    "WorkloadResult",
    "complete_lines",
    "parse_message",
    "record_client_event",
]

WATCH_PREFIX = "w/"
"""Every key the writers touch starts with it."""
PREFIXES = ("w/a/", "w/b/", "w/c/")
_CONNECT_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class WorkloadOptions:
    watchers: int = 6
    """Raw NDJSON watchers: even-numbered ones follow every key, the others a prefix."""
    client_watchers: int = 1
    """Watchers through ``Client.watch`` (each follows a prefix)."""
    long_pollers: int = 0
    """Watchers by long polls (``wait=``), each poll to a random node: the first of
    ``w/a/``, the next of every key, the third of ``w/``, and so on."""
    writers: int = 2
    keys_per_prefix: int = 4
    late_watcher_at: float | None = None
    """Seconds into the run at which a watcher of ``w/`` starts from ``since=1``."""
    progress_s: float = 0.3
    """The progress interval watchers ask for (a silent stream is replaced after a few)."""
    hop_s: tuple[float, float] = (0.5, 4.0)
    """How long a watcher stays on one stream before it moves on by itself."""
    op_timeout_s: float = 2.5
    seed: int = 0


@dataclass(slots=True)
class WorkloadResult:
    case: WatchCase
    writes: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    """Watchers that did not reach the final revision (a liveness failure), failed, or
    were sent something that is not a watch message."""
    late_watcher_resynced: bool | None = None
    final_revision: int = 0


# -- parsing the NDJSON stream ------------------------------------------------------------


def _text(document: dict[str, Any], name: str) -> str:
    value = document.get(name)
    if isinstance(value, str):
        return value
    encoded = document.get(f"{name}_base64")
    if isinstance(encoded, str):
        # Not UTF-8: kept distinct from any text, and comparable.
        return "base64:" + base64.b64encode(base64.b64decode(encoded)).decode()
    raise ValueError(f"no {name!r} in {document!r}")


def _item(document: dict[str, Any], key: str | None = None) -> Item:
    return Item(
        _text(document, "key") if key is None else key,
        _text(document, "value"),
        int(document["create_revision"]),
        int(document["mod_revision"]),
        int(document["version"]),
    )


def _change(document: dict[str, Any]) -> Change:
    key = _text(document, "key")
    revision = int(document["revision"])
    prev_doc = document.get("prev")
    prev = None if prev_doc is None else _item(prev_doc, key)
    if document.get("type") == "delete":
        return Change(revision, key, "delete", prev=prev)
    if document.get("type") != "put":
        raise ValueError(f"unknown event type in {document!r}")
    return Change(
        revision,
        key,
        "put",
        _text(document, "value"),
        int(document["create_revision"]),
        int(document["version"]),
        prev,
    )


def parse_message(line: bytes) -> Message:
    """One NDJSON line of a watch stream (ValueError if it is not a watch message)."""
    document = json.loads(line)
    if not isinstance(document, dict):
        raise ValueError(f"not a watch message: {line[:200]!r}")
    kind = document.get("kind")
    revision = int(document["revision"])
    if kind == "start":
        return Start(revision)
    if kind == "progress":
        return Progress(revision)
    if kind == "events":
        return Events(revision, tuple(_change(e) for e in document["events"]))
    if kind == "resync":
        return Resync(revision, tuple(_item(i) for i in document["items"]), bool(document["done"]))
    raise ValueError(f"unknown watch message kind {kind!r}")


def complete_lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The lines of a byte stream that arrived whole: a message cut off by a broken
    connection is never taken for one."""
    partial = b""
    for chunk in chunks:
        lines = (partial + chunk).split(b"\n")
        partial = lines.pop()
        yield from lines


# -- watchers -------------------------------------------------------------------------------


class _Watcher(ABC):
    """One watcher's thread and what it received; each kind says how it follows."""

    def __init__(
        self,
        workload: WatchWorkload,
        name: str,
        prefix: str,
        *,
        since: int | None,
        with_prev: bool,
        seed: int,
        delay: float = 0.0,
    ) -> None:
        self.workload = workload
        self.name = name
        self.prefix = prefix
        self.with_prev = with_prev
        self.position = since
        self.delay = delay
        self.rng = random.Random(seed)
        self.connections: list[Connection] = []
        self.resyncs = 0
        self.thread = threading.Thread(target=self._main, name=f"watch-{name}", daemon=True)
        self.failure: str | None = None
        self.problems: list[str] = []
        """What the server should never have sent: a malformed message, an error status
        other than "unavailable"."""
        self.http = httpx.Client()

    def record(self) -> WatchRecord:
        return WatchRecord(self.name, self.prefix, tuple(self.connections), self.with_prev)

    def done(self) -> bool:
        target = self.workload.target
        return target is not None and self.position is not None and self.position >= target

    def _main(self) -> None:
        workload = self.workload
        if self.delay and workload.abandon.wait(self.delay):
            return
        try:
            while not self.done() and not workload.abandon.is_set():
                self.follow()
        except Exception as exc:  # recorded: the run reports it, the thread ends
            self.failure = f"{type(exc).__name__}: {exc}"
        finally:
            self.http.close()

    @abstractmethod
    def follow(self) -> None:
        """Follow the range once (one stream or one poll), recording what came."""

    def _hop_due(self) -> float:
        return time.monotonic() + self.rng.uniform(*self.workload.options.hop_s)


class _RawWatcher(_Watcher):
    """Reads the NDJSON stream itself, resuming with ``since=`` on a random node."""

    def __init__(self, *args: Any, node: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.node = node  # fixed (an end-of-run replay), else chosen per stream

    def follow(self) -> None:
        workload = self.workload
        cluster = workload.cluster
        node = self.node if self.node is not None else self.rng.choice(sorted(cluster.nodes))
        asked = self.position
        params: dict[str, str] = {"prefix": self.prefix, "progress": f"{workload.progress_s:g}"}
        if asked is not None:
            params["since"] = str(asked)
        if self.with_prev:
            params["prev"] = "true"
        messages: list[Message] = []
        hop_at = self._hop_due() if self.node is None else float("inf")
        timeout = httpx.Timeout(
            workload.options.op_timeout_s,
            connect=_CONNECT_TIMEOUT_S,
            read=max(2.0, 5 * workload.progress_s),
        )
        try:
            with self.http.stream(
                "GET", f"{cluster.url(node)}/watch", params=params, timeout=timeout
            ) as response:
                if response.status_code == 200:
                    self._read(response, messages, hop_at)
                elif response.status_code not in (429, 503):
                    response.read()
                    self.problems.append(
                        f"node {node} answered {response.status_code} to a watch since={asked}: "
                        f"{response.text[:200]}"
                    )
        except httpx.HTTPError:
            pass  # a broken stream; the next one resumes after the last whole message
        except (ValueError, KeyError, TypeError) as exc:
            # Only whole lines are parsed: the node sent something that is not a message.
            self.problems.append(f"node {node} sent a malformed watch message: {exc}")
        self.connections.append(Connection(asked, tuple(messages), node))
        if not messages:
            workload.abandon.wait(self.rng.uniform(0.05, 0.3))

    def _read(self, response: httpx.Response, messages: list[Message], hop_at: float) -> None:
        workload = self.workload
        resyncing = False
        for line in complete_lines(response.iter_bytes()):
            if not line.strip():
                continue
            message = parse_message(line)
            messages.append(message)
            if isinstance(message, Resync):
                resyncing = not message.done
                if resyncing:
                    continue
                self.resyncs += 1
            self.position = message.revision
            if workload.abandon.is_set() or self.done():
                return
            if time.monotonic() >= hop_at and not resyncing:
                return


class _ClientWatcher(_Watcher):
    """Follows a prefix through ``Client.watch``; the client resumes across nodes."""

    def follow(self) -> None:
        workload = self.workload
        nodes = sorted(workload.cluster.nodes)
        first = self.rng.randrange(len(nodes))
        endpoints = [workload.cluster.url(n) for n in nodes[first:] + nodes[:first]]
        asked = self.position
        messages: list[Message] = []
        hop_at = self._hop_due()
        with Client(endpoints, timeout=workload.options.op_timeout_s, retry_for=10.0) as client:
            try:
                watch = client.watch(
                    prefix=self.prefix,
                    since=asked,
                    prev=self.with_prev,
                    progress_interval=workload.progress_s,
                    with_progress=True,
                )
            except RaftkvError:
                workload.abandon.wait(self.rng.uniform(0.1, 0.5))
                return
            messages.append(Start(asked if asked is not None else watch.revision))
            try:
                for event in watch:
                    record_client_event(messages, event)
                    if event.type == "resync":
                        self.resyncs += 1
                    # The watch's revision stays below a revision until every event of
                    # it has been handed out (a prefix delete has several): leave only
                    # at such a boundary, or the next watch repeats the revision.
                    if watch.revision < event.revision:
                        continue
                    self.position = watch.revision
                    if workload.abandon.is_set() or self.done() or time.monotonic() >= hop_at:
                        break
            except RaftkvError:
                pass
            finally:
                watch.close()
            # Everything through the watch's revision has been handed out; events of a
            # revision above it were not all, and the next watch delivers them again.
            complete = watch.revision
            while (
                messages and isinstance(messages[-1], Events) and (messages[-1].revision > complete)
            ):
                messages.pop()
            messages.append(Progress(complete))
            self.position = complete
        self.connections.append(Connection(asked, tuple(messages), None))


class _LongPoller(_Watcher):
    """Follows a range by long polls, each to a random node: a poll with ``since=R``
    answered with changes (or an image, or nothing) through revision X is, to the
    checker, a stream that started at R and sent one message at X."""

    def follow(self) -> None:
        workload = self.workload
        cluster = workload.cluster
        node = self.rng.choice(sorted(cluster.nodes))
        asked = 0 if self.position is None else self.position
        wait = self.rng.choice((0, 0.2, 1.0))
        params = {"prefix": self.prefix, "since": str(asked), "wait": f"{wait:g}"}
        messages: list[Message] = []
        try:
            response = self.http.get(
                f"{cluster.url(node)}/watch",
                params=params,
                timeout=httpx.Timeout(wait + workload.options.op_timeout_s, connect=1.0),
            )
            if response.status_code == 200:
                document = response.json()
                revision = int(document["revision"])
                if "resync" in document:
                    items = tuple(_item(i) for i in document["resync"])
                    answer: Message = Resync(revision, items)
                    self.resyncs += 1
                elif document["events"]:
                    answer = Events(revision, tuple(_change(e) for e in document["events"]))
                else:
                    answer = Progress(revision)
                messages = [Start(asked), answer]
                self.position = revision
            elif response.status_code not in (429, 503):
                self.problems.append(
                    f"node {node} answered {response.status_code} to a long poll since="
                    f"{asked}: {response.text[:200]}"
                )
        except httpx.HTTPError:
            pass
        except (ValueError, KeyError, TypeError) as exc:
            self.problems.append(f"node {node} sent a malformed long-poll answer: {exc}")
        self.connections.append(Connection(asked, tuple(messages), node))
        if not messages:
            workload.abandon.wait(self.rng.uniform(0.05, 0.3))


def _decoded(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(data).decode()


def record_client_event(messages: list[Message], event: WatchEvent) -> None:
    """Record a client's event as the message it stands for; events of one revision are
    gathered into one message."""
    if event.type == "progress":
        messages.append(Progress(event.revision))
        return
    if event.type == "resync":
        items = tuple(
            Item(
                _decoded(kv.key),
                _decoded(kv.value),
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            )
            for kv in event.items
        )
        messages.append(Resync(event.revision, items))
        return
    prev = event.prev
    change = Change(
        event.revision,
        _decoded(event.key),
        "put" if event.type == "put" else "delete",
        _decoded(event.value) if event.type == "put" else "",
        event.create_revision,
        event.version,
        None
        if prev is None
        else Item(
            _decoded(event.key),
            _decoded(prev.value),
            prev.create_revision,
            prev.mod_revision,
            prev.version,
        ),
    )
    last = messages[-1] if messages else None
    if isinstance(last, Events) and last.revision == event.revision:
        messages[-1] = Events(event.revision, (*last.changes, change))
    else:
        messages.append(Events(event.revision, (change,)))


# -- the workload ---------------------------------------------------------------------------


class WatchWorkload:
    """Writers and watchers on ``cluster``: ``start``, ``stop_writers``, then ``finish``."""

    def __init__(
        self,
        cluster: LocalCluster,
        options: WorkloadOptions,
        pick_node: Callable[[random.Random], int | None],
    ) -> None:
        self.cluster = cluster
        self.options = options
        self.progress_s = options.progress_s
        self._pick_node = pick_node
        self.http = httpx.Client(timeout=options.op_timeout_s)
        self.target: int | None = None
        """Once set, watchers stop when they are complete through it."""
        self.abandon = threading.Event()
        self._writers_stop = threading.Event()
        self._writes: list[list[Write]] = [[] for _ in range(options.writers)]
        seed = options.seed * 104_729
        self.watchers: list[_Watcher] = []
        for i in range(options.watchers):
            whole = i % 2 == 0
            prefix = "" if whole else PREFIXES[(i // 2) % len(PREFIXES)]
            self.watchers.append(
                _RawWatcher(
                    self,
                    f"raw-{i}" + ("-all" if whole else f"-{prefix}"),
                    prefix,
                    since=0 if i == 0 else None,
                    with_prev=i % 3 == 1,
                    seed=seed + i,
                )
            )
        for i in range(options.client_watchers):
            prefix = PREFIXES[i % len(PREFIXES)] if i % 2 == 0 else WATCH_PREFIX
            self.watchers.append(
                _ClientWatcher(
                    self,
                    f"client-{i}-{prefix}",
                    prefix,
                    since=None,
                    with_prev=i % 2 == 1,
                    seed=seed + 1000 + i,
                )
            )
        for i in range(options.long_pollers):
            prefix = (PREFIXES[0], "", WATCH_PREFIX)[i % 3]
            self.watchers.append(
                _LongPoller(
                    self,
                    f"poll-{i}-{prefix or 'all'}",
                    prefix,
                    since=0,
                    with_prev=False,
                    seed=seed + 3000 + i,
                )
            )
        self.late: _Watcher | None = None
        if options.late_watcher_at is not None:
            self.late = _RawWatcher(
                self,
                "late-from-1",
                WATCH_PREFIX,
                since=1,
                with_prev=False,
                seed=seed + 2000,
                delay=options.late_watcher_at,
            )
            self.watchers.append(self.late)
        self._writer_threads = [
            threading.Thread(target=self._writer, args=(w,), name=f"watch-writer-{w}", daemon=True)
            for w in range(options.writers)
        ]

    # -- running ------------------------------------------------------------------------

    def start(self) -> None:
        """Watchers first (one starts at revision 0), then writers."""
        for watcher in self.watchers:
            watcher.thread.start()
        for thread in self._writer_threads:
            thread.start()

    def stop_writers(self, timeout: float) -> None:
        self._writers_stop.set()
        for thread in self._writer_threads:
            thread.join(timeout)

    def abort(self) -> None:
        self._writers_stop.set()
        self.abandon.set()
        self.http.close()

    def _writer(self, number: int) -> None:
        options = self.options
        rng = random.Random(options.seed * 7_907 + number)
        out = self._writes[number]
        http = httpx.Client(timeout=options.op_timeout_s)
        serial = 0
        try:
            while not self._writers_stop.is_set():
                node = self._pick_node(rng)
                if node is None:
                    time.sleep(0.1)
                    continue
                base = self.cluster.url(node)
                prefix = rng.choice(PREFIXES)
                key = f"{prefix}{rng.randrange(options.keys_per_prefix)}"
                roll = rng.random()
                if roll < 0.72:
                    serial += 1
                    value = f"w{number}-{serial}"
                    out.append(self._write(http, "put", key, value, "PUT", f"{base}/kv/{key}"))
                elif roll < 0.95:
                    out.append(self._write(http, "delete", key, "", "DELETE", f"{base}/kv/{key}"))
                else:
                    url = f"{base}/kv?prefix={prefix}"
                    out.append(self._write(http, "delete_prefix", prefix, "", "DELETE", url))
        finally:
            http.close()

    @staticmethod
    def _write(
        http: httpx.Client, kind: WriteKind, key: str, value: str, method: str, url: str
    ) -> Write:
        content = value.encode() if kind == "put" else None
        try:
            response = http.request(method, url, content=content)
        except httpx.ConnectError:
            return Write(kind, key, "failed", value)  # never reached a node
        except httpx.HTTPError:
            return Write(kind, key, "unknown", value)
        status = response.status_code
        if status == 200:
            document = response.json()
            if kind == "delete_prefix":
                deleted = int(document["deleted"])
                return Write(
                    kind, key, "ok", value, int(document["index"]) if deleted else 0, deleted
                )
            return Write(kind, key, "ok", value, int(document["revision"]))
        if status == 404 and kind == "delete":
            return Write(kind, key, "ok", value, 0)  # nothing to delete: no change
        if status == 503 and "was not applied" in response.text:
            return Write(kind, key, "failed", value)
        return Write(kind, key, "unknown", value)

    # -- the end ------------------------------------------------------------------------

    def finish(self, members: list[int], catch_up_s: float = 90.0) -> WorkloadResult:
        """Once writers have stopped and the cluster has healed: the final revision and
        state, watchers complete through it, and every member's replay."""
        final, items = self._final_state(members)
        self.target = final
        deadline = time.monotonic() + catch_up_s
        for watcher in self.watchers:
            watcher.thread.join(max(0.1, deadline - time.monotonic()))
        replays = [
            _RawWatcher(self, f"replay-node-{n}", "", since=0, with_prev=False, seed=n, node=n)
            for n in members
        ]
        for replay in replays:
            replay.thread.start()
        for replay in replays:
            replay.thread.join(max(5.0, deadline - time.monotonic()))
        self.abandon.set()
        problems: list[str] = []
        for watcher in [*self.watchers, *replays]:
            watcher.thread.join(10.0)
            problems.extend(f"{watcher.name}: {problem}" for problem in watcher.problems)
            if watcher.failure is not None:
                problems.append(f"{watcher.name} failed: {watcher.failure}")
            elif not watcher.done():
                problems.append(
                    f"{watcher.name} was complete only through {watcher.position}, not the "
                    f"final revision {final}"
                )
        writes = [w for per_writer in self._writes for w in per_writer]
        # The end-of-run replays first: on a tie between streams, theirs is kept.
        records = tuple(r.record() for r in [*replays, *self.watchers])
        case = WatchCase(
            records, tuple(writes), WATCH_PREFIX, FinalState(final, WATCH_PREFIX, items)
        )
        counts = {
            "total": len(writes),
            "ok": sum(1 for w in writes if w.outcome == "ok"),
            "failed": sum(1 for w in writes if w.outcome == "failed"),
            "unknown": sum(1 for w in writes if w.outcome == "unknown"),
        }
        self.http.close()
        return WorkloadResult(
            case,
            counts,
            problems,
            None if self.late is None else self.late.resyncs > 0,
            final,
        )

    def _final_state(self, members: list[int]) -> tuple[int, tuple[Item, ...]]:
        """The writers' keys as one member holds them, and the revision they are at:
        the member's applied index, the same before and after the read."""
        cluster = self.cluster
        for _ in range(100):
            for node in members:
                try:
                    before = self._applied(node)
                    listing = self.http.get(
                        f"{cluster.url(node)}/kv",
                        params={"prefix": WATCH_PREFIX, "limit": MAX_LIST_LIMIT},
                        timeout=10,
                    )
                    after = self._applied(node)
                except (httpx.HTTPError, ValueError, KeyError):
                    continue
                if listing.status_code != 200 or before != after:
                    continue
                document = listing.json()
                if document.get("more"):
                    raise RuntimeError("more watched keys than one listing holds")
                return after, tuple(_item(i) for i in document["items"])
            time.sleep(0.2)
        raise RuntimeError("could not read the final state of the watched keys")

    def _applied(self, node: int) -> int:
        response = self.http.get(
            f"{self.cluster.url(node)}/cluster/status", params={"local": "true"}, timeout=10
        )
        return int(response.json()["appliedIndex"])
