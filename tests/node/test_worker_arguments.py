"""The Raft process starts its workers with its own log level and format."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftkv.http.worker import parse_args
from raftkv.node.main import worker_arguments
from raftkv.node.node_config import NodeAddress, NodeConfig


@pytest.mark.parametrize(("level", "log_format"), [("debug", "json"), ("warning", "text")])
def test_workers_get_the_nodes_log_level_and_format(
    tmp_path: Path, level: str, log_format: str
) -> None:
    cluster = {2: NodeAddress(2, "127.0.0.1:8002", "127.0.0.1:9002")}
    config = NodeConfig(2, cluster, tmp_path, log_level=level, log_format=log_format)
    argv = ["--ipc-socket", str(tmp_path / "raft.sock"), "--fd", "3", *worker_arguments(config)]
    settings, args = parse_args(argv)
    assert (args.log_level, args.log_format) == (level, log_format)
    assert settings.node_id == 2


def test_a_worker_refuses_an_unknown_log_format(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--ipc-socket", "s", "--fd", "3", "--log-format", "xml"])
    assert "--log-format" in capsys.readouterr().err
