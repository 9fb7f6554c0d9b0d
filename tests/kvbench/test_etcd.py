"""The etcd baseline without etcd: how the binary is found, the command lines of the members,
the gateway bodies, the generated wrk script's text, and ``EtcdCluster`` driving real
processes of a stand-in etcd (``etcd_fakes``). The real etcd is exercised by
``python -m raftkv.kvbench.selfcheck_etcd``."""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import etcd_fakes
import pytest
from raftkv.kvbench import etcd
from raftkv.kvbench.etcd import (
    EtcdCluster,
    EtcdNotInstalledError,
    EtcdStartError,
    etcd_wrk_script,
    find_etcd,
    member_argv,
    parse_status,
    plan_members,
    put_body,
    put_template,
    range_body,
    range_template,
)
from raftkv.kvbench.key_space import WRK_DONE_LUA, bench_value, raftkv_key

# ---------------------------------------------------------------------- find_etcd


@pytest.fixture
def no_etcd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PATH with no etcd on it and no KVBENCH_ETCD."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("KVBENCH_ETCD", raising=False)


def _assert_install_instructions(message: str) -> None:
    assert "apt-get install etcd-server" in message
    assert "https://github.com/etcd-io/etcd/releases" in message
    assert "--etcd-binary PATH" in message
    assert "KVBENCH_ETCD" in message


@pytest.mark.usefixtures("no_etcd")
def test_a_missing_etcd_is_reported_with_how_to_install_it() -> None:
    with pytest.raises(EtcdNotInstalledError) as caught:
        find_etcd()
    _assert_install_instructions(str(caught.value))


@pytest.mark.usefixtures("no_etcd")
def test_an_explicit_binary_that_does_not_exist_is_named_in_the_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere" / "etcd")
    with pytest.raises(EtcdNotInstalledError) as caught:
        find_etcd(missing)
    assert missing in str(caught.value)
    _assert_install_instructions(str(caught.value))


