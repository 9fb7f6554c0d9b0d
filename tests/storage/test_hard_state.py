"""raft_state.json: round trips, atomic replacement, corruption and file modes."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftkv.raft.ready import HardState
from raftkv.storage.errors import StorageCorruptionError
from raftkv.storage.hard_state import FILE_NAME, TMP_NAME, HardStateFile, StoredState

CLUSTER = 0xC1D2_0000_0000_0001
NODE = 3


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """A umask that would leave new files world-readable, to show modes are forced."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def initialized(directory: Path, term: int = 0, vote: int = 0) -> HardStateFile:
    store = HardStateFile(directory)
    store.initialize(CLUSTER, NODE)
    if (term, vote) != (0, 0):
        store.save(term, vote)
    return store


# -- round trips ---------------------------------------------------------------------


def test_a_fresh_directory_has_no_state(tmp_path: Path) -> None:
    store = HardStateFile(tmp_path / "data")
    assert store.load() is None
    assert store.path == str(tmp_path / "data" / FILE_NAME)
    assert not (tmp_path / "data" / FILE_NAME).exists()


def test_initialize_starts_at_term_zero_without_a_vote(tmp_path: Path) -> None:
    store = HardStateFile(tmp_path)
    state = store.initialize(CLUSTER, NODE)
    assert state == StoredState(term=0, voted_for=0, cluster_id=CLUSTER, node_id=NODE)
    assert HardStateFile(tmp_path).load() == state


def test_save_and_load_round_trip_across_instances(tmp_path: Path) -> None:
    initialized(tmp_path, term=7, vote=2)
    loaded = HardStateFile(tmp_path).load()
    assert loaded == StoredState(term=7, voted_for=2, cluster_id=CLUSTER, node_id=NODE)
    assert loaded.hard_state == HardState(term=7, vote=2)


def test_later_saves_replace_earlier_ones(tmp_path: Path) -> None:
    store = initialized(tmp_path)
    for term in range(1, 6):
        store.save(term, term % 3)
    again = HardStateFile(tmp_path).load()
    assert again is not None
    assert (again.term, again.voted_for) == (5, 2)


def test_the_largest_values_round_trip(tmp_path: Path) -> None:
    top = 2**64 - 1
    store = HardStateFile(tmp_path)
    store.initialize(top, top)
    store.save(top, top)
    assert HardStateFile(tmp_path).load() == StoredState(top, top, top, top)


def test_the_file_is_readable_json_with_a_format(tmp_path: Path) -> None:
    initialized(tmp_path, term=4, vote=1)
    document = json.loads((tmp_path / FILE_NAME).read_text())
    assert document == {
        "format": 1,
        "term": 4,
        "voted_for": 1,
        "cluster_id": CLUSTER,
        "node_id": NODE,
    }


def test_save_after_load_keeps_the_identity(tmp_path: Path) -> None:
    initialized(tmp_path, term=2, vote=3)
    store = HardStateFile(tmp_path)
    assert store.load() is not None
    store.save(9, 0)
    assert HardStateFile(tmp_path).load() == StoredState(9, 0, CLUSTER, NODE)


def test_save_without_a_prior_load_reads_the_identity(tmp_path: Path) -> None:
    initialized(tmp_path, term=2, vote=3)
    HardStateFile(tmp_path).save(5, 1)
    assert HardStateFile(tmp_path).load() == StoredState(5, 1, CLUSTER, NODE)


def test_save_before_initialize_is_refused(tmp_path: Path) -> None:
    store = HardStateFile(tmp_path)
    with pytest.raises(RuntimeError, match="initialize"):
        store.save(1, 1)
    assert not (tmp_path / FILE_NAME).exists()


def test_initialize_again_with_the_same_identity_keeps_the_vote(tmp_path: Path) -> None:
    initialized(tmp_path, term=6, vote=2)
    state = HardStateFile(tmp_path).initialize(CLUSTER, NODE)
    assert (state.term, state.voted_for) == (6, 2)
    assert HardStateFile(tmp_path).load() == state


@pytest.mark.parametrize(("cluster", "node"), [(CLUSTER + 1, NODE), (CLUSTER, NODE + 1)])
def test_initialize_with_another_identity_is_refused(
    tmp_path: Path, cluster: int, node: int
) -> None:
    initialized(tmp_path, term=6, vote=2)
    with pytest.raises(ValueError, match="belongs to cluster"):
        HardStateFile(tmp_path).initialize(cluster, node)
    assert HardStateFile(tmp_path).load() == StoredState(6, 2, CLUSTER, NODE)


@pytest.mark.parametrize(("term", "vote"), [(-1, 0), (0, -1), (2**64, 0), (True, 0)])
def test_save_rejects_values_outside_u64(tmp_path: Path, term: int, vote: int) -> None:
    store = initialized(tmp_path, term=1, vote=1)
    with pytest.raises(ValueError):
        store.save(term, vote)
    assert HardStateFile(tmp_path).load() == StoredState(1, 1, CLUSTER, NODE)


