"""Lease commands and puts with a lease or a TTL: round trips, the layout, canonical
encodings and what decoding (and the state machine) refuses."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftkv.kv import (
    Command,
    CommandDecodeError,
    KVStateMachine,
    Put,
    Status,
    decode_command,
    encode_command,
)
from raftkv.kv.commands import (
    LEASE_CHECKPOINT,
    LEASE_EXPIRE,
    LEASE_FIELDS,
    LEASE_GRANT,
    LEASE_KEEP_ALIVE,
    LEASE_REVOKE,
    OP_LEASE,
    OP_PUT,
    OP_PUT_LEASED,
    LeaseCheckpoint,
    LeaseCommand,
    LeaseExpire,
    LeaseGrant,
    LeaseKeepAlive,
    LeaseRevoke,
    decode_lease_body,
    decode_raw,
)

from ._strategies import U64_MAX, tags

TOP_ID = 2**63 - 1
TAG = {"client_id": 9, "seq": 4, "first_incomplete": 2}
HEADER_SIZE = 26
LEASED_PUT_FIXED = 29
"""flags, prev_revision, lease, ttl_ms, key length."""


def _header(
    op: int = OP_LEASE, client_id: int = 0, seq: int = 0, first_incomplete: int = 0
) -> bytes:
    return struct.pack("<BBQQQ", 1, op, client_id, seq, first_incomplete)


def _leased_put(
    lease: int, ttl_ms: int, key: bytes = b"k", value: bytes = b"v", flags: int = 0, prev: int = 0
) -> bytes:
    return (
        _header(OP_PUT_LEASED)
        + struct.pack("<BQQQI", flags, prev, lease, ttl_ms, len(key))
        + key
        + value
    )


def _lease(kind: int, *fields: int, tagged: bool = False) -> bytes:
    head = _header(client_id=1, seq=1) if tagged else _header()
    return head + bytes((kind,)) + b"".join(struct.pack("<Q", f) for f in fields)


def _checkpoint(pairs: list[tuple[int, int]], count: int | None = None) -> bytes:
    body = struct.pack("<BI", LEASE_CHECKPOINT, len(pairs) if count is None else count)
    return _header() + body + b"".join(struct.pack("<QQ", *pair) for pair in pairs)


# -- round trips -----------------------------------------------------------------------

COMMANDS: list[Command] = [
    LeaseGrant(0, 1),
    LeaseGrant(1, 1000),
    LeaseGrant(TOP_ID, U64_MAX),
    LeaseGrant(0, 5000, **TAG),
    LeaseGrant(7, 5000, client_id=U64_MAX, seq=U64_MAX, first_incomplete=U64_MAX),
    LeaseRevoke(1),
    LeaseRevoke(TOP_ID, **TAG),
    LeaseKeepAlive(3),
    LeaseKeepAlive(TOP_ID, **TAG),
    LeaseCheckpoint(()),
    LeaseCheckpoint(((1, 0),)),
    LeaseCheckpoint(((1, 500), (2, U64_MAX), (TOP_ID, 7))),
    LeaseExpire(1, 0),
    LeaseExpire(TOP_ID, U64_MAX),
    Put(b"k", b"v", lease=1),
    Put(b"k", b"", lease=TOP_ID),
    Put(b"k", b"v", ttl_ms=1),
    Put(b"k", b"v", ttl_ms=U64_MAX),
    Put(b"\x00\xff", b"\x00" * 100, 0, lease=5, **TAG),
    Put(b"key", b"value", U64_MAX, ttl_ms=3000, **TAG),
]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_command_round_trips(command: Command) -> None:
    data = encode_command(command)
    decoded = decode_command(data)
    assert decoded == command
    assert type(decoded) is type(command)
    assert encode_command(decoded) == data
    assert decode_command(bytearray(data)) == command
    assert decode_command(memoryview(data)) == command


@pytest.mark.parametrize("command", COMMANDS)
def test_every_truncation_of_a_lease_command_fails(command: Command) -> None:
    data = encode_command(command)
    # A put's value runs to the end of the payload: only cutting into its key shows.
    fixed = (
        HEADER_SIZE + LEASED_PUT_FIXED + len(command.key) if isinstance(command, Put) else len(data)
    )
    for size in range(fixed):
        with pytest.raises(CommandDecodeError):
            decode_command(data[:size])


def test_a_put_without_lease_or_ttl_stays_a_plain_put() -> None:
    assert encode_command(Put(b"k", b"v"))[1] == OP_PUT
    assert encode_command(Put(b"k", b"v", lease=0, ttl_ms=0)) == encode_command(Put(b"k", b"v"))
    assert encode_command(Put(b"k", b"v", lease=1))[1] == OP_PUT_LEASED
    assert encode_command(Put(b"k", b"v", ttl_ms=1))[1] == OP_PUT_LEASED


def test_the_layout_is_stable() -> None:
    """The bytes are part of the log format: they must never change silently."""
    assert encode_command(Put(b"k", b"val", 7, lease=3, client_id=1, seq=5)).hex() == (
        "0106"  # version 1, opcode LeasedPut
        "0100000000000000"  # client_id 1
        "0500000000000000"  # seq 5
        "0000000000000000"  # first_incomplete 0
        "01"  # flags: prev_revision present
        "0700000000000000"  # prev_revision 7
        "0300000000000000"  # lease 3
        "0000000000000000"  # no ttl
        "01000000"  # key length 1
        "6b"  # key
        "76616c"  # value
    )
    untagged = "07" + "00" * 24
    assert encode_command(Put(b"k", b"", ttl_ms=256)).hex() == (
        "0106" + "00" * 24 + "00" + "00" * 8 + "00" * 8 + "0001000000000000" + "01000000" + "6b"
    )
    assert encode_command(LeaseGrant(2, 1000, client_id=1, seq=1, first_incomplete=1)).hex() == (
        "0107"
        "0100000000000000"
        "0100000000000000"
        "0100000000000000"
        "01"  # GRANT
        "0200000000000000"  # lease id 2
        "e803000000000000"  # ttl 1000
    )
    assert encode_command(LeaseRevoke(2)).hex() == "01" + untagged + "02" + "0200000000000000"
    assert encode_command(LeaseKeepAlive(2)).hex() == "01" + untagged + "03" + "0200000000000000"
    assert encode_command(LeaseCheckpoint(((1, 2), (3, 4)))).hex() == (
        "01"
        + untagged
        + "04"  # CHECKPOINT
        + "02000000"  # two pairs
        + "0100000000000000"
        + "0200000000000000"
        + "0300000000000000"
        + "0400000000000000"
    )
    assert encode_command(LeaseExpire(2, 9)).hex() == (
        "01" + untagged + "05" + "0200000000000000" + "0900000000000000"
    )


def test_decode_raw_leaves_the_lease_fields_before_the_value() -> None:
    data = encode_command(Put(b"key", b"value", 0, ttl_ms=30, **TAG))
    assert decode_raw(data) == (
        OP_PUT_LEASED,
        9,
        4,
        2,
        b"key",
        LEASE_FIELDS.pack(0, 30) + b"value",
        0,
    )
    grant = encode_command(LeaseGrant(5, 6, **TAG))
    assert decode_raw(grant) == (OP_LEASE, 9, 4, 2, grant[HEADER_SIZE:], b"", None)


@pytest.mark.parametrize(
    "command",
    [
        LeaseGrant(0, 1),
        LeaseRevoke(4),
        LeaseKeepAlive(4),
        LeaseCheckpoint(((4, 1),)),
        LeaseExpire(4, 2),
    ],
)
def test_a_lease_body_decodes_untagged(command: LeaseCommand) -> None:
    assert decode_lease_body(encode_command(command)[HEADER_SIZE:]) == command


def test_a_tagged_body_keeps_its_tag_only_in_the_command() -> None:
    data = encode_command(LeaseRevoke(4, **TAG))
    assert decode_lease_body(data[HEADER_SIZE:], tagged=True) == LeaseRevoke(4)
    assert decode_command(data) == LeaseRevoke(4, **TAG)


# -- what encoding refuses -------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (Put(b"k", b"v", lease=1, ttl_ms=1), "not both"),
        (Put(b"k", b"v", lease=2**63), "lease"),
        (Put(b"k", b"v", lease=U64_MAX), "lease"),
        (Put(b"k", b"v", lease=-1), "lease"),
        (Put(b"k", b"v", ttl_ms=2**64), "ttl_ms"),
        (Put(b"k", b"v", ttl_ms=-1), "ttl_ms"),
        (Put(b"", b"v", ttl_ms=1), "empty"),
        (LeaseGrant(0, 0), "ttl_ms"),
        (LeaseGrant(2**63, 1), "lease_id"),
        (LeaseGrant(-1, 1), "lease_id"),
        (LeaseGrant(1, 2**64), "ttl_ms"),
        (LeaseGrant(0, 1, seq=1), "untagged"),
        (LeaseGrant(0, 1, client_id=1, seq=1, first_incomplete=2), "exceeds"),
        (LeaseRevoke(0), "lease_id"),
        (LeaseRevoke(2**63), "lease_id"),
        (LeaseRevoke(1, first_incomplete=1), "untagged"),
        (LeaseKeepAlive(0), "lease_id"),
        (LeaseKeepAlive(2**63), "lease_id"),
        (LeaseCheckpoint(((2, 1), (1, 1))), "increase"),
        (LeaseCheckpoint(((2, 1), (2, 1))), "increase"),
        (LeaseCheckpoint(((0, 1),)), "lease_id"),
        (LeaseCheckpoint(((2**63, 1),)), "lease_id"),
        (LeaseCheckpoint(((1, -1),)), "remaining_ms"),
        (LeaseExpire(0, 1), "lease_id"),
        (LeaseExpire(2**63, 1), "lease_id"),
        (LeaseExpire(1, -1), "renewed_index"),
        (LeaseExpire(1, 2**64), "renewed_index"),
        (LeaseRevoke(True), "lease_id"),  # a bool is not an id
    ],
)
def test_encode_refuses_invalid_fields(command: Command, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_command(command)


# -- what decoding refuses -------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_leased_put(1, 1), "exactly one"),
        (_leased_put(0, 0), "exactly one"),
        (_leased_put(2**63, 0), "exactly one"),
        (_leased_put(U64_MAX, 0), "exactly one"),
        (_leased_put(1, 0, key=b""), "empty key"),
        (_leased_put(1, 0, flags=2), "flag"),
        (_leased_put(1, 0, prev=3), "presence flag"),
        (_header(OP_PUT_LEASED) + struct.pack("<BQQQI", 0, 0, 1, 0, 5) + b"abc", "overruns"),
        (_header(OP_PUT_LEASED) + b"\x00" * (LEASED_PUT_FIXED - 1), "truncated LeasedPut"),
        (_header(), "without a kind"),
        (_header(client_id=1, seq=1), "without a kind"),
        (_lease(0, 1), "kind 0"),
        (_lease(7, 1), "kind 7"),
        (_lease(255), "kind 255"),
        (_lease(LEASE_GRANT, 1, 0), "zero TTL"),
        (_lease(LEASE_GRANT, 2**63, 1), "bad id"),
        (_lease(LEASE_GRANT, 1), "malformed"),
        (_lease(LEASE_GRANT, 1, 1, 1), "malformed"),
        (_lease(LEASE_GRANT, 1, 1)[:-1], "malformed"),
        (_lease(LEASE_REVOKE, 0), "lease_id"),
        (_lease(LEASE_REVOKE, 2**63), "lease_id"),
        (_lease(LEASE_REVOKE), "malformed"),
        (_lease(LEASE_REVOKE, 1, 1), "malformed"),
        (_lease(LEASE_KEEP_ALIVE, 0), "lease_id"),
        (_lease(LEASE_KEEP_ALIVE, 1) + b"\x00", "malformed"),
        (_lease(LEASE_EXPIRE, 0, 1), "lease_id"),
        (_lease(LEASE_EXPIRE, 2**63, 1), "lease_id"),
        (_lease(LEASE_EXPIRE, 1), "malformed"),
        (_lease(LEASE_EXPIRE, 1, 1, 1), "malformed"),
        (_checkpoint([(2, 1), (1, 1)]), "out of order"),
        (_checkpoint([(1, 1), (1, 1)]), "out of order"),
        (_checkpoint([(0, 1)]), "out of order"),
        (_checkpoint([(2**63, 1)]), "out of order"),
        (_checkpoint([(1, 1)], count=2), "does not match"),
        (_checkpoint([(1, 1), (2, 1)], count=1), "does not match"),
        (_checkpoint([(1, 1)])[:-1], "does not match"),
        (_header() + bytes((LEASE_CHECKPOINT,)) + b"\x00\x00\x00", "malformed"),
        # Only a leader proposes checkpoints and expiries, untagged.
        (_lease(LEASE_EXPIRE, 1, 1, tagged=True), "tagged"),
        (_header(client_id=1, seq=1) + struct.pack("<BI", LEASE_CHECKPOINT, 0), "tagged"),
        (_lease(LEASE_GRANT, 1, tagged=True), "tagged or malformed"),
        (_header(seq=1) + _lease(LEASE_REVOKE, 1)[HEADER_SIZE:], "untagged"),
        (
            _header(client_id=1, seq=1, first_incomplete=2) + b"\x02" + b"\x01" + b"\x00" * 7,
            "exceeds",
        ),
        (_header(op=8), "opcode"),
    ],
)
def test_decode_refuses(data: bytes, message: str) -> None:
    with pytest.raises(CommandDecodeError, match=message):
        decode_command(data)
    # In the log it is a bad command that changes nothing but the applied index.
    sm = KVStateMachine()
    before = sm.snapshot()
    result = sm.apply(1, data)
    assert result.status is Status.BAD_COMMAND
    assert result.error
    other = KVStateMachine()
    other.advance(1)
    assert sm.snapshot() == other.snapshot() != before


def test_a_tagged_checkpoint_or_expire_is_refused_even_when_well_formed() -> None:
    expire = encode_command(LeaseExpire(1, 1))
    checkpoint = encode_command(LeaseCheckpoint(((1, 1),)))
    for data in (expire, checkpoint):
        tagged = _header(client_id=3, seq=1) + data[HEADER_SIZE:]
        with pytest.raises(CommandDecodeError, match="tagged"):
            decode_command(tagged)
        with pytest.raises(CommandDecodeError, match="tagged"):
            decode_lease_body(data[HEADER_SIZE:], tagged=True)
        decode_lease_body(data[HEADER_SIZE:])  # untagged, it is fine


# -- properties ------------------------------------------------------------------------

lease_ids = st.integers(1, TOP_ID)


@st.composite
def lease_commands(draw: st.DrawFn) -> Command:
    """Any valid lease command, or a put with a lease or a TTL."""
    tag = draw(tags())
    kind = draw(st.sampled_from(["grant", "revoke", "keep_alive", "checkpoint", "expire", "put"]))
    if kind == "grant":
        lease_id = draw(st.one_of(st.just(0), lease_ids))
        return LeaseGrant(lease_id, draw(st.integers(1, U64_MAX)), **tag)
    if kind == "revoke":
        return LeaseRevoke(draw(lease_ids), **tag)
    if kind == "keep_alive":
        return LeaseKeepAlive(draw(lease_ids), **tag)
    if kind == "checkpoint":
        ids = sorted(draw(st.sets(lease_ids, max_size=5)))
        return LeaseCheckpoint(tuple((i, draw(st.integers(0, U64_MAX))) for i in ids))
    if kind == "expire":
        return LeaseExpire(draw(lease_ids), draw(st.integers(0, U64_MAX)))
    lease, ttl_ms = (
        (draw(lease_ids), 0) if draw(st.booleans()) else (0, draw(st.integers(1, U64_MAX)))
    )
    return Put(
        draw(st.binary(min_size=1, max_size=16)),
        draw(st.binary(max_size=16)),
        draw(st.one_of(st.none(), st.integers(0, U64_MAX))),
        lease=lease,
        ttl_ms=ttl_ms,
        **tag,
    )


@given(lease_commands())
def test_every_lease_command_round_trips(command: Command) -> None:
    data = encode_command(command)
    assert decode_command(data) == command
    assert encode_command(decode_command(data)) == data


@given(lease_commands(), st.data())
def test_mutated_lease_commands_decode_canonically_or_fail(
    command: Command, data: st.DataObject
) -> None:
    raw = bytearray(encode_command(command))
    position = data.draw(st.integers(0, len(raw) - 1))
    raw[position] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_command(bytes(raw))
    except CommandDecodeError:
        return
    assert encode_command(decoded) == bytes(raw)


@given(st.sampled_from([OP_PUT_LEASED, OP_LEASE]), st.binary(max_size=80))
def test_garbage_after_a_lease_header_decodes_canonically_or_fails(op: int, rest: bytes) -> None:
    data = _header(op) + rest
    try:
        decoded = decode_command(data)
    except CommandDecodeError:
        return
    assert encode_command(decoded) == data


@given(
    st.sampled_from([LEASE_GRANT, LEASE_REVOKE, LEASE_KEEP_ALIVE, LEASE_CHECKPOINT, LEASE_EXPIRE]),
    st.binary(max_size=40),
    st.booleans(),
)
def test_lease_bodies_decode_canonically_or_fail(kind: int, rest: bytes, tagged: bool) -> None:
    data = (_header(client_id=5, seq=1) if tagged else _header()) + bytes((kind,)) + rest
    try:
        decoded = decode_command(data)
    except CommandDecodeError:
        return
    assert not (tagged and kind in (LEASE_CHECKPOINT, LEASE_EXPIRE))
    assert encode_command(decoded) == data
