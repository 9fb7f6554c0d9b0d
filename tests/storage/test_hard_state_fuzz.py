"""Hostile input: whatever ``raft_state.json`` holds, loading it either gives a valid
state or raises StorageCorruptionError naming the file, never another exception."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from raftkv.storage.errors import StorageCorruptionError
from raftkv.storage.hard_state import FILE_NAME, HardStateFile, StoredState

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
_MAX_U64 = (1 << 64) - 1

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
FIELDS = ("format", "term", "voted_for", "cluster_id", "node_id")


def load_or_refuse(raw: bytes) -> StoredState | None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / FILE_NAME
        path.write_bytes(raw)
        try:
            state = HardStateFile(directory).load()
        except StorageCorruptionError as exc:
            assert exc.path == str(path)
            assert str(exc).startswith(str(path))
            return None
    assert isinstance(state, StoredState)
    for value in (state.term, state.voted_for, state.cluster_id, state.node_id):
        assert 0 <= value <= _MAX_U64
    return state


@FUZZ
@given(raw=st.binary(max_size=300))
# Regressions: JSON nested deeper than the parser's recursion limit, and an integer with
# more digits than Python converts by default, escaped both as other exception types.
@example(raw=b"[" * 100_000)
@example(raw=b'{"format": 1, "term": ' + b"9" * 5000 + b"}")
def test_random_bytes(raw: bytes) -> None:
    load_or_refuse(raw)


@FUZZ
@given(document=st.dictionaries(st.sampled_from(FIELDS), JSON_VALUES) | JSON_VALUES)
def test_random_documents(document: object) -> None:
    load_or_refuse(json.dumps(document).encode())


@FUZZ
@given(
    values=st.fixed_dictionaries(
        {name: st.integers(-5, 2**65) for name in FIELDS[1:]},
    ),
    version=st.sampled_from([1, 1, 1, 0, 2, True, 1.0, "1"]),
)
def test_plausible_documents_are_checked_field_by_field(
    values: dict[str, int], version: object
) -> None:
    state = load_or_refuse(json.dumps({"format": version, **values}).encode())
    # The format tag compares equal to 1 (true and 1.0 do too, and are harmless); every
    # other field must be a real integer in range.
    valid = version == 1 and all(0 <= v <= _MAX_U64 for v in values.values())
    assert (state is not None) == valid


@pytest.mark.parametrize(
    "raw",
    [b"[" * 100_000, b'{"format": 1, "term": ' + b"9" * 5000 + b"}", b"\xff\xfe\x00"],
    ids=["deep-nesting", "huge-integer", "bad-encoding"],
)
def test_regressions_are_reported_as_corruption(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / FILE_NAME).write_bytes(raw)
        with pytest.raises(StorageCorruptionError, match="not valid JSON"):
            HardStateFile(directory).load()
