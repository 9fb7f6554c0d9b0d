"""The codec's interface: constructors, fields, equality, the exact wire layout, and the
agreement between the type stub and the compiled module."""

from __future__ import annotations

import ast
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest
from codec_strategies import sample_messages

from raftkv_ext import codec
from raftkv_ext.entry import ENTRY_CONFIG, ENTRY_NOOP, ENTRY_NORMAL, Entry

U64_MAX = 2**64 - 1


# --- wire layout -----------------------------------------------------------------------


def _frame(type_id: int, body: bytes) -> bytes:
    return struct.pack("<IB", len(body) + 1, type_id) + body


def _blob(raw: bytes) -> bytes:
    return struct.pack("<I", len(raw)) + raw


def _entry(index: int, term: int, kind: int, data: bytes) -> bytes:
    return struct.pack("<QQBI", index, term, kind, len(data)) + data


# The layout written out independently with struct, one sample per type: a change to
# the wire format has to change this table too.
EXPECTED_FRAMES = [
    _frame(
        1,
        struct.pack("<7QI", 1, 2, 3, 9, 2, 8, 5, 3)
        + _entry(10, 2, ENTRY_NORMAL, b"put a")
        + _entry(11, 2, ENTRY_NOOP, b"")
        + _entry(12, 3, ENTRY_CONFIG, b"\x00\x01cfg"),
    ),
    _frame(2, struct.pack("<7QB", 2, 1, 3, 12, 4, 2, 5, 1)),
    _frame(3, struct.pack("<5QB", 3, 1, 4, 12, 3, 3)),
    _frame(4, struct.pack("<3QB", 1, 3, 4, 3)),
    _frame(
        5, struct.pack("<7QB", 1, 2, 3, 100, 3, 4096, 9000, 1) + _blob(b"cfg") + _blob(b"chunk")
    ),
    _frame(6, struct.pack("<5QB", 2, 1, 3, 100, 4101, 3)),
    _frame(7, struct.pack("<3Q", 1, 2, 3)),
    _frame(8, struct.pack("<3Q", 2, 1, 3) + _blob(b"ctx-1")),
    _frame(9, struct.pack("<4QB", 1, 2, 3, 12, 1) + _blob(b"ctx-1")),
    _frame(
        10, struct.pack("<4QI", 2, 1, 3, 77, 3) + _blob(b"cmd-a") + _blob(b"") + _blob(b"cmd-c")
    ),
    _frame(11, struct.pack("<5QB", 1, 2, 3, 77, 13, 1)),
    _frame(64, b"RFKV" + struct.pack("<IQQ", 1, 0xC1, 2)),
    _frame(65, struct.pack("<QB", 1, 0) + _blob("unknown node 9 \u2014 refused".encode())),
    _frame(
        128,
        struct.pack("<QQQQqQIIB", 5, 9, 4, 3, 3, 10, 1, 2500, 2) + _blob(b"key") + _blob(b"value"),
    ),
    _frame(129, struct.pack("<QQQqH", 5, 13, 3, 13, 200) + _blob(b"value")),
]


@pytest.mark.parametrize(
    ("msg", "expected"),
    list(zip(sample_messages(), EXPECTED_FRAMES, strict=True)),
    ids=lambda v: type(v).__name__ if not isinstance(v, bytes) else "",
)
def test_wire_layout(msg: Any, expected: bytes) -> None:
    assert codec.encode(msg) == expected
    assert codec.decode(expected) == msg


def test_type_ids() -> None:
    assert {cls.__name__: tid for tid, cls in codec.MESSAGE_TYPES.items()} == {
        "AppendEntries": 1,
        "AppendEntriesResponse": 2,
        "RequestVote": 3,
        "RequestVoteResponse": 4,
        "InstallSnapshot": 5,
        "InstallSnapshotResponse": 6,
        "TimeoutNow": 7,
        "ReadIndex": 8,
        "ReadIndexResponse": 9,
        "Propose": 10,
        "ProposeResponse": 11,
        "Handshake": 64,
        "HandshakeReply": 65,
        "ClientRequest": 128,
        "ClientReply": 129,
    }
    for type_id, cls in codec.MESSAGE_TYPES.items():
        assert type_id == cls.TYPE_ID


def test_constants() -> None:
    assert struct.pack("<I", codec.MAGIC) == b"RFKV"
    assert codec.PROTOCOL_VERSION == 1
    assert codec.DEFAULT_MAX_FRAME_SIZE == 64 * 1024 * 1024
    assert codec.FRAME_HEADER_SIZE == 5