# -- atomicity -----------------------------------------------------------------------


def test_no_temp_file_remains_after_a_save(tmp_path: Path) -> None:
    initialized(tmp_path, term=3, vote=1)
    assert sorted(os.listdir(tmp_path)) == [FILE_NAME]


def test_a_crash_before_the_rename_keeps_the_old_state(tmp_path: Path) -> None:
    initialized(tmp_path, term=3, vote=1)
    # The new state was written and even fsynced, but the rename never happened.
    newer = {"format": 1, "term": 4, "voted_for": 2, "cluster_id": CLUSTER, "node_id": NODE}
    (tmp_path / TMP_NAME).write_text(json.dumps(newer))
    store = HardStateFile(tmp_path)
    assert store.load() == StoredState(3, 1, CLUSTER, NODE)
    assert not (tmp_path / TMP_NAME).exists()


def test_a_torn_temp_file_is_removed_and_ignored(tmp_path: Path) -> None:
    initialized(tmp_path, term=8, vote=3)
    (tmp_path / TMP_NAME).write_bytes(b'{"format": 1, "te')
    store = HardStateFile(tmp_path)
    assert not (tmp_path / TMP_NAME).exists()
    assert store.load() == StoredState(8, 3, CLUSTER, NODE)
    store.save(9, 0)
    assert HardStateFile(tmp_path).load() == StoredState(9, 0, CLUSTER, NODE)


def test_a_temp_file_without_a_state_file_means_no_state(tmp_path: Path) -> None:
    (tmp_path / TMP_NAME).write_text('{"format": 1}')
    assert HardStateFile(tmp_path).load() is None
    assert not (tmp_path / TMP_NAME).exists()


# -- corruption ----------------------------------------------------------------------

GOOD = {"format": 1, "term": 2, "voted_for": 1, "cluster_id": CLUSTER, "node_id": NODE}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not valid JSON"),
        (b'{"format": 1, "term": 2, "voted', "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (json.dumps({**GOOD, "format": 2}).encode(), "unsupported format"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "format"}).encode(), "format"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "term"}).encode(), "'term'"),
        (json.dumps({**GOOD, "voted_for": "1"}).encode(), "'voted_for'"),
        (json.dumps({**GOOD, "term": True}).encode(), "'term'"),
        (json.dumps({**GOOD, "term": 2.5}).encode(), "'term'"),
        (json.dumps({**GOOD, "node_id": -1}).encode(), "'node_id'"),
        (json.dumps({**GOOD, "cluster_id": 2**64}).encode(), "'cluster_id'"),
    ],
    ids=[
        "empty",
        "truncated",
        "binary",
        "array",
        "future-format",
        "no-format",
        "missing-term",
        "string-vote",
        "bool-term",
        "float-term",
        "negative-node",
        "oversized-cluster",
    ],
)
def test_a_corrupt_file_names_itself(tmp_path: Path, content: bytes, reason: str) -> None:
    (tmp_path / FILE_NAME).write_bytes(content)
    store = HardStateFile(tmp_path)
    with pytest.raises(StorageCorruptionError) as caught:
        store.load()
    error = caught.value
    assert error.path == str(tmp_path / FILE_NAME)
    assert error.offset == 0
    assert str(tmp_path / FILE_NAME) in str(error)
    assert reason in error.reason


def test_a_corrupt_file_also_stops_save_and_initialize(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b"{not json")
    with pytest.raises(StorageCorruptionError):
        HardStateFile(tmp_path).save(1, 1)
    with pytest.raises(StorageCorruptionError):
        HardStateFile(tmp_path).initialize(CLUSTER, NODE)
    # Nothing overwrote the evidence.
    assert (tmp_path / FILE_NAME).read_bytes() == b"{not json"


# -- file modes ----------------------------------------------------------------------


@pytest.mark.usefixtures("permissive_umask")
def test_new_directories_are_0700_and_the_file_0600(tmp_path: Path) -> None:
    data_dir = tmp_path / "a" / "b"
    initialized(data_dir, term=1, vote=1)
    assert mode(tmp_path / "a") == 0o700
    assert mode(data_dir) == 0o700
    assert mode(data_dir / FILE_NAME) == 0o600


@pytest.mark.usefixtures("permissive_umask")
def test_a_leftover_temp_file_does_not_lend_its_mode(tmp_path: Path) -> None:
    store = initialized(tmp_path)
    # A temp file created by something else, world-readable, appearing after open.
    fd = os.open(tmp_path / TMP_NAME, os.O_WRONLY | os.O_CREAT, 0o666)
    os.close(fd)
    store.save(2, 2)
    assert mode(tmp_path / FILE_NAME) == 0o600


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    data_dir = tmp_path / "existing"
    data_dir.mkdir(mode=0o750)
    os.chmod(data_dir, 0o750)
    initialized(data_dir, term=1)
    assert mode(data_dir) == 0o750
