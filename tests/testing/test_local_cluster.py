"""LocalCluster: ports and commands, and a start that fails cleans up after itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftkv.testing.cluster import LocalCluster


def test_a_native_cluster_gives_every_node_a_client_port(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, 3, native=True, proxied=True)
    try:
        ports = [
            port
            for node in cluster.nodes.values()
            for port in (node.http_port, node.rpc_port, node.listen_port, node.client_port)
        ]
        assert None not in ports and len(set(ports)) == 12
        for node_id, node in cluster.nodes.items():
            assert cluster.client_addr(node_id) == ("127.0.0.1", node.client_port)
            command = cluster.command(node)
            assert command[command.index("--client-addr") + 1] == f"127.0.0.1:{node.client_port}"
            assert "--rpc-listen" in command
    finally:
        cluster.client.close()


def test_a_plain_cluster_has_no_client_ports(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, 3)
    try:
        assert all(node.client_port is None for node in cluster.nodes.values())
        assert "--client-addr" not in cluster.command(cluster.nodes[1])
        with pytest.raises(RuntimeError, match="native=True"):
            cluster.client_addr(1)
    finally:
        cluster.client.close()


def test_a_cluster_that_does_not_come_up_is_stopped_not_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster = LocalCluster(tmp_path, 3)

    def never_ready(timeout: float = 30.0) -> int:
        raise TimeoutError("no leader")

    monkeypatch.setattr(cluster, "wait_ready", never_ready)
    with pytest.raises(TimeoutError, match="no leader"):
        cluster.start()
    processes = [node.process for node in cluster.nodes.values()]
    assert all(p is not None and p.poll() is not None for p in processes)
