"""`kvnode --client-addr`: the native client port, from the flag to a listening socket."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from kvnode_configs import cluster_file, config_for
from raftkv.cli import kvnode

from raftkv.node.node_config import ConfigError
from raftkv.testing.cluster import free_ports


def test_the_native_port_is_off_unless_asked_for(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    assert config.client_addr is None and config.client_host_port is None


def test_client_addr_reaches_the_node_config(tmp_path: Path) -> None:
    config = config_for(tmp_path, "--client-addr", "[::1]:7001")
    assert config.client_addr == "[::1]:7001"
    assert config.client_host_port == ("::1", 7001)


@pytest.mark.parametrize("address", ["7001", "localhost", "host:port", "127.0.0.1:70000"])
def test_a_bad_client_addr_is_refused_with_the_flag_named(tmp_path: Path, address: str) -> None:
    with pytest.raises(ConfigError, match=r"--client-addr: address .* is not host:port"):
        config_for(tmp_path, "--client-addr", address)


def test_a_dev_cluster_gives_each_node_a_client_port(tmp_path: Path) -> None:
    args = kvnode.build_parser().parse_args(["dev", "--client-port", "7101"])
    command = kvnode.dev_node_command(args, 3, tmp_path / "cluster.json", tmp_path)
    at = command.index("--client-addr")
    assert command[at + 1] == "127.0.0.1:7103"
    off = kvnode.build_parser().parse_args(["dev", "--client-port", "0"])
    assert "--client-addr" not in kvnode.dev_node_command(off, 1, tmp_path / "c.json", tmp_path)


def test_a_client_port_in_use_stops_the_node_with_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        finished = subprocess.run(
            [
                sys.executable,
                "-P",  # only the installed package, never the working directory
                "-m",
                "raftkv.cli.kvnode",
                "--cluster",
                str(cluster_file(tmp_path)),
                "--data-dir",
                str(tmp_path / "data"),
                "--client-addr",
                f"127.0.0.1:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert finished.returncode == 1, finished.stderr
    assert f"cannot listen for native clients on 127.0.0.1:{port}" in finished.stderr


def test_sigterm_to_a_dev_cluster_stops_its_nodes(tmp_path: Path) -> None:
    http_port, rpc_port, client_port = free_ports(3)
    supervisor = subprocess.Popen(
        [
            sys.executable,
            "-P",
            "-m",
            "raftkv.cli.kvnode",
            "dev",
            "--nodes",
            "1",
            "--http-port",
            str(http_port),
            "--rpc-port",
            str(rpc_port),
            "--client-port",
            str(client_port),
            "--dir",
            str(tmp_path / "dev"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    node_pids: list[int] = []
    try:
        assert supervisor.stdout is not None
        assert "dev cluster of 1 nodes" in supervisor.stdout.readline()
        node_pids = _children(supervisor.pid)
        assert len(node_pids) == 1
        _wait_until_healthy(f"http://127.0.0.1:{http_port}/health")
        supervisor.terminate()
        assert supervisor.wait(timeout=60) == 0
        assert all(not Path(f"/proc/{pid}").exists() for pid in node_pids)
    finally:
        for pid in node_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def _wait_until_healthy(url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{url} never answered 200"
        time.sleep(0.1)
