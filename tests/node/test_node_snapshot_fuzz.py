"""Hostile input: a node snapshot's bytes and its address book (which also rides in every
membership entry) either decode or raise NodeSnapshotError; a cluster document either
parses or raises ConfigError."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from raftkv.node.node_config import ConfigError, NodeAddress, parse_cluster
from raftkv.node.node_snapshot import (
    NodeSnapshotError,
    decode_addresses,
    decode_node_snapshot,
    encode_addresses,
    encode_node_snapshot,
)

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
_HEADER = struct.Struct("<4sBI")

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["1", "0", "-1", "²", "127.0.0.1:9001", "[::1]:80", "h:0", "h:99999"])
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=10,
)
NODE_ENTRIES = (
    st.fixed_dictionaries(
        {},
        optional={"id": JSON_SCALARS, "http_addr": JSON_SCALARS, "rpc_addr": JSON_SCALARS},
    )
    | JSON_VALUES
)
BOOKS = st.dictionaries(
    st.sampled_from(["1", "2", " 3", "0", "-4", "٣", "18446744073709551616"]) | st.text(max_size=4),
    NODE_ENTRIES,
    max_size=3,
)
ADDRESSES = st.dictionaries(
    st.integers(1, 2**64 - 1),
    st.just(("127.0.0.1:8001", "127.0.0.1:9001")),
    max_size=3,
).map(lambda book: {n: NodeAddress(n, http, rpc) for n, (http, rpc) in book.items()})


def book_or_refuse(data: bytes) -> None:
    try:
        book = decode_addresses(data)
    except NodeSnapshotError as exc:
        assert str(exc)
        return
    for node_id, address in book.items():
        assert 0 < node_id < 2**64
        assert address.node_id == node_id
        # Usable addresses, not just strings.
        assert address.http_host_port[1] > 0
        assert address.rpc_host_port[1] > 0
    assert decode_addresses(encode_addresses(book)) == book


def snapshot_or_refuse(data: bytes) -> None:
    try:
        book, state = decode_node_snapshot(data)
    except NodeSnapshotError as exc:
        assert str(exc)
        return
    assert decode_node_snapshot(encode_node_snapshot(book, state)) == (book, state)


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_bytes_as_an_address_book(data: bytes) -> None:
    book_or_refuse(data)


@FUZZ
@given(document=BOOKS | JSON_VALUES)
# Regressions: an id too large for the wire, and a port of digits int() refuses.
@example(document={"18446744073709551616": {"id": 2**64, "http_addr": "h:1", "rpc_addr": "h:2"}})
@example(document={"1": {"id": 1, "http_addr": "h:²", "rpc_addr": "h:2"}})
@example(document={"1": {"id": 1e308, "http_addr": "h:1", "rpc_addr": "h:2"}})
def test_random_documents_as_an_address_book(document: object) -> None:
    # The standard library writes integers of any size, which orjson refuses to.
    book_or_refuse(json.dumps(document).encode())


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_as_a_node_snapshot(data: bytes) -> None:
    snapshot_or_refuse(data)


@FUZZ
@given(
    book_len=st.integers(0, 2**32 - 1) | st.integers(0, 80),
    version=st.sampled_from([1, 1, 0, 2]),
    rest=st.binary(max_size=120),
    book=BOOKS,
)
def test_random_content_behind_a_valid_header(
    book_len: int, version: int, rest: bytes, book: dict[str, object]
) -> None:
    raw = json.dumps(book).encode()
    snapshot_or_refuse(_HEADER.pack(b"RKNS", version, book_len) + rest)
    snapshot_or_refuse(_HEADER.pack(b"RKNS", version, len(raw)) + raw + rest)


@FUZZ
@given(addresses=ADDRESSES, state=st.binary(max_size=40))
def test_valid_snapshots_round_trip(addresses: dict[int, NodeAddress], state: bytes) -> None:
    assert decode_node_snapshot(encode_node_snapshot(addresses, state)) == (addresses, state)


@FUZZ
@given(nodes=BOOKS | JSON_VALUES)
def test_random_cluster_documents(nodes: object) -> None:
    try:
        cluster = parse_cluster({"nodes": nodes}, "cluster.json")
    except ConfigError as exc:
        assert str(exc).startswith("cluster.json: ")
        return
    assert cluster
    assert all(0 < n < 2**64 for n in cluster)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"id": 2**64, "http_addr": "h:1", "rpc_addr": "h:2"}, "does not fit in 64 bits"),
        ({"id": 1, "http_addr": "h:²", "rpc_addr": "h:2"}, "is not host:port"),
        ({"id": 1, "http_addr": "h:" + "9" * 5000, "rpc_addr": "h:2"}, "is not host:port"),
    ],
    ids=["id-over-u64", "superscript-port", "endless-port"],
)
def test_regressions_are_config_errors(entry: dict[str, object], message: str) -> None:
    key = str(entry["id"])
    with pytest.raises(ConfigError, match=message):
        parse_cluster({"nodes": {key: entry}}, "cluster.json")
