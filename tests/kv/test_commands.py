"""Command encoding: round trips, canonical form, stable layout, garbage rejection."""

from __future__ import annotations

import struct

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from raftkv.kv import (
    Command,
    CommandDecodeError,
    Delete,
    DeletePrefix,
    Put,
    decode_command,
    encode_command,
)
from raftkv.kv.commands import FORMAT_VERSION, Txn, decode_raw

from ._strategies import U64_MAX, any_commands


@given(any_commands())
def test_round_trip(cmd: Command) -> None:
    data = encode_command(cmd)
    assert decode_command(data) == cmd
    assert type(decode_command(data)) is type(cmd)


@given(any_commands())
def test_version_byte_first(cmd: Command) -> None:
    assert encode_command(cmd)[0] == FORMAT_VERSION


@given(any_commands())
def test_decode_accepts_bytearray_and_memoryview(cmd: Command) -> None:
    data = encode_command(cmd)
    assert decode_command(bytearray(data)) == cmd
    assert decode_command(memoryview(data)) == cmd


def test_layout_is_stable() -> None:
    """The exact bytes are part of the log format: they must never change silently."""
    put = Put(b"k", b"val", 7, client_id=1, seq=5, first_incomplete=3)
    assert encode_command(put).hex() == (
        "0101"  # version 1, opcode Put
        "0100000000000000"  # client_id 1
        "0500000000000000"  # seq 5
        "0300000000000000"  # first_incomplete 3
        "01"  # flags: prev_revision present
        "0700000000000000"  # prev_revision 7
        "01000000"  # key length 1
        "6b"  # key
        "76616c"  # value
    )
    delete = Delete(b"k")
    assert encode_command(delete).hex() == ("0102" + "00" * 24 + "00" + "00" * 8 + "6b")
    prefix = DeletePrefix(b"p/")
    assert encode_command(prefix).hex() == "0103" + "00" * 24 + "702f"


def test_empty_value_and_empty_prefix() -> None:
    assert decode_command(encode_command(Put(b"k", b""))) == Put(b"k", b"")
    assert decode_command(encode_command(DeletePrefix(b""))) == DeletePrefix(b"")


def test_value_may_contain_anything() -> None:
    cmd = Put(b"\x00\xff", b"\x00" * 1000 + b"\xff", 0)
    assert decode_command(encode_command(cmd)) == cmd


@given(st.binary(max_size=200))
@example(b"")
@example(b"\x01\x01" + b"\x00" * 24)
@example(b"\x01\x03" + b"\x00" * 24)
def test_garbage_raises_only_command_decode_error(data: bytes) -> None:
    try:
        cmd = decode_command(data)
    except CommandDecodeError:
        return
    # Anything that decodes is canonical: it re-encodes to the same bytes.
    assert encode_command(cmd) == data


@given(any_commands(), st.data())
def test_mutated_encodings_decode_canonically_or_fail(cmd: Command, data: st.DataObject) -> None:
    raw = bytearray(encode_command(cmd))
    pos = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    raw[pos] = data.draw(st.integers(min_value=0, max_value=255))
    try:
        decoded = decode_command(bytes(raw))
    except CommandDecodeError:
        return
    assert encode_command(decoded) == bytes(raw)


@given(any_commands())
def test_every_truncation_of_a_keyed_header_fails(cmd: Command) -> None:
    data = encode_command(cmd)
    fixed = {DeletePrefix: 26, Put: 39, Delete: 35, Txn: 32}[type(cmd)]
    for size in range(fixed):
        with pytest.raises(CommandDecodeError):
            decode_command(data[:size])


def _header(
    version: int = 1, op: int = 1, client_id: int = 0, seq: int = 0, first_incomplete: int = 0
) -> bytes:
    return struct.pack("<BBQQQ", version, op, client_id, seq, first_incomplete)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short"),
        (_header()[:-1], "too short"),
        (_header(version=0) + b"\x00" * 13 + b"k", "version"),
        (_header(version=2) + b"\x00" * 13 + b"k", "version"),
        (_header(op=0), "opcode"),
        (_header(op=8), "opcode"),
        (_header(op=5), "bad transaction"),
        (_header(op=1) + b"\x00" * 12, "truncated Put"),
        (_header(op=2) + b"\x00" * 8, "truncated Delete"),
        (_header(op=1) + struct.pack("<BQI", 0, 0, 5) + b"abcd", "overruns"),
        (_header(op=1) + struct.pack("<BQI", 0, 0, 0) + b"value", "empty key"),
        (_header(op=2) + struct.pack("<BQ", 0, 0), "empty key"),
        (_header(op=1) + struct.pack("<BQI", 2, 0, 1) + b"k", "flag"),
        (_header(op=2) + struct.pack("<BQ", 0x81, 0) + b"k", "flag"),
        (_header(op=2) + struct.pack("<BQ", 0, 9) + b"k", "presence flag"),
        (_header(op=3, seq=1), "untagged"),
        (_header(op=3, first_incomplete=1), "untagged"),
        (_header(op=3, client_id=1, seq=2, first_incomplete=3), "exceeds seq"),
    ],
)
def test_specific_garbage(data: bytes, message: str) -> None:
    with pytest.raises(CommandDecodeError, match=message):
        decode_command(data)


@pytest.mark.parametrize("data", ["text", None, 12, [1, 2]])
def test_non_bytes_payload(data: object) -> None:
    with pytest.raises(CommandDecodeError, match="must be bytes"):
        decode_command(data)  # type: ignore[arg-type]


def test_decode_raw_fields() -> None:
    data = encode_command(Put(b"key", b"value", 0, client_id=9, seq=4, first_incomplete=2))
    assert decode_raw(data) == (1, 9, 4, 2, b"key", b"value", 0)
    assert decode_raw(encode_command(Delete(b"key"))) == (2, 0, 0, 0, b"key", b"", None)
    assert decode_raw(encode_command(DeletePrefix(b"p"))) == (3, 0, 0, 0, b"p", b"", None)


def test_extremes_round_trip() -> None:
    cmd = Put(b"k", b"v", U64_MAX, client_id=U64_MAX, seq=U64_MAX, first_incomplete=U64_MAX)
    assert decode_command(encode_command(cmd)) == cmd


@pytest.mark.parametrize(
    "cmd",
    [
        Put(b"", b"v"),
        Delete(b""),
        Put(b"k", b"v", -1),
        Put(b"k", b"v", 2**64),
        Delete(b"k", True),
        Put(b"k", b"v", client_id=-1),
        Put(b"k", b"v", client_id=1, seq=2**64),
        Put(b"k", b"v", client_id=1, seq=1, first_incomplete=2),
        DeletePrefix(b"p", seq=1),
        DeletePrefix(b"p", first_incomplete=1),
        Put("k", b"v"),  # type: ignore[arg-type]
        Put(b"k", "v"),  # type: ignore[arg-type]
        Delete(bytearray(b"k")),  # type: ignore[arg-type]
        DeletePrefix("p"),  # type: ignore[arg-type]
    ],
)
def test_encode_rejects_invalid_fields(cmd: Command) -> None:
    with pytest.raises(ValueError):
        encode_command(cmd)


def test_encode_rejects_non_commands() -> None:
    with pytest.raises(TypeError):
        encode_command(b"payload")  # type: ignore[arg-type]


def test_commands_are_immutable_and_keyword_tagged() -> None:
    put = Put(b"k", b"v", client_id=3, seq=1, first_incomplete=1)
    with pytest.raises(AttributeError):
        put.key = b"x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        Put(b"k", b"v", None, 3)  # type: ignore[call-arg]
