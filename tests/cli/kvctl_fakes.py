"""A stand-in for ``raftkv.client.Client`` that records calls, for in-process kvctl tests
of the commands whose server side is tested elsewhere (membership, leadership, snapshot,
backup) and of the error paths that a healthy cluster does not produce."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from raftkv.client.http_client import KeyValue, WriteResult
from raftkv.client.watch import WatchEvent

NODES = {
    "nodes": [
        {
            "id": 1,
            "httpAddr": "10.0.0.1:8001",
            "rpcAddr": "10.0.0.1:9001",
            "membership": "voter",
            "isLeader": True,
            "reachable": True,
        },
        {
            "id": 2,
            "httpAddr": "10.0.0.2:8001",
            "rpcAddr": "10.0.0.2:9001",
            "membership": "voter",
            "isLeader": False,
            "reachable": False,
            "matchIndex": 40,
            "nextIndex": 41,
        },
        {
            "id": 4,
            "httpAddr": "10.0.0.4:8001",
            "rpcAddr": "10.0.0.4:9001",
            "membership": "learner",
            "isLeader": False,
            "reachable": True,
            "matchIndex": 12,
            "nextIndex": 13,
        },
    ],
    "leader": 1,
    "term": 7,
}

STATUS = {
    "nodeId": 1,
    "role": "leader",
    "leader": 1,
    "leaderHttpAddr": "10.0.0.1:8001",
    "currentTerm": 7,
    "commitIndex": 50,
    "appliedIndex": 50,
    "lastIndex": 52,
    "liveNodes": 2,
    "totalNodes": 3,
    "electedAt": "2024-01-01T00:00:00+00:00",
    "replicationProgress": {
        "2": {"matchIndex": 40, "nextIndex": 41, "state": "probe", "lag": 12},
        "4": {"matchIndex": 12, "nextIndex": 13, "state": "snapshot", "lag": 40},
    },
}


class FakeWatch:
    """Yields ``events``, then raises ``end`` (KeyboardInterrupt: the user's Ctrl-C)."""

    def __init__(self, events: Sequence[WatchEvent], end: BaseException) -> None:
        self.events = list(events)
        self.end = end
        self.closed = False

    def __iter__(self) -> Iterator[WatchEvent]:
        yield from self.events
        raise self.end

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class FakeClient:
    """Answers like a client of a three-member cluster; ``fail[name]`` makes the method
    ``name`` raise that exception instead. ``watch`` yields ``watch_events`` and then
    raises ``watch_end``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.constructed: list[dict[str, Any]] = []
        self.credentials: list[tuple[str | None, str | None, str | None]] = []
        self.fail: dict[str, BaseException] = {}
        self.closed = False
        self.watch_events: list[WatchEvent] = []
        self.watch_end: BaseException = KeyboardInterrupt()
        self.watches: list[FakeWatch] = []

    # What kvctl calls in place of ``Client(...)``.
    def __call__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float,
        retry_for: float,
        cacert: Any = None,
        cert: Any = None,
        key: Any = None,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
    ) -> FakeClient:
        self.constructed.append(
            {"endpoints": list(endpoints), "timeout": timeout, "retry_for": retry_for}
        )
        self.credentials.append((user, password, token))
        return self

    def _record(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, args, kwargs))
        if name in self.fail:
            raise self.fail[name]

    def names(self) -> list[str]:
        return [name for name, _, _ in self.calls]

    def get(self, key: str, *, consistency: str = "linearizable") -> KeyValue:
        self._record("get", key, consistency=consistency)
        return KeyValue(key, b"v", 3, 5, 2)

    def put(self, key: str, value: bytes | str, *, prev_revision: int | None = None) -> WriteResult:
        self._record("put", key, value, prev_revision=prev_revision)
        return WriteResult(key, 9, 2, 9)

    def delete(self, key: str, *, prev_revision: int | None = None) -> WriteResult:
        self._record("delete", key, prev_revision=prev_revision)
        return WriteResult(key, 10, 2, 10)

    def list(
        self, prefix: str = "", *, limit: int = 1000, consistency: str = "linearizable"
    ) -> list[KeyValue]:
        self._record("list", prefix, limit=limit, consistency=consistency)
        return []

    def delete_prefix(self, prefix: str) -> int:
        self._record("delete_prefix", prefix)
        return 2

    def watch(
        self,
        key: str | None = None,
        *,
        prefix: str | None = None,
        since: int | None = None,
        prev: bool = False,
    ) -> FakeWatch:
        self._record("watch", key, prefix=prefix, since=since, prev=prev)
        watch = FakeWatch(self.watch_events, self.watch_end)
        self.watches.append(watch)
        return watch

    def status(self) -> dict[str, Any]:
        self._record("status")
        return dict(STATUS)

    def nodes(self) -> dict[str, Any]:
        self._record("nodes")
        return dict(NODES)

    def add_member(
        self, node_id: int, rpc_addr: str, http_addr: str, *, wait: bool = True
    ) -> dict[str, Any]:
        self._record("add_member", node_id, rpc_addr, http_addr, wait=wait)
        return {"id": node_id, "membership": "voter" if wait else "learner", "index": 61}

    def remove_member(self, node_id: int) -> dict[str, Any]:
        self._record("remove_member", node_id)
        return {"id": node_id, "index": 62}

    def transfer_leader(self, to: int | None = None) -> int:
        self._record("transfer_leader", to)
        return 2 if to is None else to

    def snapshot(self) -> dict[str, Any]:
        self._record("snapshot")
        return {"index": 52, "term": 7, "size": 4096}

    def backup(self, path: Any) -> dict[str, Any]:
        self._record("backup", path)
        Path(path).write_bytes(b"backup")
        return {"path": str(path), "index": 52, "term": 7, "size": 6, "sha256": "ab" * 32}

    def close(self) -> None:
        self.closed = True
