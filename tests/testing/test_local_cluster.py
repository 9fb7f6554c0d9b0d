"""LocalCluster's ports and commands (no process is started here)."""

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
