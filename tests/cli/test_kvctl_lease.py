"""``kvctl lease`` and ``kvctl set --ttl|--lease`` as scripts use them: kvctl as a
subprocess (its real entry point) against one real node (``LocalCluster``); what each
command prints, with and without --json; exit statuses; ``keepalive --forever`` until
Ctrl-C or until the lease is revoked; the lease commands in ``kvctl shell``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from raftkv.client import Client, NotFoundError
from raftkv.testing.cluster import LocalCluster, running_cluster, wait_until


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def kvctl_command(endpoint: str, *args: str) -> list[str]:
    return [sys.executable, "-P", "-m", "raftkv.cli.kvctl", "--endpoints", endpoint, *args]


def kvctl_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAFTKV_")}
    env["RAFTKV_HISTORY"] = os.devnull
    return env


def kvctl(endpoint: str, *args: str, stdin: str = "") -> Run:
    done = subprocess.run(
        kvctl_command(endpoint, *args),
        input=stdin,
        capture_output=True,
        text=True,
        env=kvctl_env(),
        timeout=60,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def ok(run: Run) -> str:
    assert run.code == 0, (run.code, run.stderr)
    assert run.stderr == ""
    return run.stdout


def assert_error(run: Run, code: int, *fragments: str) -> None:
    """Exit ``code``, nothing on stdout, one line on stderr (no traceback)."""
    assert run.code == code, (run.code, run.stderr)
    assert run.stdout == ""
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("kvctl: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("kvctl-lease"), 1) as running:
        yield running


@pytest.fixture(scope="module")
def url(cluster: LocalCluster) -> str:
    return cluster.url(1)


@pytest.fixture
def client(url: str) -> Iterator[Client]:
    with Client(url) as opened:
        yield opened


def gone(client: Client, key: str) -> bool:
    try:
        client.get(key)
    except NotFoundError:
        return True
    return False


def test_a_lease_from_grant_to_revoke(url: str, client: Client) -> None:
    granted = ok(kvctl(url, "lease", "grant", "30"))
    match = re.fullmatch(r"lease (\d+) granted with TTL 30s\n", granted)
    assert match, granted
    lease = match[1]

    stored = ok(kvctl(url, "set", "text/a", "1", "--lease", lease))
    assert re.fullmatch(rf"set 'text/a' at revision \d+ \(lease {lease}, TTL 30s\)\n", stored)
    ok(kvctl(url, "put", "text/b", "2", "--lease", lease))  # etcdctl's name for set

    first_line = rf"lease {lease}: TTL 30s, \d+(\.\d+)?s remaining"
    lines = ok(kvctl(url, "lease", "info", lease)).splitlines()
    assert re.fullmatch(first_line, lines[0]), lines
    assert lines[1:] == ["2 keys attached:", "  text/a", "  text/b"]
    assert re.fullmatch(first_line + "\n", ok(kvctl(url, "lease", "info", lease, "--no-keys")))

    table = ok(kvctl(url, "lease", "list")).splitlines()
    assert table[0].split() == ["ID", "TTL", "REMAINING"]
    assert any(row.split()[:2] == [lease, "30s"] for row in table[1:]), table

    assert ok(kvctl(url, "lease", "keepalive", lease)) == f"lease {lease} kept alive with TTL 30s\n"
    assert ok(kvctl(url, "lease", "revoke", lease)) == f"lease {lease} revoked (2 keys deleted)\n"
    assert gone(client, "text/a") and gone(client, "text/b")

    missing = f"lease {lease} not found (it expired, was revoked or never existed)"
    for args in (["revoke", lease], ["keepalive", lease], ["info", lease]):
        assert_error(kvctl(url, "lease", *args), 3, missing)
    assert_error(kvctl(url, "set", "text/c", "3", "--lease", lease), 3, missing)


def test_json_output(url: str, client: Client) -> None:
    lease = 4242
    assert kvctl(url, "--json", "lease", "grant", "20", "--id", str(lease)).json() == {
        "id": lease,
        "ttl": 20.0,
    }
    assert_error(kvctl(url, "lease", "grant", "20", "--id", str(lease)), 4, "already exists")

    stored = kvctl(url, "--json", "set", "json/k", "v", "--lease", str(lease)).json()
    assert stored["lease"] == lease and stored["ttl"] == 20.0
    assert stored["revision"] == client.get("json/k").mod_revision
    got = kvctl(url, "--json", "get", "json/k").json()
    assert got["lease"] == lease and 0 < got["ttl"] <= 20.0

    info = kvctl(url, "--json", "lease", "info", str(lease)).json()
    assert info["keys"] == ["json/k"] and info["more"] is False
    assert info["id"] == lease and info["ttl"] == 20.0 and 0 < info["remaining"] <= 20
    bare = kvctl(url, "--json", "lease", "info", str(lease), "--no-keys").json()
    assert set(bare) == {"id", "ttl", "remaining"}

    listed = kvctl(url, "--json", "lease", "list").json()
    assert listed["count"] == len(listed["leases"])
    assert {"id": lease, "ttl": 20.0}.items() <= next(
        item for item in listed["leases"] if item["id"] == lease
    ).items()

    assert kvctl(url, "--json", "lease", "keepalive", str(lease)).json() == {
        "id": lease,
        "ttl": 20.0,
    }
    assert kvctl(url, "--json", "lease", "revoke", str(lease)).json() == {
        "id": lease,
        "revoked": True,
        "deleted": 1,
    }


def test_set_with_a_ttl(url: str, client: Client) -> None:
    sent = time.monotonic()
    stored = ok(kvctl(url, "set", "ttl/k", "v", "--ttl", "1"))
    match = re.fullmatch(r"set 'ttl/k' at revision \d+ \(lease (\d+), TTL 1s\)\n", stored)
    assert match, stored
    assert client.get("ttl/k").lease == int(match[1])
    wait_until(lambda: gone(client, "ttl/k"), 5, what="the key written with --ttl")
    assert time.monotonic() - sent >= 1

    assert_error(kvctl(url, "set", "ttl/x", "v", "--ttl", "2", "--lease", "1"), 2, "not both")
    assert_error(kvctl(url, "set", "ttl/x", "v", "--ttl", "0.5"), 2, "'--ttl'")
    assert_error(kvctl(url, "lease", "grant", "0"), 2, "TTL")
    assert_error(kvctl(url, "lease", "revoke", "abc"), 2, "ID")
    assert gone(client, "ttl/x")


def start_kvctl(url: str, tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    out = tmp_path / "stdout"
    with out.open("wb") as stdout, (tmp_path / "stderr").open("wb") as stderr:
        process = subprocess.Popen(
            kvctl_command(url, *args),
            stdout=stdout,
            stderr=stderr,
            env=kvctl_env(),
            start_new_session=True,  # no terminal: a SIGINT comes from the test only
        )
    return process, out


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(10)


def test_keepalive_forever_until_ctrl_c(url: str, client: Client, tmp_path: Path) -> None:
    granted = time.monotonic()
    lease = client.lease_grant(2).id
    client.put("forever/k", "v", lease=lease)
    process, out = start_kvctl(url, tmp_path, "lease", "keepalive", str(lease), "--forever")
    try:

        def renewed_past_the_ttl() -> bool:
            assert process.poll() is None, (tmp_path / "stderr").read_text()
            return out.read_text().count("\n") >= 3 and time.monotonic() - granted > 3

        wait_until(renewed_past_the_ttl, 20, what="renewals past the TTL")
        assert client.get_value("forever/k") == b"v"  # alive past its 2 s TTL
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0
    finally:
        stop(process)
    lines = out.read_text().splitlines()
    assert set(lines) == {f"lease {lease} kept alive with TTL 2s"}, lines
    assert (tmp_path / "stderr").read_text() == ""
    wait_until(lambda: gone(client, "forever/k"), 6, what="the lease to expire")


def test_keepalive_forever_ends_when_the_lease_does(
    url: str, client: Client, tmp_path: Path
) -> None:
    lease = client.lease_grant(2).id
    process, out = start_kvctl(
        url, tmp_path, "--json", "lease", "keepalive", str(lease), "--forever"
    )
    try:
        wait_until(lambda: out.read_text().count("\n") >= 1, 15, what="a renewal")
        client.lease_revoke(lease)
        assert process.wait(10) == 3
    finally:
        stop(process)
    for line in out.read_text().splitlines():
        assert json.loads(line) == {"id": lease, "ttl": 2.0}
    assert (tmp_path / "stderr").read_text() == f"kvctl: lease {lease} expired or was revoked\n"


def test_lease_commands_in_the_shell(url: str, client: Client) -> None:
    script = "\n".join(
        [
            "lease grant 30 --id 5151",
            "set shell/k v --lease 5151",
            "lease info 5151",
            "help lease",
            "lease revoke 5151",
            "lease info 5151",
        ]
    )
    run = kvctl(url, "shell", stdin=script + "\n")
    assert run.code == 3  # the status of the last command that failed
    out = run.stdout
    assert "lease 5151 granted with TTL 30s" in out
    assert re.search(r"set 'shell/k' at revision \d+ \(lease 5151, TTL 30s\)", out)
    assert "1 key attached:\n  shell/k\n" in out
    assert "Usage: lease [OPTIONS] COMMAND" in out and "keepalive" in out
    assert "lease 5151 revoked (1 key deleted)" in out
    assert run.stderr == "error: lease 5151 not found (it expired, was revoked or never existed)\n"
    assert gone(client, "shell/k")
