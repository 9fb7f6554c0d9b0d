"""Hypothesis strategies for every codec message, shared by the codec test modules.

Integer fields cover their whole range (Hypothesis favours the bounds), bytes fields run
from empty to a few hundred KiB, and entry lists from none to a few hundred.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from raftkv_ext import codec
from raftkv_ext.entry import ENTRY_CONFIG, ENTRY_NOOP, ENTRY_NORMAL, Entry

U8 = st.integers(0, 2**8 - 1)
U16 = st.integers(0, 2**16 - 1)
U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
ENTRY_TYPES = st.sampled_from([ENTRY_NORMAL, ENTRY_CONFIG, ENTRY_NOOP])


def _big(n_and_seed: tuple[int, int]) -> bytes:
    # Cheap to build yet not a single repeated byte, so a misplaced copy shows up.
    n, seed = n_and_seed
    pattern = bytes((seed + i * 7) & 0xFF for i in range(251))
    return (pattern * (n // 251 + 1))[:n]


SMALL_BYTES = st.binary(max_size=48)
BIG_BYTES = st.tuples(st.integers(1 << 10, 1 << 18), st.integers(0, 255)).map(_big)
BYTES = st.one_of(st.just(b""), SMALL_BYTES, BIG_BYTES)

SMALL_ENTRIES = st.builds(Entry, U64, U64, ENTRY_TYPES, SMALL_BYTES)
ANY_ENTRIES = st.builds(Entry, U64, U64, ENTRY_TYPES, BYTES)
ENTRY_LISTS = st.one_of(
    st.lists(SMALL_ENTRIES, max_size=8),
    st.lists(SMALL_ENTRIES, min_size=100, max_size=300),
    st.lists(ANY_ENTRIES, max_size=3),
)
COMMAND_LISTS = st.one_of(
    st.lists(SMALL_BYTES, max_size=8),
    st.lists(SMALL_BYTES, min_size=100, max_size=300),
    st.lists(BYTES, max_size=3),
)

MESSAGES: dict[type[Any], st.SearchStrategy[Any]] = {
    codec.AppendEntries: st.builds(
        codec.AppendEntries,
        sender=U64,
        recipient=U64,
        term=U64,
        prev_index=U64,
        prev_term=U64,
        commit=U64,
        entries=ENTRY_LISTS,
        round=U64,
    ),
    codec.AppendEntriesResponse: st.builds(
        codec.AppendEntriesResponse,
        sender=U64,
        recipient=U64,
        term=U64,
        success=st.booleans(),
        index=U64,
        hint_index=U64,
        hint_term=U64,
        round=U64,
    ),
    codec.RequestVote: st.builds(
        codec.RequestVote,
        sender=U64,
        recipient=U64,
        term=U64,
        last_index=U64,
        last_term=U64,
        pre_vote=st.booleans(),
        transfer=st.booleans(),
    ),
    codec.RequestVoteResponse: st.builds(
        codec.RequestVoteResponse,
        sender=U64,
        recipient=U64,
        term=U64,
        granted=st.booleans(),
        pre_vote=st.booleans(),
    ),
    codec.InstallSnapshot: st.builds(
        codec.InstallSnapshot,
        sender=U64,
        recipient=U64,
        term=U64,
        snap_index=U64,
        snap_term=U64,
        config=BYTES,
        offset=U64,
        total_size=U64,
        data=BYTES,
        done=st.booleans(),
    ),
    codec.InstallSnapshotResponse: st.builds(
        codec.InstallSnapshotResponse,
        sender=U64,
        recipient=U64,
        term=U64,
        snap_index=U64,
        offset=U64,
        success=st.booleans(),
        done=st.booleans(),
    ),
    codec.TimeoutNow: st.builds(codec.TimeoutNow, sender=U64, recipient=U64, term=U64),
    codec.ReadIndex: st.builds(codec.ReadIndex, sender=U64, recipient=U64, term=U64, context=BYTES),
    codec.ReadIndexResponse: st.builds(
        codec.ReadIndexResponse,
        sender=U64,
        recipient=U64,
        term=U64,
        context=BYTES,
        index=U64,
        success=st.booleans(),
    ),
    codec.Propose: st.builds(
        codec.Propose, sender=U64, recipient=U64, term=U64, batch_id=U64, commands=COMMAND_LISTS
    ),
    codec.ProposeResponse: st.builds(
        codec.ProposeResponse,
        sender=U64,
        recipient=U64,
        term=U64,
        batch_id=U64,
        index=U64,
        success=st.booleans(),
    ),
    codec.Handshake: st.builds(codec.Handshake, version=U32, cluster_id=U64, node_id=U64),
    codec.HandshakeReply: st.builds(
        codec.HandshakeReply,
        accepted=st.booleans(),
        node_id=U64,
        reason=st.one_of(st.text(), st.text(max_size=2000)),
    ),
    codec.ClientRequest: st.builds(
        codec.ClientRequest,
        request_id=U64,
        op=U8,
        key=BYTES,
        value=BYTES,
        client_id=U64,
        seq=U64,
        prev_revision=I64,
        limit=U64,
        flags=U32,
        timeout_ms=U32,
        first_incomplete=U64,
    ),
    codec.ClientReply: st.builds(
        codec.ClientReply, request_id=U64, status=U16, index=U64, term=U64, revision=I64, body=BYTES
    ),
}

ANY_MESSAGE: st.SearchStrategy[Any] = st.one_of(*MESSAGES.values())


# Small messages only: cheap enough to feed a byte at a time or to mutate many times.
_SB = SMALL_BYTES
SMALL_MESSAGES: dict[type[Any], st.SearchStrategy[Any]] = {
    codec.AppendEntries: st.builds(
        codec.AppendEntries, U64, U64, U64, U64, U64, U64, st.lists(SMALL_ENTRIES, max_size=4), U64
    ),
    codec.AppendEntriesResponse: MESSAGES[codec.AppendEntriesResponse],
    codec.RequestVote: MESSAGES[codec.RequestVote],
    codec.RequestVoteResponse: MESSAGES[codec.RequestVoteResponse],
    codec.InstallSnapshot: st.builds(
        codec.InstallSnapshot, U64, U64, U64, U64, U64, _SB, U64, U64, _SB, st.booleans()
    ),
    codec.InstallSnapshotResponse: MESSAGES[codec.InstallSnapshotResponse],
    codec.TimeoutNow: MESSAGES[codec.TimeoutNow],
    codec.ReadIndex: st.builds(codec.ReadIndex, U64, U64, U64, _SB),
    codec.ReadIndexResponse: st.builds(
        codec.ReadIndexResponse, U64, U64, U64, _SB, U64, st.booleans()
    ),
    codec.Propose: st.builds(codec.Propose, U64, U64, U64, U64, st.lists(_SB, max_size=4)),
    codec.ProposeResponse: MESSAGES[codec.ProposeResponse],
    codec.Handshake: MESSAGES[codec.Handshake],
    codec.HandshakeReply: st.builds(codec.HandshakeReply, st.booleans(), U64, st.text(max_size=20)),
    codec.ClientRequest: st.builds(
        codec.ClientRequest, U64, U8, _SB, _SB, U64, U64, I64, U64, U32, U32, U64
    ),
    codec.ClientReply: st.builds(codec.ClientReply, U64, U16, U64, U64, I64, _SB),
}
SMALL_MESSAGE: st.SearchStrategy[Any] = st.one_of(*SMALL_MESSAGES.values())


def sample_messages() -> list[Any]:
    """One hand-built, non-trivial instance of every message type, in type-id order."""
    entries = [
        Entry(10, 2, ENTRY_NORMAL, b"put a"),
        Entry(11, 2, ENTRY_NOOP, b""),
        Entry(12, 3, ENTRY_CONFIG, b"\x00\x01cfg"),
    ]
    return [
        codec.AppendEntries(1, 2, 3, 9, 2, 8, entries, round=5),
        codec.AppendEntriesResponse(2, 1, 3, True, 12, hint_index=4, hint_term=2, round=5),
        codec.RequestVote(3, 1, 4, 12, 3, pre_vote=True, transfer=True),
        codec.RequestVoteResponse(1, 3, 4, True, pre_vote=True),
        codec.InstallSnapshot(1, 2, 3, 100, 3, b"cfg", 4096, 9000, b"chunk", True),
        codec.InstallSnapshotResponse(2, 1, 3, 100, 4101, True, done=True),
        codec.TimeoutNow(1, 2, 3),
        codec.ReadIndex(2, 1, 3, b"ctx-1"),
        codec.ReadIndexResponse(1, 2, 3, b"ctx-1", 12, True),
        codec.Propose(2, 1, 3, 77, [b"cmd-a", b"", b"cmd-c"]),
        codec.ProposeResponse(1, 2, 3, 77, 13, True),
        codec.Handshake(codec.PROTOCOL_VERSION, 0xC1, 2),
        codec.HandshakeReply(False, 1, "unknown node 9 \u2014 refused"),
        codec.ClientRequest(
            5,
            2,
            b"key",
            b"value",
            client_id=9,
            seq=4,
            prev_revision=3,
            limit=10,
            flags=1,
            timeout_ms=2500,
            first_incomplete=3,
        ),
        codec.ClientReply(5, 200, index=13, term=3, revision=13, body=b"value"),
    ]
