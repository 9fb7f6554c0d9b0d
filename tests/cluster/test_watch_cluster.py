"""Watches on real kvnode processes: linearizable start, resumption on another node,
resync past the history, a killed node, slow and stalled watchers, limits and metrics
(docs/api.md, "Watch")."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from raftkv.client import Client
from raftkv.client.native import NativeClient
from raftkv.testing.cluster import LocalCluster, running_cluster, wait_until

# A small history, buffer and slow timeout, so the tests below reach the resync, the
# fall-behind and the cut-off paths with a few writes.
WATCH_ARGS = [
    "--watch-history",
    "50",
    "--watch-buffer-bytes",
    "65536",
    "--watch-slow-timeout",
    "2",
    "--watch-max-per-client",
    "8",
    "--watch-progress-interval",
    "0.5",
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("watch"), 3, extra_args=WATCH_ARGS) as running:
        yield running


class Stream:
    """An NDJSON watch stream read in a thread, so a test can wait for messages."""

    def __init__(self, url: str, params: dict[str, str]) -> None:
        self.messages: list[dict[str, Any]] = []
        self.status = 0
        self.ended = threading.Event()
        self._changed = threading.Condition()
        self._client = httpx.Client(timeout=httpx.Timeout(10.0, read=30.0))
        self._response: httpx.Response | None = None
        self._thread = threading.Thread(target=self._read, args=(url, params), daemon=True)
        self._thread.start()

    def _read(self, url: str, params: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", url, params=params) as response:
                self._response = response
                self.status = response.status_code
                for line in response.iter_lines():
                    if line:
                        with self._changed:
                            self.messages.append(orjson.loads(line))
                            self._changed.notify_all()
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()
            with self._changed:
                self._changed.notify_all()

    def wait_for(self, predicate: Any, timeout: float = 20.0) -> list[dict[str, Any]]:
        with self._changed:
            ok = self._changed.wait_for(
                lambda: predicate(self.messages) or self.ended.is_set(), timeout
            )
            assert ok and predicate(self.messages), (
                f"stream ended or timed out; got {self.messages}"
            )
            return list(self.messages)

    def events(self) -> list[dict[str, Any]]:
        return [e for m in self.messages if m["kind"] == "events" for e in m["events"]]

    def position(self) -> int:
        complete = [m for m in self.messages if m["kind"] != "resync" or m["done"]]
        return int(complete[-1]["revision"])

    def close(self) -> None:
        if self._response is not None:
            with contextlib.suppress(Exception):
                self._response.close()
        self._client.close()
        self._thread.join(5)


@contextlib.contextmanager
def watching(url: str, **params: str) -> Iterator[Stream]:
    stream = Stream(url, params)
    try:
        yield stream
    finally:
        stream.close()


def events_through(messages: list[dict[str, Any]], revision: int) -> bool:
    return any(m["kind"] in ("events", "progress") and m["revision"] >= revision for m in messages)


def put(cluster: LocalCluster, node: int, key: str, value: str) -> int:
    response = cluster.client.post(f"{cluster.url(node)}/kv/{key}", json={"value": value})
    assert response.status_code == 200, response.text
    return int(response.json()["revision"])


def test_a_watch_on_a_follower_starts_after_every_acknowledged_write(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    follower = cluster.followers()[0]
    acknowledged = put(cluster, leader, "lin/a", "before")
    with watching(f"{cluster.url(follower)}/watch", prefix="lin/") as stream:
        start = stream.wait_for(lambda m: len(m) >= 1)[0]
        assert start["kind"] == "start"
        # Linearizable: the write acknowledged before the watch was made is at or
        # below where the watch starts, so it is not delivered as a change.
        assert start["revision"] >= acknowledged
        after = put(cluster, leader, "lin/b", "after")
        stream.wait_for(lambda m: events_through(m, after))
        assert [(e["key"], e["value"], e["revision"]) for e in stream.events()] == [
            ("lin/b", "after", after)
        ]


def test_resuming_on_another_node_continues_exactly_after_the_last_revision(
    cluster: LocalCluster,
) -> None:
    leader = cluster.leader()
    first, second = cluster.followers()
    base = put(cluster, leader, "resume/0", "v0")
    revisions = [put(cluster, leader, f"resume/{i}", f"v{i}") for i in range(1, 6)]
    with watching(f"{cluster.url(first)}/watch", prefix="resume/", since=str(base)) as stream:
        stream.wait_for(lambda m: events_through(m, revisions[2]))
        seen = stream.events()
        position = stream.position()
    more = [put(cluster, leader, f"resume/{i}", f"v{i}") for i in range(6, 9)]
    with watching(f"{cluster.url(second)}/watch", prefix="resume/", since=str(position)) as again:
        again.wait_for(lambda m: events_through(m, more[-1]))
        assert again.messages[0] == {"kind": "start", "revision": position}
        seen += again.events()
    assert [e["revision"] for e in seen] == revisions + more
    assert [e["value"] for e in seen] == [f"v{i}" for i in range(1, 9)]


def test_a_revision_older_than_the_history_gets_a_consistent_resync(
    cluster: LocalCluster,
) -> None:
    leader = cluster.leader()
    follower = cluster.followers()[0]
    for i in range(60):  # more than --watch-history (50)
        put(cluster, leader, f"old/{i % 7}", f"v{i}")
    with watching(f"{cluster.url(follower)}/watch", prefix="old/", since="1") as stream:
        messages = stream.wait_for(lambda m: any(x["kind"] == "resync" and x["done"] for x in m))
        resync = next(m for m in messages if m["kind"] == "resync")
        listing = cluster.client.get(
            f"{cluster.url(leader)}/kv", params={"prefix": "old/", "consistency": "stale"}
        ).json()["items"]
        image = {item["key"]: item["value"] for item in resync["items"]}
        assert image == {item["key"]: item["value"] for item in listing}
        latest = put(cluster, leader, "old/new", "fresh")
        stream.wait_for(lambda m: events_through(m, latest))
        assert [(e["key"], e["revision"]) for e in stream.events()] == [("old/new", latest)]
        assert latest > resync["revision"]
    long_poll = cluster.client.get(
        f"{cluster.url(follower)}/watch", params={"prefix": "old/", "since": "1", "wait": "1"}
    ).json()
    assert {item["key"] for item in long_poll["resync"]} == set(image) | {"old/new"}


def test_a_watcher_on_a_killed_node_resumes_elsewhere_without_gaps(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 3, extra_args=WATCH_ARGS) as cluster:
        leader = cluster.leader()
        doomed = cluster.followers()[0]
        survivor = next(n for n in cluster.nodes if n not in (leader, doomed))
        start = put(cluster, leader, "k/0", "v0")
        written = [put(cluster, leader, f"k/{i}", f"v{i}") for i in range(1, 4)]
        with watching(f"{cluster.url(doomed)}/watch", prefix="k/", since=str(start)) as stream:
            stream.wait_for(lambda m: events_through(m, written[-1]))
            cluster.kill(doomed)
            assert stream.ended.wait(10)
            seen = stream.events()
            position = stream.position()
        written += [put(cluster, leader, f"k/{i}", f"v{i}") for i in range(4, 7)]
        with watching(f"{cluster.url(survivor)}/watch", prefix="k/", since=str(position)) as again:
            again.wait_for(lambda m: events_through(m, written[-1]))
            seen += again.events()
        assert [e["revision"] for e in seen] == written


def test_a_reader_that_stops_is_cut_off_and_slows_no_one(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    follower = cluster.followers()[0]
    node = cluster.nodes[follower]
    start = put(cluster, leader, "slow/start", "x")
    # A client that asks for a watch and then never reads.
    stalled = socket.create_connection(("127.0.0.1", node.http_port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(f"GET /watch?prefix=slow/&since={start} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    # More than the kernel's socket buffers take (up to 4 MiB by default on Linux), so
    # the worker's own buffer fills and its sends stall.
    value = "x" * 250_000
    try:
        with watching(f"{cluster.url(follower)}/watch", prefix="slow/", since=str(start)) as good:
            written = [put(cluster, leader, f"slow/{i}", value) for i in range(30)]
            good.wait_for(lambda m: events_through(m, written[-1]))
            assert [e["revision"] for e in good.events()] == written

            wait_until(
                lambda: _metric(cluster, follower, "raftkv_http_watch_cut_off_total") >= 1,
                timeout=20,
                what="the stalled watcher to be cut off",
            )
    finally:
        stalled.close()


def test_a_slow_reader_falls_behind_and_still_gets_everything(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    follower = cluster.followers()[0]
    node = cluster.nodes[follower]
    start = put(cluster, leader, "lag/start", "x")
    sock = socket.create_connection(("127.0.0.1", node.http_port))
    sock.sendall(f"GET /watch?prefix=lag/&since={start} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    received = bytearray()
    stop = threading.Event()

    def read_slowly() -> None:
        # Always some progress (well within --watch-slow-timeout), never keeping up.
        sock.settimeout(30)
        while not stop.is_set():
            try:
                chunk = sock.recv(65536)
            except OSError:
                return  # closed by the test when it is done
            if not chunk:
                return
            received.extend(chunk)
            stop.wait(0.05)

    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    value = "y" * 250_000  # past the kernel's socket buffers, as above
    slow_before = _metric(cluster, follower, "raftkv_http_watch_slow_total")
    try:
        written = [put(cluster, leader, f"lag/{i % 5}", f"{i}{value}") for i in range(24)]

        def revisions() -> list[int]:
            body = bytes(received).split(b"\r\n\r\n", 1)[-1]
            return [
                e["revision"]
                for line in _chunked_lines(body)
                for e in orjson.loads(line).get("events", [])
            ]

        wait_until(lambda: written[-1] in revisions(), timeout=60, what="every change")
        assert revisions() == written
        assert _metric(cluster, follower, "raftkv_http_watch_slow_total") > slow_before
    finally:
        stop.set()
        sock.close()
        reader.join(5)


def _metric(cluster: LocalCluster, node: int, name: str) -> float:
    text = cluster.client.get(f"{cluster.url(node)}/metrics").text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no {name} in the metrics")


def _chunked_lines(body: bytes) -> list[bytes]:
    """The complete NDJSON lines of a chunked HTTP body received so far."""
    out = bytearray()
    while body:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line, 16)
        if len(rest) < size + 2:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return [line for line in bytes(out).split(b"\n")[:-1] if line]


def test_watch_limits_and_metrics(cluster: LocalCluster) -> None:
    follower = cluster.followers()[0]
    url = f"{cluster.url(follower)}/watch"
    streams = [Stream(url, {"prefix": f"lim/{i}/"}) for i in range(8)]
    try:
        for stream in streams:
            stream.wait_for(lambda m: len(m) >= 1)
        refused = cluster.client.get(url, params={"prefix": "lim/x/"})
        assert refused.status_code == 429
        assert "--watch-max-per-client" in refused.json()["error"]
        text = cluster.client.get(f"{cluster.url(follower)}/metrics").text
        watchers = [ln for ln in text.splitlines() if ln.startswith("raftkv_http_watchers ")]
        assert watchers and float(watchers[0].split()[-1]) >= 8
        assert "raftkv_watches " in text and "raftkv_watch_history_floor " in text
    finally:
        for stream in streams:
            stream.close()
    assert cluster.client.get(url, params={"prefix": "p", "since": "-1"}).status_code == 400
    assert cluster.client.get(url, params={"prefix": "p", "wait": "nan"}).status_code == 400


def test_progress_messages_carry_the_applied_revision(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    with watching(f"{cluster.url(leader)}/watch/idle-key", progress="0.2") as stream:
        other = put(cluster, leader, "elsewhere", "x")
        messages = stream.wait_for(
            lambda m: any(x["kind"] == "progress" and x["revision"] >= other for x in m)
        )
        assert not stream.events()
        assert all(x["kind"] in ("start", "progress") for x in messages)


def test_a_start_revision_in_the_future_waits_for_it(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    now = put(cluster, leader, "future/0", "v0")
    target = now + 3
    with watching(f"{cluster.url(leader)}/watch", prefix="future/", since=str(target)) as stream:
        assert stream.wait_for(lambda m: len(m) >= 1)[0] == {"kind": "start", "revision": target}
        written = [put(cluster, leader, f"future/{i}", f"v{i}") for i in range(1, 7)]
        stream.wait_for(lambda m: events_through(m, written[-1]))
        assert [e["revision"] for e in stream.events()] == [r for r in written if r > target]


def test_server_sent_events_resume_from_last_event_id(cluster: LocalCluster) -> None:
    leader = cluster.leader()
    follower = cluster.followers()[0]
    first = put(cluster, leader, "sse/a", "1")
    second = put(cluster, leader, "sse/b", "2")
    headers = {"Accept": "text/event-stream", "Last-Event-ID": str(first)}
    with cluster.client.stream(
        "GET", f"{cluster.url(follower)}/watch", params={"prefix": "sse/"}, headers=headers
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines: list[str] = []
        last_id = 0
        for line in response.iter_lines():
            lines.append(line)
            if line.startswith("id: "):
                last_id = int(line[4:])
            elif not line and last_id >= second:
                break  # the blank line that ends that event
    assert lines[:3] == [
        "event: start",
        f"id: {first}",
        f'data: {{"kind":"start","revision":{first}}}',
    ]
    data = [orjson.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert [e["key"] for m in data if m["kind"] == "events" for e in m["events"]] == ["sse/b"]


def test_the_clients_watches_survive_a_node_restart(tmp_path: Path) -> None:
    """The HTTP client fails over to another node; the native client, bound to one node,
    resumes on it once it is back. Neither misses nor repeats a change."""
    with running_cluster(tmp_path, 3, extra_args=WATCH_ARGS, native=True) as cluster:
        leader = cluster.leader()
        target = cluster.followers()[0]
        others = [cluster.url(n) for n in cluster.nodes if n != target]
        start = put(cluster, leader, "c/0", "v0")
        http = Client([cluster.url(target), *others], retry_for=30)
        native = NativeClient(*cluster.client_addr(target))
        try:
            http_watch = http.watch(prefix="c/", since=start)
            native_watch = native.watch(prefix="c/", since=start)
            written = [put(cluster, leader, f"c/{i}", f"v{i}") for i in range(1, 4)]
            seen_http = [next(http_watch) for _ in written]
            seen_native = [next(native_watch) for _ in written]
            cluster.kill(target)
            written += [put(cluster, leader, f"c/{i}", f"v{i}") for i in range(4, 7)]
            cluster.start_node(target)
            seen_http += [next(http_watch) for _ in range(3)]
            seen_native += [next(native_watch) for _ in range(3)]
            for seen in (seen_http, seen_native):
                assert [(e.type, e.revision) for e in seen] == [("put", r) for r in written]
                assert [e.value for e in seen] == [f"v{i}".encode() for i in range(1, 7)]
            http_watch.close()
            native_watch.close()
        finally:
            http.close()
            native.close()