def test_negative_revisions_are_twos_complement() -> None:
    req = codec.ClientRequest(1, 0, prev_revision=-1)
    assert codec.encode(req)[5 + 32 : 5 + 40] == b"\xff" * 8
    back = codec.decode(codec.encode(req))
    assert isinstance(back, codec.ClientRequest)
    assert back.prev_revision == -1
    low = codec.decode(codec.encode(codec.ClientReply(1, 0, revision=-(2**63))))
    assert isinstance(low, codec.ClientReply)
    assert low.revision == -(2**63)


# --- construction ----------------------------------------------------------------------


def test_keyword_construction_matches_positional() -> None:
    entries = [Entry(1, 1, 0, b"a")]
    assert codec.AppendEntries(
        sender=1, recipient=2, term=3, prev_index=4, prev_term=5, commit=6, entries=entries, round=7
    ) == codec.AppendEntries(1, 2, 3, 4, 5, 6, entries, 7)
    assert codec.AppendEntriesResponse(
        sender=1, recipient=2, term=3, success=True, index=4, hint_index=5, hint_term=6, round=7
    ) == codec.AppendEntriesResponse(1, 2, 3, True, 4, 5, 6, 7)
    assert codec.RequestVote(
        sender=1, recipient=2, term=3, last_index=4, last_term=5, pre_vote=True, transfer=True
    ) == codec.RequestVote(1, 2, 3, 4, 5, True, True)
    assert codec.RequestVoteResponse(
        sender=1, recipient=2, term=3, granted=True, pre_vote=True
    ) == codec.RequestVoteResponse(1, 2, 3, True, True)
    assert codec.InstallSnapshot(
        sender=1,
        recipient=2,
        term=3,
        snap_index=4,
        snap_term=5,
        config=b"c",
        offset=6,
        total_size=7,
        data=b"d",
        done=True,
    ) == codec.InstallSnapshot(1, 2, 3, 4, 5, b"c", 6, 7, b"d", True)
    assert codec.InstallSnapshotResponse(
        sender=1, recipient=2, term=3, snap_index=4, offset=5, success=True, done=True
    ) == codec.InstallSnapshotResponse(1, 2, 3, 4, 5, True, True)
    assert codec.TimeoutNow(sender=1, recipient=2, term=3) == codec.TimeoutNow(1, 2, 3)
    assert codec.ReadIndex(sender=1, recipient=2, term=3, context=b"x") == codec.ReadIndex(
        1, 2, 3, b"x"
    )
    assert codec.ReadIndexResponse(
        sender=1, recipient=2, term=3, context=b"x", index=4, success=True
    ) == codec.ReadIndexResponse(1, 2, 3, b"x", 4, True)
    assert codec.Propose(
        sender=1, recipient=2, term=3, batch_id=4, commands=[b"c"]
    ) == codec.Propose(1, 2, 3, 4, [b"c"])
    assert codec.ProposeResponse(
        sender=1, recipient=2, term=3, batch_id=4, index=5, success=True
    ) == codec.ProposeResponse(1, 2, 3, 4, 5, True)
    assert codec.Handshake(version=1, cluster_id=2, node_id=3) == codec.Handshake(1, 2, 3)
    assert codec.HandshakeReply(accepted=True, node_id=2, reason="r") == codec.HandshakeReply(
        True, 2, "r"
    )
    assert codec.ClientRequest(
        request_id=1,
        op=2,
        key=b"k",
        value=b"v",
        client_id=3,
        seq=4,
        prev_revision=5,
        limit=6,
        flags=7,
        timeout_ms=8,
    ) == codec.ClientRequest(1, 2, b"k", b"v", 3, 4, 5, 6, 7, 8)
    assert codec.ClientReply(
        request_id=1, status=2, index=3, term=4, revision=5, body=b"b"
    ) == codec.ClientReply(1, 2, 3, 4, 5, b"b")


def test_defaults() -> None:
    ae = codec.AppendEntries(1, 2, 3, 4, 5, 6)
    assert (ae.entries, ae.round) == ([], 0)
    aer = codec.AppendEntriesResponse(1, 2, 3, False, 4)
    assert (aer.hint_index, aer.hint_term, aer.round) == (0, 0, 0)
    rv = codec.RequestVote(1, 2, 3, 4, 5)
    assert (rv.pre_vote, rv.transfer) == (False, False)
    assert codec.RequestVoteResponse(1, 2, 3, True).pre_vote is False
    assert codec.InstallSnapshotResponse(1, 2, 3, 4, 5, True).done is False
    assert codec.HandshakeReply(True, 1).reason == ""
    req = codec.ClientRequest(1, 2)
    assert (
        req.key,
        req.value,
        req.client_id,
        req.seq,
        req.prev_revision,
        req.limit,
        req.flags,
        req.timeout_ms,
    ) == (b"", b"", 0, 0, -1, 0, 0, 0)
    rep = codec.ClientReply(1, 2)
    assert (rep.index, rep.term, rep.revision, rep.body) == (0, 0, 0, b"")


