"""Hostile input: bytes that claim to be an encoded membership (a config entry's payload,
a snapshot header's membership) either decode or raise MembershipDecodeError."""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftkv.raft.membership import Membership, MembershipDecodeError

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
IDS = st.frozensets(st.integers(0, 2**64 - 1), max_size=5)


def decode_or_refuse(data: bytes) -> None:
    try:
        membership, context = Membership.decode(data)
    except MembershipDecodeError as exc:
        assert str(exc)
        return
    # Whatever decodes is a real membership that survives its own round trip.
    assert Membership.decode(membership.encode(context)) == (membership, context)


@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    decode_or_refuse(data)


@FUZZ
@given(
    counts=st.tuples(*[st.integers(0, 2**32 - 1) | st.integers(0, 8)] * 3),
    version=st.sampled_from([1, 1, 0, 2, 255]),
    rest=st.binary(max_size=200),
)
def test_random_counts_behind_a_header(
    counts: tuple[int, int, int], version: int, rest: bytes
) -> None:
    # A hostile count must be refused before anything of that size is unpacked.
    decode_or_refuse(struct.pack("<BIII", version, *counts) + rest)


@FUZZ
@given(
    voters=IDS,
    outgoing=IDS,
    learners=IDS,
    context=st.binary(max_size=50),
    data=st.data(),
)
def test_mutated_encodings(
    voters: frozenset[int],
    outgoing: frozenset[int],
    learners: frozenset[int],
    context: bytes,
    data: st.DataObject,
) -> None:
    raw = bytearray(Membership(voters, outgoing, learners).encode(context))
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, len(raw)))
        if kind == "flip" and at < len(raw):
            raw[at] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del raw[at:]
        else:
            raw.insert(at, data.draw(st.integers(0, 255)))
    decode_or_refuse(bytes(raw))
