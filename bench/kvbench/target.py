"""The raftkv cluster under test: one kvbench starts on loopback (real ``kvnode``
processes, fsync on, in a temporary directory) or one already running that it targets.
It answers where the leader is and how many elections happened, so a run can report
leader changes."""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from raftkv.node.node_config import split_host_port
from raftkv.testing.cluster import LocalCluster


class RaftkvCluster:
    def __init__(
        self,
        *,
        nodes: int = 3,
        endpoints: list[str] | None = None,
        native_endpoints: list[str] | None = None,
        extra_args: list[str] | None = None,
        base_dir: Path | None = None,
    ) -> None:
        self.size = nodes if not endpoints else len(endpoints)
        self._endpoints = [e.rstrip("/") for e in endpoints or []]
        self._native = [split_host_port(e) for e in native_endpoints or []]
        self._extra_args = extra_args or []
        self._base_dir = base_dir
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        self.local: LocalCluster | None = None
        self._client = httpx.Client(timeout=10.0)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._endpoints:
            return
        if self._base_dir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="kvbench-")
            self._base_dir = Path(self._tempdir.name)
        self.local = LocalCluster(
            self._base_dir, self.size, extra_args=self._extra_args, native=True
        )
        self.local.start()

    def stop(self) -> None:
        if self.local is not None:
            self.local.stop()
            self.local = None
        if self._tempdir is not None:
            self._tempdir.cleanup()
            self._tempdir = None
        self._client.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ where things are

    def urls(self) -> list[str]:
        if self.local is not None:
            return [self.local.url(n) for n in sorted(self.local.nodes)]
        return list(self._endpoints)

    def _status(self) -> dict[str, object]:
        last: Exception | None = None
        for url in self.urls():
            try:
                response = self._client.get(f"{url}/cluster/status", params={"local": "true"})
                if response.status_code == 200:
                    status: dict[str, object] = response.json()
                    if status.get("leader"):
                        return status
            except httpx.HTTPError as exc:
                last = exc
        raise RuntimeError(f"no node of {self.urls()} knows a leader ({last})")

    def leader_id(self) -> int:
        return int(str(self._status()["leader"]))

    def term(self) -> int:
        """The highest term any node reports: each election raises it by at least one."""
        terms = []
        for url in self.urls():
            try:
                status = self._client.get(f"{url}/cluster/status", params={"local": "true"}).json()
                terms.append(int(status["currentTerm"]))
            except (httpx.HTTPError, KeyError, ValueError):
                continue
        return max(terms, default=0)

    def leader_url(self) -> str:
        leader = self.leader_id()
        if self.local is not None:
            return self.local.url(leader)
        nodes = self._client.get(f"{self.urls()[0]}/cluster/nodes").json()["nodes"]
        for node in nodes:
            if node["id"] == leader:
                return f"http://{node['httpAddr']}"
        raise RuntimeError(f"leader {leader} is not in /cluster/nodes")

    def native_addr(self, *, leader: bool = True) -> tuple[str, int]:
        """Where to send native-protocol load: the leader's client port (a follower
        forwards writes, which would add a hop to every request)."""
        if self.local is not None:
            node = self.leader_id() if leader else min(self.local.nodes)
            return self.local.client_addr(node)
        if not self._native:
            raise RuntimeError("the native protocol needs --native-endpoints HOST:PORT,...")
        if leader and len(self._native) == len(self._endpoints):
            return self._native[self.urls().index(self.leader_url())]
        return self._native[0]

    def raft_pids(self) -> dict[int, int]:
        """Node id → pid of its Raft process (only for a cluster kvbench started)."""
        if self.local is None:
            return {}
        pids = {}
        for node_id, node in self.local.nodes.items():
            if node.process is not None and node.process.poll() is None:
                pids[node_id] = node.process.pid
        return pids