def test_flags_read_back_as_bool() -> None:
    rv = codec.RequestVote(1, 2, 3, 4, 5, pre_vote=1, transfer=0)  # type: ignore[arg-type]
    assert rv.pre_vote is True
    assert rv.transfer is False
    back = codec.decode(codec.encode(rv))
    assert isinstance(back, codec.RequestVote)
    assert back.pre_vote is True


def test_integer_ranges_are_enforced() -> None:
    assert codec.TimeoutNow(U64_MAX, U64_MAX, U64_MAX).term == U64_MAX
    with pytest.raises(OverflowError):
        codec.TimeoutNow(1, 2, -1)
    with pytest.raises(OverflowError):
        codec.TimeoutNow(1, 2, 2**64)
    with pytest.raises(OverflowError):
        codec.ClientRequest(1, 256)
    with pytest.raises(OverflowError):
        codec.ClientRequest(1, 1, flags=2**32)
    with pytest.raises(OverflowError):
        codec.ClientRequest(1, 1, prev_revision=2**63)
    with pytest.raises(OverflowError):
        codec.ClientReply(1, 2**16)
    with pytest.raises(OverflowError):
        codec.Handshake(2**32, 1, 1)
    with pytest.raises(TypeError):
        codec.TimeoutNow(1, 2, "3")  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [None, "text", bytearray(b"x"), 5])
def test_bytes_fields_require_bytes(bad: Any) -> None:
    with pytest.raises(TypeError):
        codec.ReadIndex(1, 2, 3, bad)
    with pytest.raises(TypeError):
        codec.InstallSnapshot(1, 2, 3, 4, 5, b"", 6, 7, bad, True)
    with pytest.raises(TypeError):
        codec.ClientRequest(1, 2, key=bad)
    with pytest.raises(TypeError):
        codec.ClientReply(1, 2, body=bad)


def test_reason_must_be_encodable_text() -> None:
    with pytest.raises(TypeError):
        codec.HandshakeReply(True, 1, None)  # type: ignore[arg-type]
    with pytest.raises(UnicodeEncodeError):
        codec.HandshakeReply(True, 1, "lone \ud800 surrogate")


def test_entries_and_commands_are_type_checked() -> None:
    with pytest.raises(TypeError, match="item 1 is str, not Entry"):
        codec.AppendEntries(1, 2, 3, 4, 5, 6, [Entry(1, 1), "x"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="command 0 is str, not bytes"):
        codec.Propose(1, 2, 3, 4, ["x"])  # type: ignore[list-item]
    # Any iterable is taken and stored as a list.
    ae = codec.AppendEntries(1, 2, 3, 4, 5, 6, (Entry(1, 1), Entry(2, 1)))  # type: ignore[arg-type]
    assert ae.entries == [Entry(1, 1), Entry(2, 1)]
    assert type(ae.entries) is list
    pr = codec.Propose(1, 2, 3, 4, (b"a" for _ in range(2)))  # type: ignore[arg-type]
    assert pr.commands == [b"a", b"a"]


def test_lists_changed_after_construction_are_checked_at_encode_time() -> None:
    ae = codec.AppendEntries(1, 2, 3, 4, 5, 6, [Entry(1, 1)])
    ae.entries.append(b"not an entry")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="item 1 is bytes, not Entry"):
        codec.encode(ae)
    with pytest.raises(TypeError):
        codec.encode_batch([codec.TimeoutNow(1, 2, 3), ae])
    pr = codec.Propose(1, 2, 3, 4, [b"a"])
    pr.commands.append(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="command 1 is NoneType, not bytes"):
        codec.encode(pr)


def test_fields_are_read_only() -> None:
    msg = codec.TimeoutNow(1, 2, 3)
    with pytest.raises(AttributeError):
        msg.term = 4  # type: ignore[misc]
    ae = codec.AppendEntries(1, 2, 3, 4, 5, 6)
    with pytest.raises(AttributeError):
        ae.entries = []  # type: ignore[misc]


def test_equality() -> None:
    a = codec.RequestVoteResponse(1, 2, 3, True)
    assert a == codec.RequestVoteResponse(1, 2, 3, True)
    assert (a != codec.RequestVoteResponse(1, 2, 3, True)) is False
    assert a != codec.RequestVoteResponse(1, 2, 3, False)
    assert a != codec.RequestVoteResponse(1, 2, 4, True)
    # Same field values in another class are another message.
    assert codec.TimeoutNow(1, 2, 3) != codec.ReadIndex(1, 2, 3, b"")
    assert codec.ProposeResponse(1, 2, 3, 4, 5, True) != codec.ProposeResponse(1, 2, 3, 4, 6, True)
    assert a != (1, 2, 3, True)
    assert a != None  # noqa: E711
    e1 = codec.AppendEntries(1, 2, 3, 4, 5, 6, [Entry(1, 1, 0, b"a")])
    assert e1 == codec.AppendEntries(1, 2, 3, 4, 5, 6, [Entry(1, 1, 0, b"a")])
    assert e1 != codec.AppendEntries(1, 2, 3, 4, 5, 6, [Entry(1, 1, 0, b"b")])


