"""A one-node cluster file and the NodeConfig kvnode builds from flags, for flag tests."""

from __future__ import annotations

import json
from pathlib import Path

from raftkv.cli import kvnode

from raftkv.testing.cluster import free_ports


def cluster_file(tmp_path: Path) -> Path:
    http_port, rpc_port = free_ports(2)
    path = tmp_path / "cluster.json"
    node = {"id": 1, "http_addr": f"127.0.0.1:{http_port}", "rpc_addr": f"127.0.0.1:{rpc_port}"}
    path.write_text(json.dumps({"nodes": {"1": node}}))
    return path


def config_for(tmp_path: Path, *flags: str) -> kvnode.NodeConfig:
    args = kvnode.build_parser().parse_args(
        ["--cluster", str(cluster_file(tmp_path)), "--data-dir", str(tmp_path / "d"), *flags]
    )
    return kvnode.config_from_args(args)
