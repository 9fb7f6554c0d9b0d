"""`kvnode --log-format` and `--log-level` reach the node's configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
from kvnode_configs import config_for
from raftkv.cli import kvnode


def test_logs_are_text_at_info_unless_asked_otherwise(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    assert (config.log_format, config.log_level) == ("text", "info")


def test_log_flags_reach_the_config(tmp_path: Path) -> None:
    config = config_for(tmp_path, "--log-format", "json", "--log-level", "debug")
    assert (config.log_format, config.log_level) == ("json", "debug")


def test_an_unknown_log_format_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        config_for(tmp_path, "--log-format", "xml")
    assert "--log-format" in capsys.readouterr().err


def test_dev_cluster_nodes_get_the_log_format(tmp_path: Path) -> None:
    args = kvnode.build_parser().parse_args(["--log-format", "json", "dev"])
    command = kvnode.dev_node_command(args, 1, tmp_path / "cluster.json", tmp_path)
    at = command.index("--log-format")
    assert command[at + 1] == "json"
