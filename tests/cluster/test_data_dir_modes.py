"""A node's files are private: with a permissive umask in the shell that starts it, every
file and directory under a real node's data directory (log, snapshots and their temp
files, hard state, the workers' socket and metrics files), a backup and a restored
data directory have no group or other permission bits."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftkv.client.http_client import Client
from raftkv.storage.file_modes import PRIVATE_BITS, restrict_umask
from raftkv.testing.cluster import running_cluster, wait_until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """The loosest umask an operator's shell might have; the node must not inherit it."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def exposed(root: Path) -> list[str]:
    """Every path under ``root`` (itself included) with a group or other bit set."""
    found = []
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and mode & PRIVATE_BITS:
            found.append(f"{path.relative_to(root.parent)} {stat.filemode(mode)}")
    return found


def kinds(root: Path) -> set[str]:
    """What the tree holds, so the test knows it looked at the interesting files."""
    names = {p.name for p in root.rglob("*")}
    found = {n for n in ("raft_state.json", "raft.sock", "log", "snapshots") if n in names}
    if any(n.endswith(".seg") for n in names):
        found.add("segment")
    if any(n.startswith("snapshot-") for n in names):
        found.add("snapshot")
    if any(p.parent.name == "worker-metrics" and p.is_file() for p in root.rglob("*")):
        found.add("worker metrics")
    return found


@pytest.mark.parametrize("storage", ["segment", "sqlite"])
def test_every_file_of_a_running_node_is_private(
    tmp_path: Path, permissive_umask: None, storage: str
) -> None:
    with running_cluster(tmp_path, 1, storage=storage) as cluster:
        url = cluster.url(1)
        for i in range(20):
            assert cluster.put(1, f"secret/{i}", "value").status_code == 200
        assert cluster.client.post(f"{url}/cluster/snapshot").status_code == 200
        assert cluster.client.get(f"{url}/metrics").status_code == 200
        data_dir = cluster.nodes[1].data_dir
        expected = {"raft_state.json", "raft.sock", "log", "snapshots", "snapshot"}
        expected |= {"worker metrics"} | ({"segment"} if storage == "segment" else set())
        # The snapshot is written off the event loop: wait until it is there.
        wait_until(lambda: expected <= kinds(data_dir), 30.0, 0.1, f"{expected} in {data_dir}")
        assert exposed(data_dir) == []


def test_backup_and_restore_are_private(tmp_path: Path, permissive_umask: None) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    target.mkdir()
    backup = tmp_path / "backup.snap"
    with running_cluster(source, 1) as cluster:
        assert cluster.put(1, "secret", "value").status_code == 200
        with Client(cluster.url(1)) as client:
            client.backup(backup)
        cluster_file = cluster.cluster_file
        # The client writes the backup under the test's own (permissive) umask.
        assert backup.stat().st_mode & PRIVATE_BITS == 0
        restored_dir = target / "node-1"
        restored = subprocess.run(
            [
                sys.executable, "-P", "-m", "raftkv.cli.kvnode",
                "--node-id", "1",
                "--cluster", str(cluster_file),
                "--data-dir", str(restored_dir),
                "restore", "--from", str(backup),
            ],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert {"raft_state.json", "segment", "snapshot"} <= kinds(restored_dir)
    assert exposed(restored_dir) == []


def test_restrict_umask_keeps_a_stricter_umask(permissive_umask: None) -> None:
    os.umask(0o277)
    assert restrict_umask() == 0o277
    assert os.umask(0) == 0o277
    os.umask(0o022)
    assert restrict_umask() == 0o022
    assert os.umask(0) == 0o077