def test_messages_are_not_hashable() -> None:
    with pytest.raises(TypeError):
        hash(codec.TimeoutNow(1, 2, 3))


def test_bases() -> None:
    for cls in codec.MESSAGE_TYPES.values():
        assert issubclass(cls, codec.MessageBase)
        assert issubclass(cls, codec.PeerMessage) == (cls.TYPE_ID < 64)


@pytest.mark.parametrize("msg", sample_messages(), ids=lambda m: type(m).__name__)
def test_pickle(msg: Any) -> None:
    assert pickle.loads(pickle.dumps(msg)) == msg


# --- misuse of the functions -------------------------------------------------------------


def test_encode_refuses_what_is_not_a_message() -> None:
    for bad in (None, 5, b"bytes", Entry(1, 1), codec.MessageBase(), codec.PeerMessage()):
        with pytest.raises(TypeError):
            codec.encode(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        codec.encode_batch([codec.TimeoutNow(1, 2, 3), 5])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        codec.encode_batch(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        codec.encode_entries([Entry(1, 1), 5])  # type: ignore[list-item]
    assert codec.encode_batch([]) == b""
    assert codec.encode_entries([]) == b""
    assert codec.decode_entries(b"") == []


def test_decode_refuses_what_is_not_bytes() -> None:
    with pytest.raises(TypeError):
        codec.decode("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        codec.FrameDecoder().feed("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        codec.decode_entries(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", [0, -1])
def test_frame_limit_must_be_positive(limit: int) -> None:
    with pytest.raises(ValueError, match="max_frame_size must be at least 1"):
        codec.FrameDecoder(limit)
    with pytest.raises(ValueError, match="max_frame_size must be at least 1"):
        codec.decode(codec.encode(codec.TimeoutNow(1, 2, 3)), limit)


def test_frame_decoder_properties() -> None:
    decoder = codec.FrameDecoder(1234)
    assert decoder.max_frame_size == 1234
    assert decoder.buffered == 0
    assert decoder.poisoned is False
    assert codec.FrameDecoder().max_frame_size == codec.DEFAULT_MAX_FRAME_SIZE


def test_frame_decoder_after_a_large_buffered_frame() -> None:
    big = codec.InstallSnapshot(1, 2, 3, 4, 5, b"", 0, 3_000_000, bytes(3_000_000), True)
    data = codec.encode(big)
    decoder = codec.FrameDecoder()
    for start in range(0, len(data), 65536):
        got = decoder.feed(data[start : start + 65536])
    assert got == [big]
    assert decoder.buffered == 0
    # The decoder keeps working for the small frames that follow.
    assert (
        decoder.feed(codec.encode(codec.TimeoutNow(1, 2, 3)) * 3) == [codec.TimeoutNow(1, 2, 3)] * 3
    )


# --- the stub --------------------------------------------------------------------------


def _stub_classes() -> dict[str, tuple[list[str], set[str]]]:
    path = Path(codec.__file__).with_name("codec.pyi")
    tree = ast.parse(path.read_text())
    out: dict[str, tuple[list[str], set[str]]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
            members = set()
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
            out[node.name] = (bases, members)
    return out


def test_stub_matches_the_module() -> None:
    classes = _stub_classes()
    assert set(codec.MESSAGE_TYPES.values()) <= {getattr(codec, n) for n in classes}
    for name, (bases, members) in classes.items():
        runtime = getattr(codec, name)
        assert [b.__name__ for b in runtime.__bases__] == (bases or ["object"]), name
        for member in members:
            assert hasattr(runtime, member), f"{name}.{member}"
    for name in (
        "encode",
        "encode_batch",
        "decode",
        "encode_entries",
        "decode_entries",
        "MAGIC",
        "PROTOCOL_VERSION",
        "DEFAULT_MAX_FRAME_SIZE",
        "FRAME_HEADER_SIZE",
        "MESSAGE_TYPES",
    ):
        assert hasattr(codec, name), name


@pytest.mark.parametrize("msg", sample_messages(), ids=lambda m: type(m).__name__)
def test_stub_declares_every_field(msg: Any) -> None:
    _, members = _stub_classes()[type(msg).__name__]
    fields = {m for m in members if not m.startswith("__") and m != "TYPE_ID"}
    state = msg.__reduce__()[1]
    # What a message pickles is exactly the fields the stub declares, no more, no less.
    assert len(state) == len(fields)
    assert sorted(map(repr, state)) == sorted(repr(getattr(msg, f)) for f in fields)
