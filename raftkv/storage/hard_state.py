"""The node's durable identity and vote: ``raft_state.json`` in the data directory.

Raft (Figure 2) requires ``currentTerm`` and ``votedFor`` on stable storage before the
node answers an RPC; losing them can let a node vote twice in one term. The file also
names the cluster and the node the data directory belongs to, so a data directory
copied to the wrong node, or left over from another cluster, is refused rather than
allowed to vote.

The file is small JSON (an operator can read it), always replaced whole: the new
contents go to ``raft_state.json.tmp``, are fsynced, renamed over the file, and the
directory is fsynced. A crash leaves the old file or the new one, never a mix; a
leftover temp file is an unfinished write and is deleted when the store is opened.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from typing import Final

from raftkv.raft.ready import HardState
from raftkv.storage._fsutil import atomic_write, ensure_dir
from raftkv.storage.errors import StorageCorruptionError

FILE_NAME: Final = "raft_state.json"
TMP_NAME: Final = FILE_NAME + ".tmp"
FORMAT_VERSION: Final = 1

# Every field is an unsigned integer that must fit the wire codec's u64.
_MAX_U64: Final = (1 << 64) - 1
_FIELDS: Final = ("term", "voted_for", "cluster_id", "node_id")


@dataclass(frozen=True, slots=True)
class StoredState:
    """What ``raft_state.json`` holds. ``voted_for`` is 0 when the node has not voted."""

    term: int
    voted_for: int
    cluster_id: int
    node_id: int

    @property
    def hard_state(self) -> HardState:
        """The part the consensus core reads at start-up."""
        return HardState(term=self.term, vote=self.voted_for)


class HardStateFile:
    """Reads and atomically replaces ``raft_state.json`` in ``data_dir``.

    One node process owns the file; the last state loaded or written is cached so that
    ``save`` (called on every term or vote change) writes without reading first.
    """

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self._dir = os.fspath(data_dir)
        self._path = os.path.join(self._dir, FILE_NAME)
        self._tmp = os.path.join(self._dir, TMP_NAME)
        self._current: StoredState | None = None
        ensure_dir(self._dir)
        # A temp file is a write that never reached its rename: the old file (or no
        # file) is the truth, so the partial new one is thrown away.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

    @property
    def path(self) -> str:
        return self._path

    def load(self) -> StoredState | None:
        """The stored state, or None when the node was never initialized."""
        try:
            with open(self._path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            self._current = None
            return None
        state = self._parse(raw)
        self._current = state
        return state

    def initialize(self, cluster_id: int, node_id: int) -> StoredState:
        """Record which cluster and node this data directory belongs to.

        A fresh directory starts at term 0 with no vote. Initializing again with the same
        identity keeps the stored term and vote; a different identity raises ValueError,
        since adopting another node's votes could make this node vote twice in a term.
        """
        _check_u64("cluster_id", cluster_id)
        _check_u64("node_id", node_id)
        existing = self._current if self._current is not None else self.load()
        if existing is not None:
            if (existing.cluster_id, existing.node_id) != (cluster_id, node_id):
                raise ValueError(
                    f"{self._path} belongs to cluster {existing.cluster_id} node "
                    f"{existing.node_id}, not cluster {cluster_id} node {node_id}"
                )
            return existing
        state = StoredState(term=0, voted_for=0, cluster_id=cluster_id, node_id=node_id)
        self._write(state)
        return state

    def save(self, term: int, vote: int) -> None:
        """Durably replace the term and vote; the identity stays as initialized.

        Raises RuntimeError when the file was never initialized: a vote written without
        an identity could later be adopted by the wrong node.
        """
        _check_u64("term", term)
        _check_u64("vote", vote)
        current = self._current if self._current is not None else self.load()
        if current is None:
            raise RuntimeError(f"{self._path} is not initialized; call initialize() first")
        self._write(StoredState(term, vote, current.cluster_id, current.node_id))

    def _write(self, state: StoredState) -> None:
        document = {
            "format": FORMAT_VERSION,
            "term": state.term,
            "voted_for": state.voted_for,
            "cluster_id": state.cluster_id,
            "node_id": state.node_id,
        }
        data = (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()
        atomic_write(self._path, data, self._tmp)
        # Cache only once the new state is durable, so a failed write is retried in full.
        self._current = state

    def _parse(self, raw: bytes) -> StoredState:
        def corrupt(reason: str) -> StorageCorruptionError:
            return StorageCorruptionError(self._path, reason)

        try:
            document = json.loads(raw)
        # ValueError covers bad JSON and bad UTF-8, and also an integer with more digits
        # than Python converts; RecursionError is JSON nested past the parser's limit.
        except (ValueError, RecursionError) as exc:
            raise corrupt(f"not valid JSON ({exc})") from exc
        if not isinstance(document, dict):
            raise corrupt("not a JSON object")
        version = document.get("format")
        if version != FORMAT_VERSION:
            raise corrupt(f"unsupported format {version!r} (expected {FORMAT_VERSION})")
        values: dict[str, int] = {}
        for name in _FIELDS:
            value = document.get(name)
            # bool is an int subclass; true/false are never a valid term or id.
            if not isinstance(value, int) or isinstance(value, bool):
                raise corrupt(f"field {name!r} is missing or not an integer: {value!r}")
            if not 0 <= value <= _MAX_U64:
                raise corrupt(f"field {name!r} is out of range: {value}")
            values[name] = value
        return StoredState(**values)


def _check_u64(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_U64:
        raise ValueError(f"{name} must be an integer in 0..2**64-1, got {value!r}")
