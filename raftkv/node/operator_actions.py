"""Cluster operations that the Raft process carries out for an operator: membership
changes, leadership transfer, snapshots and backups.

The driver queues each request as it arrives and starts it in its own turn
(driver.py), so the core is only ever called from there. Each request then waits for its
outcome (a configuration committed, a new leader, a snapshot written) and is answered
then, or at its deadline. Membership changes follow one rule: a new member joins as a
learner, and the leader promotes every learner to voter once it has caught up, through
joint consensus (Raft §6). Because promotion depends only on the replicated
configuration, a new leader finishes what an old one began.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Protocol

import orjson

from raftkv.node.node_config import ConfigError, NodeAddress, split_host_port
from raftkv.node.node_snapshot import encode_addresses
from raftkv.node.requests import PendingRequest
from raftkv.node.snapshot_record import SnapshotRecord
from raftkv.raft.core import NotLeaderError, ProposalDroppedError, RaftCore, Role
from raftkv.raft.progress import ProgressState
from raftkv.wire.protocol import Flag, Op, ReplyStatus
from raftkv_ext.codec import ClientReply

__all__ = ["OPERATOR_OPS", "OperatorActions", "OperatorContext"]

OPERATOR_OPS = frozenset(
    {Op.MEMBER_ADD, Op.MEMBER_REMOVE, Op.TRANSFER_LEADER, Op.SNAPSHOT, Op.BACKUP}
)

Waiter = Callable[[bool], ClientReply | None]


class OperatorContext(Protocol):
    """What operator actions read of the node besides the core (the driver)."""

    @property
    def addresses(self) -> Mapping[int, NodeAddress]: ...

    @property
    def cluster_id(self) -> int: ...

    @property
    def applied_index(self) -> int: ...

    @property
    def latest_snapshot(self) -> SnapshotRecord | None: ...

    def request_snapshot(self) -> None: ...


class OperatorActions:
    def __init__(self, core: RaftCore, context: OperatorContext, logger: logging.Logger) -> None:
        self.core = core
        self.context = context
        self.logger = logger
        self._waiting: list[tuple[PendingRequest, Waiter]] = []

    # ------------------------------------------------------------------ dispatch

    def start(self, pending: PendingRequest, now: float) -> None:
        """Carry out an operator request (in the driver's turn) and wait for its end."""
        op = pending.request.op
        handler = {
            Op.MEMBER_ADD: self._member_add,
            Op.MEMBER_REMOVE: self._member_remove,
            Op.TRANSFER_LEADER: self._transfer_leader,
            Op.SNAPSHOT: self._snapshot,
            Op.BACKUP: self._backup,
        }[Op(op)]
        try:
            waiter = handler(pending)
        except _Answered:
            return
        except NotLeaderError:
            self._not_leader(pending)
            return
        except ProposalDroppedError as exc:
            pending.fail(ReplyStatus.CONFLICT, str(exc))
            return
        except (ValueError, ConfigError) as exc:
            pending.fail(ReplyStatus.BAD_REQUEST, str(exc))
            return
        self._waiting.append((pending, waiter))
        self.poll(now)

    def poll(self, now: float) -> None:
        """Answer every operation whose outcome is now known, or whose time is up."""
        if not self._waiting:
            return
        still: list[tuple[PendingRequest, Waiter]] = []
        for pending, waiter in self._waiting:
            if pending.done:
                continue
            reply = waiter(now >= pending.deadline)
            if reply is None:
                still.append((pending, waiter))
            else:
                pending.answer(reply)
        self._waiting = still

    def fail_all(self, message: str) -> None:
        for pending, _ in self._waiting:
            pending.fail(ReplyStatus.UNAVAILABLE, message)
        self._waiting = []

    def _not_leader(self, pending: PendingRequest) -> None:
        core = self.core
        address = self.context.addresses.get(core.leader_id) if core.leader_id else None
        body = address.http_addr.encode() if address else b""
        pending.answer(ClientReply(pending.request.request_id, ReplyStatus.NOT_LEADER, body=body))

    def _ok(self, pending: PendingRequest, document: dict[str, object]) -> ClientReply:
        return ClientReply(pending.request.request_id, ReplyStatus.OK, body=orjson.dumps(document))

    def _require_leader(self) -> None:
        core = self.core
        if core.role is not Role.LEADER:
            raise NotLeaderError(core.leader_id)

    # ------------------------------------------------------------------ membership

    def _member_add(self, pending: PendingRequest) -> Waiter:
        self._require_leader()
        context = self.context
        core = self.core
        try:
            spec = orjson.loads(pending.request.value)
            node_id = int(spec["id"])
            address = NodeAddress(node_id, str(spec["http_addr"]), str(spec["rpc_addr"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise ValueError(
                'expected {"id": int, "rpc_addr": "host:port", "http_addr": "host:port"}'
            ) from None
        if node_id <= 0:
            raise ValueError("node ids are positive integers")
        split_host_port(address.http_addr)
        split_host_port(address.rpc_addr)
        membership = core.membership
        addresses = dict(context.addresses)
        addresses[node_id] = address
        if node_id in membership.voters:
            # A voter asking to join again lost its data: demote it to a learner so it
            # cannot vote until it has caught up, then it is promoted back.
            voters = membership.voters - {node_id}
            if not voters:
                raise ValueError("the only voter cannot rejoin; restore it from a backup")
            index = core.change_membership(
                voters, membership.learners | {node_id}, encode_addresses(addresses)
            )
            core.forget_progress(node_id)
            self.logger.info("node %d rejoins with an empty log: demoted to learner", node_id)
        elif node_id in membership.learners:
            index = core.committed
        else:
            index = core.change_membership(
                membership.voters, membership.learners | {node_id}, encode_addresses(addresses)
            )
        wait = bool(pending.request.flags & Flag.WAIT)

        def waiter(expired: bool) -> ClientReply | None:
            current = core.membership
            if core.committed < index:
                if expired:
                    return ClientReply(
                        pending.request.request_id,
                        ReplyStatus.TIMEOUT,
                        body=b"the membership change did not commit in time; it may still",
                    )
                return None
            is_voter = node_id in current.voters and not current.is_joint
            if wait and not is_voter and not expired:
                return None
            return self._ok(
                pending,
                {
                    "id": node_id,
                    "membership": "voter" if is_voter else "learner",
                    "index": index,
                    "cluster_id": context.cluster_id,
                    "members": {str(n): a.to_json() for n, a in sorted(context.addresses.items())},
                },
            )

        return waiter

    def _member_remove(self, pending: PendingRequest) -> Waiter:
        self._require_leader()
        core = self.core
        node_id = pending.request.limit
        membership = core.membership
        if node_id not in membership.members:
            pending.answer(
                ClientReply(
                    pending.request.request_id,
                    ReplyStatus.NOT_FOUND,
                    body=f"node {node_id} is not a member".encode(),
                )
            )
            raise _Answered
        voters = membership.voters - {node_id}
        if not voters:
            raise ValueError("cannot remove the last voter")
        # The address book keeps the leaving node: it is still a member while the
        # configuration is joint, and peers connect only to current members anyway.
        index = core.change_membership(
            voters, membership.learners - {node_id}, encode_addresses(self.context.addresses)
        )

        def waiter(expired: bool) -> ClientReply | None:
            current = core.membership
            history_index = core.last_config_index
            done = (
                node_id not in current.members
                and not current.is_joint
                and core.committed >= max(index, history_index)
            )
            if done:
                return self._ok(pending, {"removed": node_id, "index": core.committed})
            if expired:
                return ClientReply(
                    pending.request.request_id,
                    ReplyStatus.TIMEOUT,
                    body=b"the removal did not complete in time; it may still",
                )
            return None

        return waiter

    def promote_caught_up_learners(self) -> None:
        """The leader turns a learner into a voter once it holds everything committed."""
        core = self.core
        membership = core.membership
        if core.role is not Role.LEADER or not membership.learners or membership.is_joint:
            return
        if core.last_config_index > core.committed:
            return
        for learner in sorted(membership.learners):
            progress = core.progress.get(learner)
            if (
                progress is None
                or progress.state is not ProgressState.REPLICATE
                or progress.match < core.committed
            ):
                continue
            try:
                core.change_membership(
                    membership.voters | {learner},
                    membership.learners - {learner},
                    encode_addresses(self.context.addresses),
                )
            except ProposalDroppedError:
                return
            self.logger.info("promoting learner %d to voter", learner)
            return

    # ------------------------------------------------------------------ leadership

    def _transfer_leader(self, pending: PendingRequest) -> Waiter:
        self._require_leader()
        core = self.core
        target = pending.request.limit or core.best_transfer_target()
        if target == 0:
            raise ValueError("there is no other voter to hand leadership to")
        if target != core.id:
            core.transfer_leadership(target)

        def waiter(expired: bool) -> ClientReply | None:
            if core.leader_id == target:
                return self._ok(pending, {"leader": target})
            if expired:
                return ClientReply(
                    pending.request.request_id,
                    ReplyStatus.UNAVAILABLE,
                    body=f"node {target} did not take over in time".encode(),
                )
            return None

        return waiter

    # ------------------------------------------------------------------ snapshots

    def _snapshot(self, pending: PendingRequest) -> Waiter:
        return self._snapshot_waiter(pending, backup=False)

    def _backup(self, pending: PendingRequest) -> Waiter:
        self._require_leader()
        return self._snapshot_waiter(pending, backup=True)

    def _snapshot_waiter(self, pending: PendingRequest, *, backup: bool) -> Waiter:
        context = self.context
        wanted = context.applied_index

        def waiter(expired: bool) -> ClientReply | None:
            stored = context.latest_snapshot
            if stored is not None and stored.meta.index >= wanted:
                if backup:
                    return ClientReply(
                        pending.request.request_id,
                        ReplyStatus.OK,
                        stored.meta.index,
                        stored.meta.term,
                        body=stored.location.encode(),
                    )
                return self._ok(
                    pending,
                    {"index": stored.meta.index, "term": stored.meta.term, "size": stored.size},
                )
            if expired:
                return ClientReply(
                    pending.request.request_id,
                    ReplyStatus.UNAVAILABLE,
                    body=b"the snapshot was not written in time",
                )
            context.request_snapshot()
            return None

        return waiter


class _Answered(Exception):
    """The handler answered the request itself."""
