"""Leader election (docs/client.md, "Locks and elections").

A candidate is a lock contender whose queue key holds a value (its address, say): the
first in the queue is the leader, and its value is what observers see. ``campaign``
returns once this candidate leads; ``proclaim`` changes its value while it leads;
``resign`` steps down (the next candidate leads); the leadership is lost, visibly, when
the candidate's lease is. ``leader`` and ``observe`` need no candidacy.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from raftkv.client.answers import KeyValue
from raftkv.client.http_client import AsyncClient, Client
from raftkv.client.lock import AsyncContender, Contender, LockLostError
from raftkv.client.txn import Compare, TxnOp

__all__ = ["DEFAULT_ELECTION_PREFIX", "AsyncElection", "Election", "Leader"]

DEFAULT_ELECTION_PREFIX = "/raftkv/elections/"
_OBSERVE_PROGRESS_S = 5.0


@dataclass(frozen=True)
class Leader:
    """The current leader: its queue ``key``, its ``value``, and ``revision``, the
    revision at which it became a candidate (higher for every later leader)."""

    key: str
    value: bytes
    revision: int


def _leader_of(items: list[KeyValue]) -> Leader | None:
    if not items:
        return None
    first = min(items, key=lambda kv: kv.create_revision)
    return Leader(first.key, first.value, first.create_revision)


def _proclaim_txn(
    key: str, revision: int, value: bytes | str, lease_id: int
) -> tuple[list[Compare], list[TxnOp]]:
    """Write ``value`` to the candidate's key only if it is still the key this candidacy
    created (as etcd's Proclaim): had it been deleted, a plain put would make it anew,
    as a new candidate at the back of the queue, while this one believed it led."""
    return [Compare.create_revision(key, "==", revision)], [TxnOp.put(key, value, lease=lease_id)]


class Election:
    def __init__(
        self,
        client: Client,
        name: str,
        *,
        ttl: float = 10.0,
        prefix: str = DEFAULT_ELECTION_PREFIX,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self._client = client
        self._contender = Contender(client, prefix, name, ttl)
        self._on_lost = on_lost
        self._prefix = f"{prefix}{name}/"

    @property
    def key(self) -> str:
        """This candidate's queue key ("" before campaigning)."""
        return self._contender.key

    @property
    def valid_until(self) -> float:
        """``time.monotonic()`` until which the candidacy (and the leadership, once
        elected) is certainly held."""
        keeper = self._contender.keeper
        return keeper.valid_until if keeper is not None else 0.0

    @property
    def lost(self) -> bool:
        keeper = self._contender.keeper
        return keeper is not None and keeper.lost.is_set()

    def campaign(self, value: bytes | str, timeout: float | None = None) -> int:
        """Stand with ``value`` and wait until elected; returns the leadership's
        revision (a fencing token, as the lock's)."""
        contender = self._contender
        if contender.keeper is not None:
            raise RuntimeError("this Election already has a candidate")
        contender.join(value, self._on_lost)
        try:
            contender.wait_turn(timeout)
        except BaseException:
            contender.leave()
            raise
        return contender.revision

    def proclaim(self, value: bytes | str) -> None:
        """Change the leader's value (LockLostError once the candidacy is gone)."""
        contender = self._contender
        keeper = contender.keeper
        if keeper is None or keeper.lost.is_set():
            raise LockLostError("not a candidate (or the candidacy's lease was lost)")
        compares, success = _proclaim_txn(contender.key, contender.revision, value, keeper.lease_id)
        answer = self._client.txn(compares=compares, success=success)
        if not answer.succeeded:
            raise LockLostError(f"{contender.key}: the candidacy's key is gone")

    def resign(self) -> None:
        self._contender.leave()

    def leader(self) -> Leader | None:
        return _leader_of(self._client.list(self._prefix, limit=10_000))

    def observe(self) -> Iterator[Leader | None]:
        """The leader now, then each time it changes (for ever; close the iterator to
        stop)."""
        client = self._client
        # The watch starts first: a change made after the leader is read is an event.
        with client.watch(
            prefix=self._prefix, progress_interval=_OBSERVE_PROGRESS_S, with_progress=False
        ) as watch:
            current = self.leader()
            yield current
            for _event in watch:
                now = self.leader()
                if now != current:
                    current = now
                    yield current


class AsyncElection:
    def __init__(
        self,
        client: AsyncClient,
        name: str,
        *,
        ttl: float = 10.0,
        prefix: str = DEFAULT_ELECTION_PREFIX,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self._client = client
        self._contender = AsyncContender(client, prefix, name, ttl)
        self._on_lost = on_lost
        self._prefix = f"{prefix}{name}/"

    @property
    def key(self) -> str:
        """This candidate's queue key ("" before campaigning)."""
        return self._contender.key

    @property
    def valid_until(self) -> float:
        """``time.monotonic()`` until which the candidacy (and the leadership, once
        elected) is certainly held."""
        keeper = self._contender.keeper
        return keeper.valid_until if keeper is not None else 0.0

    @property
    def lost(self) -> bool:
        keeper = self._contender.keeper
        return keeper is not None and keeper.lost.is_set()

    async def campaign(self, value: bytes | str, timeout: float | None = None) -> int:
        contender = self._contender
        if contender.keeper is not None:
            raise RuntimeError("this AsyncElection already has a candidate")
        await contender.join(value, self._on_lost)
        try:
            await contender.wait_turn(timeout)
        except BaseException:
            await contender.leave()
            raise
        return contender.revision

    async def proclaim(self, value: bytes | str) -> None:
        contender = self._contender
        keeper = contender.keeper
        if keeper is None or keeper.lost.is_set():
            raise LockLostError("not a candidate (or the candidacy's lease was lost)")
        compares, success = _proclaim_txn(contender.key, contender.revision, value, keeper.lease_id)
        answer = await self._client.txn(compares=compares, success=success)
        if not answer.succeeded:
            raise LockLostError(f"{contender.key}: the candidacy's key is gone")

    async def resign(self) -> None:
        await self._contender.leave()

    async def leader(self) -> Leader | None:
        return _leader_of(await self._client.list(self._prefix, limit=10_000))

    async def observe(self) -> AsyncIterator[Leader | None]:
        async with await self._client.watch(
            prefix=self._prefix, progress_interval=_OBSERVE_PROGRESS_S
        ) as watch:
            current = await self.leader()
            yield current
            async for _event in watch:
                now = await self.leader()
                if now != current:
                    current = now
                    yield current
