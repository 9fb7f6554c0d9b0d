"""Cluster membership and quorum arithmetic, including joint consensus (Raft §6)."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

_VERSION = 1
_HEADER = struct.Struct("<BIII")
_CONTEXT_LEN = struct.Struct("<I")


class MembershipDecodeError(ValueError):
    """Bytes that are not an encoded membership."""


def _majority_value(ids: frozenset[int], values: Mapping[int, int]) -> int | None:
    """The largest v such that a majority of ``ids`` have a value >= v.

    None when ``ids`` is empty: an empty set places no constraint.
    """
    if not ids:
        return None
    ranked = sorted((values.get(node, 0) for node in ids), reverse=True)
    return ranked[len(ranked) // 2]


@dataclass(frozen=True, slots=True)
class Membership:
    """Who votes and who only listens.

    ``voters`` is the new configuration; ``outgoing`` is non-empty only while joint
    (C_old,new), when every decision needs a majority of both sets. ``learners`` receive
    the log but never vote or count towards a quorum.
    """

    voters: frozenset[int] = field(default_factory=frozenset)
    outgoing: frozenset[int] = field(default_factory=frozenset)
    learners: frozenset[int] = field(default_factory=frozenset)

    @classmethod
    def of(
        cls,
        voters: Iterable[int],
        learners: Iterable[int] = (),
        outgoing: Iterable[int] = (),
    ) -> Membership:
        return cls(frozenset(voters), frozenset(outgoing), frozenset(learners))

    @property
    def is_joint(self) -> bool:
        return bool(self.outgoing)

    @property
    def all_voters(self) -> frozenset[int]:
        return self.voters | self.outgoing

    @property
    def members(self) -> frozenset[int]:
        return self.voters | self.outgoing | self.learners

    def is_voter(self, node_id: int) -> bool:
        return node_id in self.voters or node_id in self.outgoing

    def committed_value(self, values: Mapping[int, int]) -> int:
        """The largest value that a quorum has reached (both majorities when joint).

        Used for the commit index (values are match indexes) and for ReadIndex rounds.
        """
        new = _majority_value(self.voters, values)
        old = _majority_value(self.outgoing, values)
        candidates = [v for v in (new, old) if v is not None]
        return min(candidates) if candidates else 0

    def vote_result(self, votes: Mapping[int, bool]) -> bool | None:
        """True when won, False when lost, None while undecided (§6: both majorities)."""
        results = [_tally(ids, votes) for ids in (self.voters, self.outgoing) if ids]
        if not results:
            return None
        if any(r is False for r in results):
            return False
        if all(r is True for r in results):
            return True
        return None

    def has_quorum(self, active: Iterable[int]) -> bool:
        """Whether the nodes in ``active`` make a quorum."""
        active_set = set(active)
        return self.vote_result({node: node in active_set for node in self.all_voters}) is True

    def encode(self, context: bytes = b"") -> bytes:
        """Compact, deterministic encoding; ``context`` is carried for the application."""
        parts = [_HEADER.pack(_VERSION, len(self.voters), len(self.outgoing), len(self.learners))]
        for ids in (self.voters, self.outgoing, self.learners):
            parts.append(struct.pack(f"<{len(ids)}Q", *sorted(ids)))
        parts.append(_CONTEXT_LEN.pack(len(context)))
        parts.append(context)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> tuple[Membership, bytes]:
        """Inverse of encode: the membership and the application's context."""
        try:
            version, n_voters, n_outgoing, n_learners = _HEADER.unpack_from(data, 0)
            if version != _VERSION:
                raise MembershipDecodeError(f"unknown membership version {version}")
            offset = _HEADER.size
            sets: list[frozenset[int]] = []
            for count in (n_voters, n_outgoing, n_learners):
                if offset + 8 * count > len(data):
                    raise MembershipDecodeError("membership ids run past the end")
                sets.append(frozenset(struct.unpack_from(f"<{count}Q", data, offset)))
                offset += 8 * count
            (context_len,) = _CONTEXT_LEN.unpack_from(data, offset)
            offset += _CONTEXT_LEN.size
            if offset + context_len != len(data):
                raise MembershipDecodeError("membership context length does not match")
            context = bytes(data[offset : offset + context_len])
        except struct.error as exc:
            raise MembershipDecodeError(f"truncated membership: {exc}") from exc
        return cls(sets[0], sets[1], sets[2]), context

    def __str__(self) -> str:
        text = f"voters={sorted(self.voters)}"
        if self.outgoing:
            text += f" outgoing={sorted(self.outgoing)}"
        if self.learners:
            text += f" learners={sorted(self.learners)}"
        return text


def _tally(ids: frozenset[int], votes: Mapping[int, bool]) -> bool | None:
    granted = sum(1 for node in ids if votes.get(node) is True)
    rejected = sum(1 for node in ids if votes.get(node) is False)
    need = len(ids) // 2 + 1
    if granted >= need:
        return True
    if rejected > len(ids) - need:
        return False
    return None
