"""Authentication and authorization on a real 3-node cluster, set up with kvctl as an
operator would: 401 without credentials, 403 without the permission, 200 with it through
a follower and the leader, a revoked token stops working on every node, the native port
refuses everything, and a node restarted from its snapshot and log enforces the same
rules."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from raftkv.client.http_client import BadRequestError
from raftkv.client.native import AsyncNativeClient
from raftkv.node.native_check import AUTH_REFUSAL
from raftkv.testing.cluster import LocalCluster, running_cluster, wait_until

ROOT = httpx.BasicAuth("root", "root-pw")
READER = httpx.BasicAuth("reader", "reader-pw")
# Small snapshots, so that the restarted node loads the tables from a snapshot and then
# replays the later changes from its log.
FAST_SNAPSHOTS = ["--snapshot-entries", "20", "--snapshot-retain", "5"]


def kvctl(cluster: LocalCluster, *args: str, **env: str) -> Any:
    """Run kvctl --json against every node; the parsed answer (exit 0 required)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RAFTKV_")}
    environment["RAFTKV_ENDPOINTS"] = ",".join(cluster.url(n) for n in cluster.nodes)
    environment.update(env)
    done = subprocess.run(
        [sys.executable, "-P", "-m", "raftkv.cli.kvctl", "--json", *args],
        capture_output=True,
        env=environment,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return json.loads(done.stdout) if done.stdout.strip() else None


def check_rules(http: httpx.Client, url: str, revoked_token: str) -> None:
    """The rules set up by the test, checked on the node at ``url``."""
    anonymous = http.get(f"{url}/kv/app/x")
    assert anonymous.status_code == 401, anonymous.text
    assert "Basic" in anonymous.headers["www-authenticate"]
    assert "authentication required" in anonymous.json()["error"]
    read = http.get(f"{url}/kv/app/x", auth=READER)
    assert (read.status_code, read.content) == (200, b"hello")
    write = http.put(f"{url}/kv/app/x", content=b"nope", auth=READER)
    assert write.status_code == 403, write.text
    assert "readwrite" in write.json()["error"]
    outside = http.get(f"{url}/kv/other/y", auth=READER)
    assert outside.status_code == 403, outside.text
    assert "'other/y'" in outside.json()["error"]
    assert http.get(f"{url}/kv?prefix=app/", auth=READER).status_code == 200
    assert http.get(f"{url}/kv?prefix=", auth=READER).status_code == 403
    assert http.post(f"{url}/cluster/snapshot", auth=READER).status_code == 403
    token = http.get(f"{url}/kv/app/x", headers={"Authorization": f"Bearer {revoked_token}"})
    assert token.status_code == 401, token.text
    assert http.get(f"{url}/kv/other/y", auth=ROOT).status_code == 200
    assert http.get(f"{url}/health").status_code == 200


def native_refused(cluster: LocalCluster, node_id: int) -> str:
    async def attempt() -> str:
        host, port = cluster.client_addr(node_id)
        async with AsyncNativeClient(host, port, timeout=5.0) as client:
            with pytest.raises(BadRequestError) as refused:
                await client.get(b"app/x")
            return str(refused.value)

    return asyncio.run(attempt())


def test_auth_on_a_three_node_cluster(tmp_path: Path) -> None:
    with running_cluster(tmp_path, 3, extra_args=FAST_SNAPSHOTS, native=True) as cluster:
        leader = cluster.leader()
        follower = cluster.followers()[0]
        http = httpx.Client(timeout=10.0)

        # Set up with kvctl while auth is off, as etcd has it.
        kvctl(cluster, "user", "add", "root", "--new-password", "root-pw")
        kvctl(cluster, "role", "add", "admins")
        kvctl(cluster, "role", "grant", "admins", "--admin")
        kvctl(cluster, "user", "grant-role", "root", "admins")
        kvctl(cluster, "user", "add", "reader", "--new-password", "reader-pw")
        kvctl(cluster, "role", "add", "app-read")
        kvctl(cluster, "role", "grant", "app-read", "--read", "app/")
        kvctl(cluster, "user", "grant-role", "reader", "app-read")
        assert kvctl(cluster, "auth", "enable")["enabled"] is True
        status = kvctl(cluster, "auth", "status", RAFTKV_USER="root", RAFTKV_PASSWORD="root-pw")
        assert status["enabled"] is True
        assert status["admin_users"] == ["root"]

        # No credentials: 401 on every node, and kvctl says so with its own exit code.
        for node_id in cluster.nodes:
            assert http.get(f"{cluster.url(node_id)}/kv/app/x").status_code == 401
        environment = {k: v for k, v in os.environ.items() if not k.startswith("RAFTKV_")}
        denied = subprocess.run(
            [sys.executable, "-P", "-m", "raftkv.cli.kvctl", "get", "app/x"],
            capture_output=True,
            env={**environment, "RAFTKV_ENDPOINTS": cluster.url(follower)},
            timeout=60,
            check=False,
        )
        assert denied.returncode == 7, denied.stderr
        assert b"authentication failed" in denied.stderr

        # Writes by root through a follower; reads by the reader through both.
        as_root = {"RAFTKV_USER": "root", "RAFTKV_PASSWORD": "root-pw"}
        kvctl(cluster, "set", "app/x", "hello", **as_root)
        assert http.put(f"{cluster.url(follower)}/kv/other/y", content=b"o", auth=ROOT).is_success
        for node_id in (follower, leader):
            url = cluster.url(node_id)
            assert http.get(f"{url}/kv/app/x", auth=READER).content == b"hello"
            assert http.put(f"{url}/kv/app/x", content=b"w", auth=READER).status_code == 403
            assert http.get(f"{url}/kv/other/y", auth=READER).status_code == 403
            # Admin operations need the admin permission (on a follower they are passed
            # on to the leader with the caller's credentials).
            assert http.post(f"{url}/cluster/leader", json={}, auth=READER).status_code == 403

        # A token works on every node until it is revoked, then stops on every node.
        created = kvctl(cluster, "user", "token", "create", "reader", **as_root)
        bearer = {"Authorization": f"Bearer {created['token']}"}
        for node_id in cluster.nodes:
            url = cluster.url(node_id)
            wait_until(
                lambda url=url: http.get(f"{url}/kv/app/x", headers=bearer).status_code == 200,
                10,
                0.05,
                f"the new token to work on {url}",
            )
        # Enough writes for a snapshot on every node, so the restart below loads one.
        for i in range(30):
            assert http.put(
                f"{cluster.url(leader)}/kv/app/n{i}", content=b"v", auth=ROOT
            ).is_success
        kvctl(cluster, "user", "token", "revoke", created["id"], **as_root)
        for node_id in cluster.nodes:
            url = cluster.url(node_id)
            wait_until(
                lambda url=url: http.get(f"{url}/kv/app/x", headers=bearer).status_code == 401,
                10,
                0.05,
                f"the revoked token to stop working on {url}",
            )

        # The native port cannot authenticate: it refuses everything.
        assert AUTH_REFUSAL in native_refused(cluster, follower)

        for node_id in (follower, leader):
            check_rules(http, cluster.url(node_id), created["token"])

        # A restarted node loads the tables from its snapshot and log.
        snapshots = list((cluster.nodes[follower].data_dir / "snapshots").iterdir())
        assert snapshots, "the follower should have taken a snapshot"
        cluster.terminate(follower)
        cluster.start_node(follower)
        cluster.wait_ready()
        url = cluster.url(follower)
        assert http.get(f"{url}/kv/app/x").status_code == 401
        revision = http.get(f"{cluster.url(leader)}/auth/status", auth=ROOT).json()["revision"]
        wait_until(
            lambda: http.get(f"{url}/auth/status", auth=ROOT).json()["revision"] >= revision,
            20,
            0.1,
            "the restarted node to catch up with the auth tables",
        )
        # Its worker enforces a polled copy of the tables (docs/decisions.md), fetched
        # when it started, possibly before the Raft process had replayed the revocation:
        # the copy catches up within a poll.
        wait_until(
            lambda: http.get(f"{url}/kv/app/x", headers=bearer).status_code == 401,
            10,
            0.05,
            "the restarted node's worker to see the revocation",
        )
        check_rules(http, url, created["token"])
        assert AUTH_REFUSAL in native_refused(cluster, follower)
        http.close()
