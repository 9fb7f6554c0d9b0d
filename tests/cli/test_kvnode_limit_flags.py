"""kvnode's HTTP limit flags: checked, and handed to each worker as its share."""

from __future__ import annotations

from pathlib import Path

import pytest
from kvnode_configs import config_for
from raftkv.cli import kvnode

from raftkv.http.worker import parse_args
from raftkv.node.main import worker_arguments
from raftkv.node.node_config import ConfigError
from raftkv.wire.limits import HttpLimits


def worker_view(tmp_path: Path, *flags: str) -> HttpLimits:
    """The limits one worker of a node started with ``flags`` enforces."""
    config = config_for(tmp_path, *flags)
    argv = ["--ipc-socket", str(tmp_path / "raft.sock"), "--fd", "3", *worker_arguments(config)]
    settings, _ = parse_args(argv)
    return settings.limits


def test_the_defaults_limit_everything_but_the_rate(tmp_path: Path) -> None:
    limits = config_for(tmp_path).http_limits
    assert limits == HttpLimits()
    assert limits.rate_limit is None
    assert (limits.max_connections, limits.idle_timeout_s, limits.read_timeout_s) == (
        1000,
        30.0,
        30.0,
    )
    assert (limits.max_header_bytes, limits.max_headers) == (64 * 1024, 100)
    assert worker_view(tmp_path) == HttpLimits()


def test_every_flag_reaches_a_single_worker_unchanged(tmp_path: Path) -> None:
    flags = [
        "--rate-limit", "250", "--rate-burst", "500", "--max-connections", "64",
        "--idle-timeout", "7.5", "--read-timeout", "2", "--max-header-bytes", "8192",
        "--max-headers", "20", "--max-body-bytes", "4096",
    ]  # fmt: skip
    expected = HttpLimits(
        rate_limit=250.0,
        rate_burst=500.0,
        max_connections=64,
        idle_timeout_s=7.5,
        read_timeout_s=2.0,
        max_header_bytes=8192,
        max_headers=20,
        max_body_bytes=4096,
    )
    assert config_for(tmp_path, *flags).http_limits == expected
    assert worker_view(tmp_path, *flags) == expected
    config = config_for(tmp_path, *flags)
    argv = ["--ipc-socket", "s", "--fd", "3", *worker_arguments(config)]
    assert parse_args(argv)[0].max_body_bytes == 4096


def test_each_of_several_workers_gets_an_equal_share_of_the_rate(tmp_path: Path) -> None:
    share = worker_view(tmp_path, "--workers", "4", "--rate-limit", "100", "--rate-burst", "40")
    assert (share.rate_limit, share.rate_burst) == (25.0, 10.0)
    # The other limits are per worker or per connection already.
    assert share.max_connections == 1000


def test_the_burst_defaults_to_one_seconds_worth_and_is_at_least_one(tmp_path: Path) -> None:
    assert HttpLimits(rate_limit=50).burst == 50
    assert HttpLimits(rate_limit=0.2).burst == 1
    share = worker_view(tmp_path, "--workers", "3", "--rate-limit", "1.5")
    assert share.rate_limit == pytest.approx(0.5)
    assert share.rate_burst == 1.0  # 1.5 / 3 would refuse every request


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--rate-burst", "5"], "--rate-burst needs --rate-limit"),
        (["--rate-limit", "5", "--rate-burst", "0.5"], "--rate-burst must be at least 1"),
        (["--max-header-bytes", "100"], "--max-header-bytes must be at least 1024"),
    ],
)
def test_inconsistent_limits_are_refused_with_the_flag_named(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        config_for(tmp_path, *flags)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--rate-limit", "0"),
        ("--rate-limit", "-1"),
        ("--rate-limit", "nan"),
        ("--rate-limit", "fast"),
        ("--max-connections", "0"),
        ("--idle-timeout", "inf"),
        ("--read-timeout", "-2"),
        ("--max-headers", "many"),
    ],
)
def test_bad_values_are_refused_by_the_parser(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        kvnode.build_parser().parse_args([flag, value])
    assert flag in capsys.readouterr().err


def test_the_help_lists_the_limit_flags() -> None:
    text = kvnode.build_parser().format_help()
    for flag in (
        "--rate-limit",
        "--rate-burst",
        "--max-connections",
        "--idle-timeout",
        "--read-timeout",
        "--max-header-bytes",
        "--max-headers",
        "--max-body-bytes",
    ):
        assert flag in text
