"""kvctl as scripts use it: a subprocess against a real 3-node cluster, plus in-process
runs with a fake client for the membership, backup and restore commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kvctl_fakes import FakeClient
from raftkv.cli import context, kvctl

from raftkv.client.http_client import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    RaftkvError,
    UnavailableError,
)
from raftkv.node.node_config import NodeAddress
from raftkv.testing.cluster import LocalCluster, free_ports, running_cluster

# ---------------------------------------------------------------------- helpers


@dataclass
class Run:
    code: int
    stdout: bytes
    stderr: str

    @property
    def out(self) -> str:
        return self.stdout.decode()

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_kvctl(endpoints: str | None, *args: str, stdin: bytes = b"", timeout: float = 30.0) -> Run:
    env = dict(os.environ)
    env.pop("RAFTKV_ENDPOINTS", None)
    if endpoints is not None:
        env["RAFTKV_ENDPOINTS"] = endpoints
    done = subprocess.run(
        [sys.executable, "-P", "-m", "raftkv.cli.kvctl", *args],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr.decode())


def assert_error(run: Run, code: int, *fragments: str) -> None:
    """Exit ``code``, nothing on stdout, one readable line on stderr, no traceback."""
    assert run.code == code, (run.code, run.stderr)
    assert run.stdout == b""
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("kvctl: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("kvctl"), 3) as running:
        yield running


@pytest.fixture(scope="module")
def endpoints(cluster: LocalCluster) -> str:
    return ",".join(cluster.url(node_id) for node_id in cluster.nodes)


def closed_port_url() -> str:
    (port,) = free_ports(1)
    return f"http://127.0.0.1:{port}"


# ---------------------------------------------------------------------- keys


def test_set_get_delete(endpoints: str) -> None:
    stored = run_kvctl(endpoints, "set", "app/greeting", "hello world")
    assert stored.code == 0, stored.stderr
    assert stored.out.startswith("set 'app/greeting' at revision ")
    revision = int(stored.out.split()[-1])

    got = run_kvctl(endpoints, "get", "app/greeting")
    assert got.code == 0, got.stderr
    assert got.stdout == b"hello world"  # raw: no newline added when piped

    stale = run_kvctl(endpoints, "get", "app/greeting", "--stale")
    assert stale.code == 0 and stale.stdout == b"hello world"

    meta = run_kvctl(endpoints, "--json", "get", "app/greeting").json()
    assert meta == {
        "key": "app/greeting",
        "value": "hello world",
        "create_revision": revision,
        "mod_revision": revision,
        "version": 1,
    }

    deleted = run_kvctl(endpoints, "delete", "app/greeting")
    assert deleted.code == 0, deleted.stderr
    assert deleted.out.startswith("deleted 'app/greeting' at revision ")
    assert_error(run_kvctl(endpoints, "get", "app/greeting"), 3, "'app/greeting' not found")
    assert_error(run_kvctl(endpoints, "delete", "app/greeting"), 3, "not found")


def test_value_from_stdin_keeps_bytes(endpoints: str) -> None:
    blob = b"\x00\xffbinary\nsecond line\n"
    stored = run_kvctl(endpoints, "--json", "set", "app/blob", "-", stdin=blob)
    assert stored.code == 0, stored.stderr
    result = stored.json()
    assert set(result) == {"key", "revision", "index", "term"}
    assert result["key"] == "app/blob" and result["revision"] == result["index"]

    assert run_kvctl(endpoints, "get", "app/blob").stdout == blob
    meta = run_kvctl(endpoints, "--json", "get", "app/blob").json()
    assert "value" not in meta
    import base64

    assert base64.b64decode(meta["value_base64"]) == blob


def test_list_shows_a_table(endpoints: str) -> None:
    revisions = {}
    for key, value in [("ls/a", "1"), ("ls/b", "x" * 100), ("ls/c", "two\nlines"), ("lt", "0")]:
        revisions[key] = run_kvctl(endpoints, "--json", "set", key, value).json()["revision"]
    run_kvctl(endpoints, "set", "ls/a", "again")

    listing = run_kvctl(endpoints, "list", "ls/")
    assert listing.code == 0, listing.stderr
    lines = listing.out.splitlines()
    assert lines[0].split() == ["KEY", "VALUE", "REVISION", "VERSION"]
    rows = [line.split() for line in lines[1:]]
    assert [row[0] for row in rows] == ["ls/a", "ls/b", "ls/c"]
    assert rows[0][1] == "again" and rows[0][-1] == "2"
    assert rows[1][1] == "x" * 39 + "…"  # truncated to 40 columns
    assert rows[1][2] == str(revisions["ls/b"])
    assert rows[2][1] == "two\\nlines"  # one row per key, control characters escaped

    limited = run_kvctl(endpoints, "list", "ls/", "--limit", "2")
    assert len(limited.out.splitlines()) == 3
    assert limited.stderr == "kvctl: the first 2 keys; there may be more: raise --limit\n"

    document = run_kvctl(endpoints, "--json", "list", "ls/").json()
    assert document["count"] == 3
    assert [item["key"] for item in document["items"]] == ["ls/a", "ls/b", "ls/c"]
    assert document["items"][2]["value"] == "two\nlines"

    empty = run_kvctl(endpoints, "list", "no-such-prefix/")
    assert empty.code == 0 and empty.out == "(no keys)\n"


def test_clean_deletes_a_prefix(endpoints: str) -> None:
    for key in ("tmp/1", "tmp/2", "tmp/3", "tmpx"):
        assert run_kvctl(endpoints, "set", key, "v").code == 0
    cleaned = run_kvctl(endpoints, "clean", "tmp/")
    assert cleaned.code == 0, cleaned.stderr
    assert cleaned.out == "deleted 3 keys with prefix 'tmp/'\n"
    assert run_kvctl(endpoints, "list", "tmp/").out == "(no keys)\n"
    assert run_kvctl(endpoints, "get", "tmpx").stdout == b"v"

    assert run_kvctl(endpoints, "--json", "clean", "tmpx").json() == {
        "prefix": "tmpx",
        "deleted": 1,
    }


def test_clean_everything_needs_yes(endpoints: str) -> None:
    assert run_kvctl(endpoints, "set", "keep/me", "1").code == 0
    refused = run_kvctl(endpoints, "clean", "")
    assert_error(refused, 2, "--yes")
    assert run_kvctl(endpoints, "get", "keep/me").stdout == b"1"

    cleaned = run_kvctl(endpoints, "clean", "", "--yes")
    assert cleaned.code == 0, cleaned.stderr
    assert cleaned.out.startswith("deleted ") and "(the whole store)" in cleaned.out
    assert run_kvctl(endpoints, "list").out == "(no keys)\n"


def test_status_table(cluster: LocalCluster, endpoints: str) -> None:
    leader = cluster.leader()
    shown = run_kvctl(endpoints, "status")
    assert shown.code == 0, shown.stderr
    text = shown.out
    assert f"leader:  {leader} (127.0.0.1:{cluster.nodes[leader].http_port})" in text
    assert "nodes:   3 of 3 reachable" in text
    header, *rows = text.split("\n\n")[1].splitlines()
    assert header.split() == ["ID", "HTTP", "ROLE", "MATCH", "LAG", "REPLICATION"]
    roles = {int(row.split()[0]): row.split()[2] for row in rows}
    assert roles == {n: ("leader" if n == leader else "follower") for n in cluster.nodes}

    document = run_kvctl(endpoints, "--json", "status").json()
    assert document["leader"] == leader
    assert document["currentTerm"] >= 1
    assert sorted(node["id"] for node in document["nodes"]) == [1, 2, 3]
    assert set(document["replicationProgress"]) == {str(n) for n in cluster.nodes if n != leader}


def test_members_list_on_a_real_cluster(cluster: LocalCluster, endpoints: str) -> None:
    listing = run_kvctl(endpoints, "members", "list")
    assert listing.code == 0, listing.stderr
    header, *rows = listing.out.splitlines()
    assert header.split() == ["ID", "HTTP", "RPC", "MEMBERSHIP", "ROLE", "REACHABLE"]
    assert [row.split()[0] for row in rows] == ["1", "2", "3"]
    assert all(row.split()[3] == "voter" for row in rows)


def test_backup_then_restore(tmp_path: Path, cluster: LocalCluster, endpoints: str) -> None:
    assert run_kvctl(endpoints, "set", "backup/me", "safe").code == 0
    backup = tmp_path / "store.backup"
    written = run_kvctl(endpoints, "--json", "backup", str(backup))
    assert written.code == 0, written.stderr
    document = written.json()
    assert document["path"] == str(backup) and document["size"] == backup.stat().st_size > 0

    restored = run_kvctl(
        None,
        "restore",
        "--from",
        str(backup),
        "--data-dir",
        str(tmp_path / "node-2"),
        "--node-id",
        "2",
        "--cluster",
        str(cluster.cluster_file),
    )
    assert restored.code == 0, restored.stderr
    assert "as node 2 of a 3-node cluster" in restored.out
    assert f"kvnode --node-id 2 --cluster {cluster.cluster_file}" in restored.out
    assert (tmp_path / "node-2" / "raft_state.json").exists()


# ---------------------------------------------------------------------- exit codes


def test_conflict_exits_4(endpoints: str) -> None:
    first = run_kvctl(endpoints, "--json", "set", "cas/key", "v1", "--prev-revision", "0")
    assert first.code == 0, first.stderr
    revision = first.json()["revision"]

    assert_error(
        run_kvctl(endpoints, "set", "cas/key", "v2", "--prev-revision", "0"),
        4,
        f"'cas/key' is at revision {revision}",
    )
    assert_error(
        run_kvctl(endpoints, "set", "cas/key", "v2", "--prev-revision", str(revision + 100)),
        4,
        "conflict",
    )
    assert_error(
        run_kvctl(endpoints, "delete", "cas/key", "--prev-revision", str(revision + 100)), 4
    )
    assert run_kvctl(endpoints, "get", "cas/key").stdout == b"v1"

    swapped = run_kvctl(endpoints, "set", "cas/key", "v2", "--prev-revision", str(revision))
    assert swapped.code == 0, swapped.stderr
    assert run_kvctl(endpoints, "get", "cas/key").stdout == b"v2"


def test_unavailable_exits_5() -> None:
    dead = f"{closed_port_url()},{closed_port_url()}"
    read = run_kvctl(dead, "--timeout", "1", "get", "anything")
    assert_error(read, 5, "unavailable", "Connection refused")
    # A write refused at connect time certainly did not happen.
    write = run_kvctl(dead, "--timeout", "1", "set", "k", "v")
    assert_error(write, 5, "it was not applied")
    assert "may have been applied" not in write.stderr


def test_bad_request_exits_6(endpoints: str) -> None:
    assert_error(run_kvctl(endpoints, "get", ""), 6, "bad request", "empty")
    assert_error(run_kvctl(endpoints, "set", "k" * 5000, "v"), 6, "4096")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["frobnicate"], "No such command 'frobnicate'"),
        (["set", "only-a-key"], "Missing argument 'VALUE'"),
        (["list", "--limit", "0"], "--limit"),
        (["get", "k", "--bogus"], "--bogus"),
        (["--timeout", "soon", "get", "k"], "--timeout"),
        (["--endpoints", "ftp://x", "get", "k"], "bad endpoint"),
        (["members", "add", "4", "--http-addr", "h:1"], "--rpc-addr"),
    ],
)
def test_usage_errors_exit_2(args: list[str], fragment: str) -> None:
    assert_error(run_kvctl(closed_port_url(), *args), 2, fragment)


def test_help_documents_the_exit_codes() -> None:
    shown = run_kvctl(None, "--help")
    assert shown.code == 0
    text = shown.out
    assert "Exit codes:" in text
    for line in (
        "0  success",
        "1  unexpected error",
        "2  usage error",
        "3  key not found",
        "4  conflict",
        "5  unavailable",
        "6  bad request",
    ):
        assert line in text, line
    for command in (
        "get",
        "set",
        "delete",
        "list",
        "clean",
        "status",
        "members",
        "transfer-leader",
        "snapshot",
        "backup",
        "restore",
        "shell",
    ):
        assert f"\n  {command} " in text, command


# ---------------------------------------------------------------------- failover


def test_failover_past_a_dead_endpoint(cluster: LocalCluster, endpoints: str) -> None:
    with_dead = f"{closed_port_url()},{endpoints}"
    assert run_kvctl(with_dead, "--timeout", "5", "set", "fo/key", "v").code == 0
    got = run_kvctl(with_dead, "--timeout", "5", "get", "fo/key")
    assert got.code == 0 and got.stdout == b"v"

    # The flag wins over the environment.
    flag = run_kvctl(closed_port_url(), "--endpoints", with_dead, "get", "fo/key")
    assert flag.code == 0 and flag.stdout == b"v"


def test_failover_past_a_killed_node(cluster: LocalCluster, endpoints: str) -> None:
    """Runs last: it stops a node and brings it back."""
    follower = cluster.followers()[0]
    others = [cluster.url(n) for n in cluster.nodes if n != follower]
    cluster.kill(follower)
    try:
        killed_first = ",".join([cluster.url(follower), *others])
        stored = run_kvctl(killed_first, "--timeout", "10", "set", "fo/after-kill", "yes")
        assert stored.code == 0, stored.stderr
        got = run_kvctl(killed_first, "--timeout", "10", "get", "fo/after-kill")
        assert got.stdout == b"yes"
    finally:
        cluster.start_node(follower)
        cluster.wait_ready()


# ---------------------------------------------------------------------- fake client


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    client = FakeClient()
    monkeypatch.setattr(context, "Client", client)
    monkeypatch.delenv("RAFTKV_ENDPOINTS", raising=False)
    return client


def call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = kvctl.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_global_options_reach_the_client(
    fake: FakeClient, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, _ = call(capsys, "--endpoints", " a:1, http://b:2/ ,", "--timeout", "3", "status")
    assert code == 0
    assert fake.constructed == [
        {"endpoints": ["http://a:1", "http://b:2"], "timeout": 3.0, "retry_for": 3.0}
    ]
    assert fake.closed

    monkeypatch.setenv("RAFTKV_ENDPOINTS", "c:3")
    call(capsys, "status")
    # A long overall timeout still keeps each request short, so failover stays quick.
    assert fake.constructed[-1] == {"endpoints": ["http://c:3"], "timeout": 5.0, "retry_for": 15.0}

    monkeypatch.delenv("RAFTKV_ENDPOINTS")
    call(capsys, "status")
    assert fake.constructed[-1]["endpoints"] == ["http://127.0.0.1:8001"]


def test_status_with_a_lagging_follower_and_a_learner(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = call(capsys, "status")
    assert code == 0
    assert out.splitlines()[:4] == [
        "leader:  1 (10.0.0.1:8001)",
        "term:    7",
        "nodes:   2 of 3 reachable",
        "commit:  50  applied: 50  last: 52",
    ]
    table = out.split("\n\n")[1].splitlines()
    assert table == [
        "ID  HTTP           ROLE      MATCH  LAG  REPLICATION",
        " 1  10.0.0.1:8001  leader       52    0  -",
        " 2  10.0.0.2:8001  follower     40   12  probe",
        " 4  10.0.0.4:8001  learner      12   40  snapshot",
    ]


def test_members_list(fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = call(capsys, "members", "list")
    assert code == 0
    assert out.splitlines() == [
        "ID  HTTP           RPC            MEMBERSHIP  ROLE      REACHABLE",
        " 1  10.0.0.1:8001  10.0.0.1:9001  voter       leader    yes",
        " 2  10.0.0.2:8001  10.0.0.2:9001  voter       follower  no",
        " 4  10.0.0.4:8001  10.0.0.4:9001  learner     learner   yes",
    ]
    code, out, _ = call(capsys, "--json", "members", "list")
    assert json.loads(out)["nodes"][2]["membership"] == "learner"


def test_members_add(fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = call(
        capsys,
        "members",
        "add",
        "5",
        "--rpc-addr",
        "10.0.0.5:9001",
        "--http-addr",
        "10.0.0.5:8001",
    )
    assert code == 0
    assert fake.calls == [("add_member", (5, "10.0.0.5:9001", "10.0.0.5:8001"), {"wait": True})]
    assert out.splitlines()[0] == "added node 5 (rpc 10.0.0.5:9001, http 10.0.0.5:8001)"
    assert "  membership: voter" in out.splitlines()

    code, out, _ = call(
        capsys,
        "--json",
        "members",
        "add",
        "6",
        "--rpc-addr",
        "h:2",
        "--http-addr",
        "h:1",
        "--no-wait",
    )
    assert code == 0
    assert fake.calls[-1] == ("add_member", (6, "h:2", "h:1"), {"wait": False})
    assert json.loads(out) == {"id": 6, "membership": "learner", "index": 61}


@pytest.mark.parametrize(
    "args",
    [
        ["members", "add", "5", "--rpc-addr", "nohost", "--http-addr", "h:1"],
        ["members", "add", "5", "--rpc-addr", "h:2", "--http-addr", "h:99999"],
        ["members", "add", "0", "--rpc-addr", "h:2", "--http-addr", "h:1"],
        ["members", "add", "--rpc-addr", "h:2", "--http-addr", "h:1"],
        ["members", "remove", "x"],
        ["members", "remove"],
        ["members", "promote", "3"],
        ["transfer-leader", "-1"],
        ["backup"],
        ["restore", "--data-dir", "d", "--node-id", "1", "--cluster", "c.json"],
    ],
)
def test_admin_usage_errors_make_no_call(
    fake: FakeClient, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    code, out, err = call(capsys, *args)
    assert code == 2
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("kvctl: ")
    assert fake.calls == []


def test_members_remove(fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = call(capsys, "members", "remove", "4")
    assert code == 0
    assert fake.calls == [("remove_member", (4,), {})]
    assert out.splitlines()[0] == "removed node 4"

    fake.fail["remove_member"] = NotFoundError("node 9 is not a member", status=404)
    code, out, err = call(capsys, "members", "remove", "9")
    assert (code, out, err) == (3, "", "kvctl: not found: node 9 is not a member\n")

    fake.fail["remove_member"] = ConflictError("a membership change is in progress")
    code, _, err = call(capsys, "members", "remove", "2")
    assert (code, err) == (4, "kvctl: conflict: a membership change is in progress\n")


def test_transfer_leader(fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    assert call(capsys, "transfer-leader", "3")[:2] == (0, "leader is now node 3\n")
    assert call(capsys, "transfer-leader")[:2] == (0, "leader is now node 2\n")
    assert json.loads(call(capsys, "--json", "transfer-leader")[1]) == {"leader": 2}
    assert [args for _, args, _ in fake.calls] == [(3,), (None,), (None,)]


def test_snapshot(fake: FakeClient, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = call(capsys, "snapshot")
    assert code == 0
    assert out.splitlines() == ["snapshot taken", "  index: 52", "  term:  7", "  size:  4096"]


def test_backup_refuses_to_overwrite(
    fake: FakeClient, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = tmp_path / "b.snap"
    code, out, _ = call(capsys, "backup", str(target))
    assert code == 0
    assert fake.calls == [("backup", (target,), {})]
    assert out.splitlines()[0] == f"backup written to {target}"
    assert f"  sha256: {'ab' * 32}" in out.splitlines()

    code, _, err = call(capsys, "backup", str(target))
    assert code == 2 and "--force" in err
    assert len(fake.calls) == 1

    code, out, _ = call(capsys, "--json", "backup", str(target), "--force")
    assert code == 0 and json.loads(out)["path"] == str(target)


@pytest.fixture
def restore_inputs(tmp_path: Path) -> tuple[Path, Path]:
    backup = tmp_path / "b.snap"
    backup.write_bytes(b"snapshot")
    cluster = tmp_path / "cluster.json"
    cluster.write_text(
        json.dumps(
            {
                "nodes": {
                    "1": {"id": 1, "http_addr": "10.0.0.1:8001", "rpc_addr": "10.0.0.1:9001"},
                    "2": {"id": 2, "http_addr": "10.0.0.2:8001", "rpc_addr": "10.0.0.2:9001"},
                }
            }
        )
    )
    return backup, cluster


def test_restore_calls_restore_backup(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    restore_inputs: tuple[Path, Path],
) -> None:
    from raftkv.node import restore

    backup, cluster = restore_inputs
    seen: list[tuple[Any, ...]] = []

    def fake_restore(
        backup_path: Path,
        data_dir: Path,
        node_id: int,
        nodes: dict[int, NodeAddress],
        **kwargs: Any,
    ) -> dict[str, Any]:
        seen.append((backup_path, data_dir, node_id, nodes, kwargs))
        return {"index": 52, "keys": 3}

    monkeypatch.setattr(restore, "restore_backup", fake_restore)
    data_dir = tmp_path / "data"
    args = [
        "restore",
        "--from",
        str(backup),
        "--data-dir",
        str(data_dir),
        "--node-id",
        "2",
        "--cluster",
        str(cluster),
    ]
    code, out, err = call(capsys, *args)
    assert code == 0, err
    assert seen == [
        (
            backup,
            data_dir,
            2,
            {
                1: NodeAddress(1, "10.0.0.1:8001", "10.0.0.1:9001"),
                2: NodeAddress(2, "10.0.0.2:8001", "10.0.0.2:9001"),
            },
            {},
        )
    ]
    assert out.splitlines() == [
        f"restored {backup} into {data_dir} as node 2 of a 2-node cluster",
        f"start it with: kvnode --node-id 2 --cluster {cluster} --data-dir {data_dir}",
        "  index: 52",
        "  keys:  3",
    ]

    code, out, _ = call(capsys, "--json", *args, "--storage", "sqlite")
    assert code == 0
    assert seen[-1][4] == {"storage": "sqlite"}
    assert json.loads(out) == {
        "backup": str(backup),
        "cluster_file": str(cluster),
        "data_dir": str(data_dir),
        "node_id": 2,
        "index": 52,
        "keys": 3,
    }

    monkeypatch.setattr(
        restore,
        "restore_backup",
        lambda *a, **k: (_ for _ in ()).throw(
            restore.RestoreError(f"{data_dir} already holds a node")
        ),
    )
    code, out, err = call(capsys, *args)
    assert (code, out) == (1, "")
    assert err == f"kvctl: restore: {data_dir} already holds a node\n"


def test_restore_checks_the_cluster_file(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    restore_inputs: tuple[Path, Path],
) -> None:
    from raftkv.node import restore

    called: list[object] = []
    monkeypatch.setattr(restore, "restore_backup", lambda *a, **k: called.append(a))
    backup, cluster = restore_inputs
    base = ["restore", "--from", str(backup), "--data-dir", str(tmp_path / "d")]

    code, _, err = call(capsys, *base, "--node-id", "3", "--cluster", str(cluster))
    assert code == 2 and "node 3 is not in" in err and "(nodes: 1, 2)" in err

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    code, _, err = call(capsys, *base, "--node-id", "1", "--cluster", str(broken))
    assert code == 2 and "not valid JSON" in err

    code, _, err = call(capsys, *base, "--node-id", "1", "--cluster", str(tmp_path / "no.json"))
    assert code == 2 and "does not exist" in err
    assert called == []


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (
            UnavailableError(
                "PUT /kv/k: no node could serve it; it may or may not have been applied",
                may_have_applied=True,
            ),
            5,
            "may have been applied",
        ),
        (
            UnavailableError("no node answered; it was not applied", may_have_applied=False),
            5,
            "it was not applied",
        ),
        (BadRequestError("value is too large", status=413), 6, "bad request: value is too large"),
        (RaftkvError("internal error", status=500), 1, "error (HTTP 500): internal error"),
        (RuntimeError("boom"), 1, "unexpected error: RuntimeError: boom"),
    ],
)
def test_errors_map_to_exit_codes(
    fake: FakeClient,
    capsys: pytest.CaptureFixture[str],
    error: Exception,
    code: int,
    message: str,
) -> None:
    fake.fail["put"] = error
    got, out, err = call(capsys, "set", "k", "v")
    assert (got, out) == (code, "")
    assert len(err.splitlines()) == 1 and message in err
    assert "Traceback" not in err
    if code == 5 and "not applied" in message:
        assert "may have been applied" not in err
