"""kvnode's tuning flags reach the node's configuration, and bad values are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from kvnode_configs import config_for
from raftkv.cli import kvnode

from raftkv.node.node_config import ConfigError


def test_max_inflight_defaults_to_sixteen_and_takes_the_flag(tmp_path: Path) -> None:
    assert config_for(tmp_path).max_inflight == 16
    assert config_for(tmp_path, "--max-inflight", "1").max_inflight == 1


@pytest.mark.parametrize("depth", ["0", "-3", "5000"])
def test_a_bad_max_inflight_is_refused(tmp_path: Path, depth: str) -> None:
    with pytest.raises(ConfigError, match="--max-inflight must be between 1 and 1024"):
        config_for(tmp_path, "--max-inflight", depth)


def test_the_help_names_the_pipeline_depth() -> None:
    assert "--max-inflight" in kvnode.build_parser().format_help()