@pytest.mark.usefixtures("no_etcd")
def test_the_cluster_reports_a_missing_etcd_before_starting_anything(tmp_path: Path) -> None:
    with pytest.raises(EtcdNotInstalledError):
        EtcdCluster(tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_etcd_is_found_explicitly_then_by_environment_then_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path = etcd_fakes.install(tmp_path / "path-bin")
    by_env = etcd_fakes.install(tmp_path / "env-bin")
    explicit = etcd_fakes.install(tmp_path / "explicit-bin")
    monkeypatch.setenv("PATH", str(on_path.parent))
    monkeypatch.delenv("KVBENCH_ETCD", raising=False)
    assert find_etcd() == str(on_path)
    monkeypatch.setenv("KVBENCH_ETCD", str(by_env))
    assert find_etcd() == str(by_env)
    assert find_etcd(str(explicit)) == str(explicit)


# ---------------------------------------------------------------------- command lines


def _flags(argv: list[str]) -> dict[str, str]:
    assert all(a.startswith("--") for a in argv[1::2]), argv
    return dict(zip(argv[1::2], argv[2::2], strict=True))


def test_each_member_gets_its_own_ports_data_dir_and_log(tmp_path: Path) -> None:
    members = plan_members(tmp_path, [2379, 2389, 2399], [2380, 2390, 2400])
    assert [m.name for m in members] == ["m1", "m2", "m3"]
    assert [m.client_url for m in members] == [
        "http://127.0.0.1:2379",
        "http://127.0.0.1:2389",
        "http://127.0.0.1:2399",
    ]
    assert members[0].peer_url == "http://127.0.0.1:2380"
    assert len({m.data_dir for m in members}) == 3
    assert all(m.data_dir.parent == tmp_path and m.log_path.parent == tmp_path for m in members)
    with pytest.raises(ValueError):
        plan_members(tmp_path, [1, 2], [3])


def test_members_bootstrap_one_static_cluster_on_loopback(tmp_path: Path) -> None:
    members = plan_members(tmp_path, [2379, 2389, 2399], [2380, 2390, 2400])
    argvs = [member_argv("/opt/etcd", m, members, token="kvbench-x") for m in members]
    for member, argv in zip(members, argvs, strict=True):
        assert argv[0] == "/opt/etcd"
        flags = _flags(argv)
        assert flags["--name"] == member.name
        assert flags["--data-dir"] == str(member.data_dir)
        assert (
            flags["--listen-client-urls"] == flags["--advertise-client-urls"] == member.client_url
        )
        assert flags["--listen-peer-urls"] == member.peer_url
        assert flags["--initial-advertise-peer-urls"] == member.peer_url
        assert flags["--initial-cluster"] == (
            "m1=http://127.0.0.1:2380,m2=http://127.0.0.1:2390,m3=http://127.0.0.1:2400"
        )
        assert flags["--initial-cluster-state"] == "new"
        assert flags["--initial-cluster-token"] == "kvbench-x"
        assert flags["--log-outputs"] == "stderr"
        # Nothing that trades durability or changes etcd's timing is ever passed.
        assert not any("unsafe" in a or "fsync" in a for a in argv)
        for tuned in ("--heartbeat-interval", "--election-timeout", "--snapshot-count"):
            assert tuned not in flags


def test_members_ignore_etcd_variables_of_the_callers_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ETCD_DATA_DIR", "/somewhere/else")
    monkeypatch.setenv("KVBENCH_KEEP", "yes")
    env = etcd._member_env()
    assert "ETCD_DATA_DIR" not in env
    assert env["KVBENCH_KEEP"] == "yes"


# ---------------------------------------------------------------------- gateway bodies


def test_put_body_carries_key_and_value_in_base64() -> None:
    body = put_body(b"k000042", b"\x00\xffvalue")
    doc = json.loads(body)
    assert set(doc) == {"key", "value"}
    assert base64.b64decode(doc["key"]) == b"k000042"
    assert base64.b64decode(doc["value"]) == b"\x00\xffvalue"
    assert b" " not in body  # compact, as the wrk script sends it


@pytest.mark.parametrize("serializable", [True, False])
def test_range_body_asks_for_the_consistency_wanted(serializable: bool) -> None:
    doc = json.loads(range_body(b"k000007", serializable=serializable))
    assert base64.b64decode(doc["key"]) == b"k000007"
    # Linearizable is the default of the protocol: the field is left out, never false.
    assert doc.get("serializable") is (True if serializable else None)


@pytest.mark.parametrize("key", [b"k000000", b"k099999", b"k1234567", b"", b"\xff\x00x"])
def test_templates_rebuild_the_python_bodies_exactly(key: bytes) -> None:
    encoded = base64.b64encode(key).decode()
    prefix, suffix = put_template(bench_value(100))
    assert (prefix + encoded + suffix).encode() == put_body(key, bench_value(100))
    for serializable in (True, False):
        prefix, suffix = range_template(serializable=serializable)
        assert (prefix + encoded + suffix).encode() == range_body(key, serializable=serializable)


def test_status_fields_are_read_from_etcd_34_json() -> None:
    # As etcd 3.4.23 answers POST /v3/maintenance/status.
    answer = json.loads(
        '{"header":{"cluster_id":"15118495548433857066","member_id":"13668033151171901709",'
        '"revision":"1","raft_term":"2"},"version":"3.4.23","dbSize":"20480",'
        '"leader":"13668033151171901709","raftIndex":"4","raftTerm":"2",'
        '"raftAppliedIndex":"4","dbSizeInUse":"16384"}'
    )
    status = parse_status(answer)
    assert status.member_id == status.leader == 13668033151171901709
    assert status.raft_term == 2 and status.raft_index == 4
    # proto3 JSON leaves zero values out: a member that knows no leader.
    assert parse_status({"header": {"member_id": "5"}}).leader == 0


# ---------------------------------------------------------------------- the wrk script


def _lua_constant(script: str, name: str) -> str:
    """The value of ``local NAME = "..."`` in ``script``, escapes decoded."""
    match = re.search(rf'^local {name} = "((?:[^"\\]|\\\d{{3}})*)"$', script, re.MULTILINE)
    assert match is not None, name
    raw = match.group(1)
    return re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1))), raw)


