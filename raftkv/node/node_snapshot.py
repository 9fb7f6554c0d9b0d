"""The bytes of a node's snapshot: the address book, then the state machine.

The consensus core treats snapshot data as opaque and its membership as bare node ids;
a follower that installs a snapshot also needs every member's addresses to reach them,
so they travel inside the data.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

import orjson

from raftkv.node.node_config import ConfigError, NodeAddress, parse_cluster
from raftkv.raft.membership import Membership
from raftkv_ext.entry import ENTRY_CONFIG, Entry

_HEADER = struct.Struct("<4sBI")
_MAGIC = b"RKNS"
_VERSION = 1


class NodeSnapshotError(ValueError):
    """Snapshot data that does not have the node snapshot layout."""


def addresses_in_log(
    entries: Iterable[Entry], after_index: int, default: dict[int, NodeAddress]
) -> dict[int, NodeAddress]:
    """The address book of the newest configuration entry after ``after_index`` (the
    snapshot's index) that carries one, else ``default`` (the snapshot's book)."""
    addresses = default
    for entry in entries:
        if entry.type == ENTRY_CONFIG and entry.index > after_index:
            context = Membership.decode(entry.data)[1]
            if context:
                addresses = decode_addresses(context)
    return addresses


def encode_addresses(addresses: Mapping[int, NodeAddress]) -> bytes:
    return orjson.dumps(
        {str(n): addresses[n].to_json() for n in sorted(addresses)}, option=orjson.OPT_SORT_KEYS
    )


def decode_addresses(data: bytes) -> dict[int, NodeAddress]:
    if not data:
        return {}
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise NodeSnapshotError(f"bad address book: {exc}") from None
    if document == {}:
        return {}
    try:
        # Every address in the book passed the checks of a cluster file (or of a membership
        # change, which are the same) before it was written, so the book must pass them
        # too; anything else is damage, and an id or address that cannot be used would
        # only fail later, far from its cause.
        return parse_cluster({"nodes": document}, "address book")
    except ConfigError as exc:
        raise NodeSnapshotError(f"bad {exc}") from None


def encode_node_snapshot(addresses: dict[int, NodeAddress], state: bytes) -> bytes:
    book = encode_addresses(addresses)
    return _HEADER.pack(_MAGIC, _VERSION, len(book)) + book + state


def decode_node_snapshot(data: bytes) -> tuple[dict[int, NodeAddress], bytes]:
    if len(data) < _HEADER.size:
        raise NodeSnapshotError("snapshot data shorter than its header")
    magic, version, book_len = _HEADER.unpack_from(data)
    if magic != _MAGIC or version != _VERSION:
        raise NodeSnapshotError(f"not a node snapshot (magic {magic!r}, version {version})")
    end = _HEADER.size + book_len
    if end > len(data):
        raise NodeSnapshotError("address book runs past the end of the snapshot")
    return decode_addresses(data[_HEADER.size : end]), data[end:]
