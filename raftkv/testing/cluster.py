"""Real `kvnode` processes on loopback, for cluster and chaos tests.

``LocalCluster`` writes a cluster file with free ports, starts one ``kvnode`` process per
node, and offers what a test needs: find the leader, kill -9, pause, terminate, restart,
and talk HTTP to any node.

With ``proxied=True`` every peer link goes through a ``FaultProxy``: the cluster file
advertises a proxy port as each node's ``rpc_addr``, the node listens on a third port
(``kvnode --rpc-listen``), and ``cluster.proxy`` can partition, delay and reset links.

With ``native=True`` every node also serves the native client protocol on a port of its
own (``kvnode --client-addr``), which ``cluster.client_addr(node_id)`` gives.

With ``tls=True`` the cluster gets a CA and node certificates (``raftkv.wire.certificates``, in
``base_dir/certs``); the peer links use mutual TLS, the HTTP ports serve HTTPS, and
``cluster.client`` and ``cluster.url()`` speak https, trusting the cluster's CA and
presenting its client certificate. ``tls_client_certs=True`` also makes the HTTPS ports
demand a client certificate.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from raftkv.testing.fault_proxy import FaultProxy
from raftkv.wire.certificates import (
    CLIENT_NAME,
    create_cluster_certs,
    issue_node,
    load_authority,
    node_file_names,
)
from raftkv.wire.tls_contexts import client_context


def free_ports(count: int) -> list[int]:
    """Ports the kernel says are free now (bound and released together, so distinct)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_until(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")


@dataclass
class NodeProcess:
    node_id: int
    http_port: int
    rpc_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)
    # Where the node really listens for peers when rpc_port is a fault proxy's port.
    listen_port: int | None = None
    # The native client port (kvnode --client-addr), when the cluster has them.
    client_port: int | None = None
    # "https" in a TLS cluster.
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.http_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class LocalCluster:
    def __init__(
        self,
        base_dir: Path,
        size: int = 3,
        *,
        storage: str = "segment",
        extra_args: Sequence[str] = (),
        proxied: bool = False,
        native: bool = False,
        tls: bool = False,
        tls_client_certs: bool = False,
    ) -> None:
        self.base_dir = base_dir
        self.tls = tls or tls_client_certs
        # The HTTPS ports also demand a client certificate (kvnode --trusted-ca-file).
        self.tls_client_certs = tls_client_certs
        self.certs_dir = base_dir / "certs"
        self.storage = storage
        self.extra_args = list(extra_args)
        self.proxied = proxied
        self.native = native
        # Every port at once: ports bound and released together are distinct.
        ports = free_ports(self._ports_per_node * size)
        self.nodes: dict[int, NodeProcess] = {}
        for i in range(1, size + 1):
            first = self._ports_per_node * (i - 1)
            http_port, rpc_port, listen_port, client_port = self._assign_ports(
                ports[first : first + self._ports_per_node]
            )
            self.nodes[i] = NodeProcess(
                node_id=i,
                http_port=http_port,
                rpc_port=rpc_port,
                data_dir=base_dir / f"node-{i}",
                log_path=base_dir / f"node-{i}.log",
                listen_port=listen_port,
                client_port=client_port,
                scheme=self._scheme,
            )
        self._proxy: FaultProxy | None = None
        if proxied:
            self._proxy = FaultProxy(
                {
                    n.node_id: (("127.0.0.1", n.rpc_port), ("127.0.0.1", n.listen_port))
                    for n in self.nodes.values()
                    if n.listen_port is not None
                }
            )
        self.cluster_file = base_dir / "cluster.json"
        self.cluster_file.write_bytes(orjson.dumps(self.cluster_document()))
        verify: ssl.SSLContext | bool = True
        if self.tls:
            create_cluster_certs(self.certs_dir, size)
            verify = client_context(self.ca_file, *self.client_cert_files)
        self.client = httpx.Client(timeout=10.0, verify=verify)

    @property
    def _scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def ca_file(self) -> Path:
        """The cluster's CA certificate (only with ``tls=True``)."""
        return self.certs_dir / "ca.pem"

    @property
    def client_cert_files(self) -> tuple[Path, Path]:
        """A client certificate and key signed by the cluster's CA (``tls=True``)."""
        return self.certs_dir / f"{CLIENT_NAME}.pem", self.certs_dir / f"{CLIENT_NAME}-key.pem"

    def tls_args(self, node_id: int) -> list[str]:
        """Node ``node_id``'s TLS flags: its certificate for both the peer links and
        HTTPS (issued now if the node is new)."""
        if not self.tls:
            return []
        cert, key = node_file_names(self.certs_dir, node_id)
        if not cert.exists():
            issue_node(load_authority(self.certs_dir), self.certs_dir, node_id)
        ca = str(self.ca_file)
        return [
            *("--peer-cert-file", str(cert), "--peer-key-file", str(key)),
            *("--peer-trusted-ca-file", ca, "--cert-file", str(cert), "--key-file", str(key)),
            *(("--trusted-ca-file", ca) if self.tls_client_certs else ()),
        ]

    @property
    def _ports_per_node(self) -> int:
        return 2 + self.proxied + self.native

    def _assign_ports(self, ports: list[int]) -> tuple[int, int, int | None, int | None]:
        """A node's HTTP and Raft ports and, when the cluster has them, the port it
        really listens on behind the proxy and its native client port."""
        http_port, rpc_port, *rest = ports
        listen_port = rest.pop(0) if self.proxied else None
        client_port = rest.pop(0) if self.native else None
        return http_port, rpc_port, listen_port, client_port

    @property
    def proxy(self) -> FaultProxy:
        """The fault proxy on every peer link (only with ``proxied=True``)."""
        if self._proxy is None:
            raise RuntimeError("this cluster was not started with proxied=True")
        return self._proxy

    def cluster_document(self) -> dict[str, Any]:
        return {
            "nodes": {
                str(n.node_id): {
                    "id": n.node_id,
                    "http_addr": f"127.0.0.1:{n.http_port}",
                    "rpc_addr": f"127.0.0.1:{n.rpc_port}",
                }
                for n in self.nodes.values()
            }
        }

    # ------------------------------------------------------------------ processes

    def command(self, node: NodeProcess) -> list[str]:
        return [
            sys.executable,
            "-P",  # never import from the working directory, only the installed package
            "-m",
            "raftkv.cli.kvnode",
            "--node-id",
            str(node.node_id),
            "--cluster",
            str(self.cluster_file),
            "--data-dir",
            str(node.data_dir),
            "--storage",
            self.storage,
            *(
                ["--rpc-listen", f"127.0.0.1:{node.listen_port}"]
                if node.listen_port is not None
                else []
            ),
            *(
                ["--client-addr", f"127.0.0.1:{node.client_port}"]
                if node.client_port is not None
                else []
            ),
            *self.tls_args(node.node_id),
            *self.extra_args,
            *node.extra_args,
        ]

    def start_node(self, node_id: int) -> None:
        node = self.nodes[node_id]
        assert not node.running, f"node {node_id} is already running"
        log = open(node.log_path, "ab")  # noqa: SIM115 - the child process owns it
        node.process = subprocess.Popen(
            self.command(node), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()

    def add_node(self, join_via: int | None = None) -> int:
        """Start a new node that asks the cluster (through ``join_via``, else the leader)
        to add it; returns its id. It serves once it has been added."""
        node_id = max(self.nodes) + 1
        http_port, rpc_port, listen_port, client_port = self._assign_ports(
            free_ports(self._ports_per_node)
        )
        via = join_via or self.leader()
        if self._proxy is not None and listen_port is not None:
            # Peers reach the new node through the proxy, like every other node.
            self._proxy.add_route(node_id, ("127.0.0.1", rpc_port), ("127.0.0.1", listen_port))
        node = NodeProcess(
            node_id=node_id,
            http_port=http_port,
            rpc_port=rpc_port,
            data_dir=self.base_dir / f"node-{node_id}",
            log_path=self.base_dir / f"node-{node_id}.log",
            extra_args=[
                "--join",
                self.url(via),
                "--http-addr",
                f"127.0.0.1:{http_port}",
                "--rpc-addr",
                f"127.0.0.1:{rpc_port}",
            ],
            listen_port=listen_port,
            client_port=client_port,
            scheme=self._scheme,
        )
        self.nodes[node_id] = node
        self.start_node(node_id)
        return node_id

    def rejoin(self, node_id: int, join_via: int | None = None) -> None:
        """Restart a node whose data directory was wiped, asking the cluster to take it
        back under its id."""
        node = self.nodes[node_id]
        via = join_via or self.leader()
        # The given node first, then every other one, so the join survives its death.
        others = [n for n in self.nodes if n not in (via, node_id)]
        node.extra_args = [
            "--join",
            ",".join(self.url(n) for n in [via, *others]),
            "--http-addr",
            f"127.0.0.1:{node.http_port}",
            "--rpc-addr",
            f"127.0.0.1:{node.rpc_port}",
        ]
        self.start_node(node_id)

    def start(self) -> None:
        """Start every node and wait for a leader; a cluster that does not come up is
        stopped again rather than left running behind the exception."""
        try:
            if self._proxy is not None:
                self._proxy.start()
            for node_id in self.nodes:
                self.start_node(node_id)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float = 30.0) -> int:
        """Every running node answers HTTP and agrees on one leader; returns its id."""
        leader: list[int] = []

        def ready() -> bool:
            seen = set()
            for node in self.nodes.values():
                if not node.running:
                    continue
                try:
                    health = self.client.get(f"{node.url}/health", timeout=1.0)
                except httpx.HTTPError:
                    return False
                if health.status_code != 200:
                    return False
                seen.add(health.json().get("leader"))
            if len(seen) == 1 and None not in seen:
                agreed = seen.pop()
                if agreed in self.nodes and self.nodes[agreed].running:
                    leader[:] = [agreed]
                    return True
            return False

        self._wait(ready, timeout, "a leader agreed on by every running node")
        return leader[0]

    def _wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            wait_until(predicate, timeout, 0.1, what)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.describe()}") from None

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        node = self.nodes[node_id]
        assert node.process is not None
        node.process.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            node.process.wait(timeout=30)
            if sig == signal.SIGKILL:
                self._kill_orphan_workers(node)

    def terminate(self, node_id: int, timeout: float = 30.0) -> int:
        """SIGTERM, wait, and return the exit code."""
        node = self.nodes[node_id]
        assert node.process is not None
        node.process.send_signal(signal.SIGTERM)
        return node.process.wait(timeout=timeout)

    def pause(self, node_id: int) -> None:
        self.kill(node_id, signal.SIGSTOP)

    def resume(self, node_id: int) -> None:
        self.kill(node_id, signal.SIGCONT)

    def _kill_orphan_workers(self, node: NodeProcess) -> None:
        """After kill -9 of a Raft process its workers notice on their own; make sure."""
        socket_path = str(node.data_dir / "raft.sock")
        for proc_dir in Path("/proc").iterdir():
            if not proc_dir.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (proc_dir / "cmdline").read_bytes().split(b"\0")
                if b"raftkv.http.worker" in cmdline and socket_path.encode() in cmdline:
                    os.kill(int(proc_dir.name), signal.SIGKILL)

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.process is None or node.process.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                node.process.send_signal(signal.SIGCONT)
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes.values():
            if node.process is None:
                continue
            try:
                node.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
                self._kill_orphan_workers(node)
        if self._proxy is not None:
            self._proxy.stop()
        self.client.close()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ HTTP

    def url(self, node_id: int) -> str:
        return self.nodes[node_id].url

    def client_addr(self, node_id: int) -> tuple[str, int]:
        """Where node ``node_id`` serves native clients (only with ``native=True``)."""
        port = self.nodes[node_id].client_port
        if port is None:
            raise RuntimeError("this cluster was not started with native=True")
        return "127.0.0.1", port

    def leader(self, timeout: float = 20.0) -> int:
        return self.wait_ready(timeout)

    def followers(self) -> list[int]:
        leader = self.leader()
        return [n for n, node in self.nodes.items() if n != leader and node.running]

    def put(self, node_id: int, key: str, value: str, **params: Any) -> httpx.Response:
        return self.client.post(
            f"{self.url(node_id)}/kv/{key}", json={"value": value}, params=params
        )

    def get(self, node_id: int, key: str, **params: Any) -> httpx.Response:
        return self.client.get(f"{self.url(node_id)}/kv/{key}", params=params)

    def status(self, node_id: int) -> dict[str, Any]:
        response = self.client.get(f"{self.url(node_id)}/cluster/status")
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def describe(self) -> str:
        lines = []
        for node in self.nodes.values():
            state = "running" if node.running else "stopped"
            tail = "\n".join(node.log_text().splitlines()[-15:])
            lines.append(f"--- node {node.node_id} ({state}), last log lines:\n{tail}")
        return "\n".join(lines)


@contextlib.contextmanager
def running_cluster(base_dir: Path, size: int = 3, **kwargs: Any) -> Iterator[LocalCluster]:
    cluster = LocalCluster(base_dir, size, **kwargs)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