def _lua_blocks_balance(code: str) -> bool:
    """Every function/if/for/while has its ``end`` (strings and comments left out)."""
    code = re.sub(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'", '""', code)
    code = re.sub(r"--[^\n]*", "", code)
    opened = len(re.findall(r"\b(?:function|if|for|while)\b", code))
    return opened == len(re.findall(r"\bend\b", code))


@pytest.mark.parametrize("serializable", [True, False])
def test_the_script_sends_the_python_bodies_to_the_gateway_paths(serializable: bool) -> None:
    script = etcd_wrk_script(
        keys=100_000, value_size=100, read_fraction=0.25, serializable=serializable, seed=9
    )
    assert _lua_constant(script, "PUT_PATH") == "/v3/kv/put"
    assert _lua_constant(script, "RANGE_PATH") == "/v3/kv/range"
    assert _lua_constant(script, "KEY_FORMAT") % 42 == raftkv_key(42)
    assert (
        _lua_constant(script, "PUT_PREFIX"),
        _lua_constant(script, "PUT_SUFFIX"),
    ) == put_template(bench_value(100))
    assert (
        _lua_constant(script, "RANGE_PREFIX"),
        _lua_constant(script, "RANGE_SUFFIX"),
    ) == range_template(serializable=serializable)
    assert "local KEYS = 100000\n" in script
    assert "local READ_FRACTION = 0.25\n" in script
    assert "local SEED = 9\n" in script
    assert '["Content-Type"] = "application/json"' in script


def test_the_script_reports_through_the_shared_done() -> None:
    script = etcd_wrk_script(keys=10, value_size=1, read_fraction=0.0, serializable=False, seed=0)
    assert script.endswith(WRK_DONE_LUA)
    for function in ("setup", "response", "done"):
        # Defined once, by the shared code: a second definition would replace it.
        assert script.count(f"function {function}(") == 1
    assert "function request()" in script and "function init(" in script
    assert _lua_blocks_balance(script)


@pytest.mark.parametrize(
    "bad",
    [
        {"keys": 0},
        {"value_size": -1},
        {"read_fraction": 1.5},
        {"read_fraction": -0.1},
    ],
)
def test_the_script_refuses_impossible_workloads(bad: dict[str, float]) -> None:
    args: dict[str, float] = {"keys": 10, "value_size": 1, "read_fraction": 0.5} | bad
    with pytest.raises(ValueError):
        etcd_wrk_script(
            keys=int(args["keys"]),
            value_size=int(args["value_size"]),
            read_fraction=args["read_fraction"],
            serializable=True,
            seed=0,
        )


# ---------------------------------------------------------------------- EtcdCluster


@pytest.fixture
def fake_etcd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.delenv("KVBENCH_FAKE_MODE", raising=False)
    monkeypatch.setenv("KVBENCH_FAKE_ARGV_DIR", str(tmp_path))
    yield etcd_fakes.install(tmp_path / "bin")


def test_a_cluster_starts_finds_its_leader_and_counts_terms(
    fake_etcd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    term_file = tmp_path / "term"
    term_file.write_text("2")
    monkeypatch.setenv("KVBENCH_FAKE_TERM_FILE", str(term_file))
    cluster = EtcdCluster(tmp_path / "runs", binary=str(fake_etcd))
    with cluster:
        urls = cluster.client_urls()
        assert len(urls) == 3 and all(u.startswith("http://127.0.0.1:") for u in urls)
        assert cluster.leader_url() == urls[0]  # the fake names m1 leader
        assert cluster.raft_term() == 2
        assert cluster.leader_changes_since_start() == 0
        term_file.write_text("5")
        assert cluster.leader_changes_since_start() == 3
        # Each member ran with the argv member_argv builds for it.
        tokens = set()
        for member in cluster.members:
            sent = json.loads((tmp_path / f"{member.name}.json").read_text())
            token = dict(zip(sent[0::2], sent[1::2], strict=True))["--initial-cluster-token"]
            tokens.add(token)
            assert sent == member_argv(cluster.binary, member, cluster.members, token=token)[1:]
            assert member.log_path.read_text().startswith(f"fake etcd {member.name}")
        assert len(tokens) == 1 and tokens.pop().startswith("kvbench-")
        assert cluster.run_dir is not None and cluster.run_dir.parent == tmp_path / "runs"
        pids = cluster.pids()
        assert len(pids) == 3
    assert cluster.statuses() == {}  # stopped: nobody answers
    assert cluster.pids() == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    cluster.stop()  # a second stop is harmless


def test_a_member_that_fails_at_start_is_reported_with_its_log(
    fake_etcd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVBENCH_FAKE_MODE", "exit")
    cluster = EtcdCluster(tmp_path, binary=str(fake_etcd))
    with pytest.raises(EtcdStartError) as caught:
        cluster.start(timeout=20)
    message = str(caught.value)
    assert "exited with 1" in message
    assert "flag provided but not defined" in message  # the tail of the member's log
    cluster.stop()


def test_a_cluster_that_never_answers_times_out_and_is_stopped(
    fake_etcd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVBENCH_FAKE_MODE", "mute")
    cluster = EtcdCluster(tmp_path, size=1, binary=str(fake_etcd))
    with pytest.raises(EtcdStartError, match=r"not ready after 1\.5s"):
        cluster.start(timeout=1.5)
    assert cluster.pids() == []  # stopped, nothing left running


def test_a_cluster_not_started_has_no_urls(fake_etcd: Path, tmp_path: Path) -> None:
    cluster = EtcdCluster(tmp_path, binary=str(fake_etcd))
    with pytest.raises(RuntimeError, match="never started"):
        cluster.client_urls()
    cluster.stop()  # stopping what never ran is harmless
    with pytest.raises(ValueError):
        EtcdCluster(tmp_path, size=0, binary=str(fake_etcd))
