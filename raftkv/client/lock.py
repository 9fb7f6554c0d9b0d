"""A distributed lock with a fencing token (docs/client.md, "Locks and elections").

Each contender holds a lease and creates one key under the lock's prefix, named by its
lease, attached to that lease. The contenders are ordered by their key's create
revision; the first one holds the lock, and each of the others waits for the one just
before it to go (watching that key alone, so a release wakes one waiter, not all).

The **fencing token** is the create revision of the holder's key: the revision at which
it joined the queue, higher for every later holder. A resource that remembers the
highest token it has accepted, and refuses lower ones, refuses a holder that was
superseded (its lease expired while it was paused, say) even if that holder still
believes it holds the lock.

The lock is lost when its lease is: the keeper (lease_keeper.py) tells the holder
before the store could give the lock to anyone else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

from raftkv.client.answers import KeyValue
from raftkv.client.http_client import AsyncClient, Client
from raftkv.client.lease_keeper import AsyncLeaseKeeper, LeaseKeeper
from raftkv.wire.errors import NotFoundError, RaftkvError

__all__ = [
    "DEFAULT_LOCK_PREFIX",
    "AsyncContender",
    "AsyncLock",
    "Contender",
    "Lock",
    "LockLostError",
    "LockTimeoutError",
    "QueuePlace",
    "queue_place",
]

DEFAULT_LOCK_PREFIX = "/raftkv/locks/"
log = logging.getLogger("raftkv.client")
_WATCH_PROGRESS_S = 1.0


class LockLostError(RaftkvError):
    """The lease behind a lock or a candidacy expired (or was revoked)."""


class LockTimeoutError(RaftkvError):
    """The lock (or the leadership) was not obtained within the timeout."""


@dataclass(frozen=True)
class QueuePlace:
    """Where a contender stands: ``first`` when it holds the lock; otherwise
    ``predecessor`` is the key to wait for."""

    first: bool
    predecessor: KeyValue | None
    mine: KeyValue | None


def queue_key(prefix: str, name: str, lease_id: int) -> str:
    return f"{prefix}{name}/{lease_id:016x}"


def queue_place(items: Sequence[KeyValue], my_key: str) -> QueuePlace:
    """The place of ``my_key`` among the contenders ``items`` (a listing of the queue's
    prefix). ``mine`` is None when the key is gone: its lease expired."""
    ordered = sorted(items, key=lambda kv: kv.create_revision)
    mine = next((kv for kv in ordered if kv.key == my_key), None)
    if mine is None:
        return QueuePlace(False, None, None)
    before = [kv for kv in ordered if kv.create_revision < mine.create_revision]
    return QueuePlace(not before, before[-1] if before else None, mine)


class _QueueSpot:
    """What a contender (sync or async) knows of its place: the lock's queue and, once it
    joined, its key and the revision it joined at."""

    def __init__(self, prefix: str, name: str, ttl: float) -> None:
        if not name or "/" in name:
            raise ValueError(f"a lock or election name is a non-empty word without '/': {name!r}")
        self.queue_prefix = f"{prefix}{name}/"
        self.prefix = prefix
        self.name = name
        self.ttl = ttl
        self.key = ""
        self.revision = 0


def _check_still_valid(key: str, lost: bool, valid_until: float) -> None:
    """First in the queue, but only worth it while the lease is certainly alive: a wait
    that outlasted it (a paused client) could hand over a lock another client may
    already hold."""
    if lost or time.monotonic() >= valid_until:
        raise LockLostError(f"{key}: the lease could have expired while waiting")


def _revoke_quietly(key: str, error: RaftkvError) -> None:
    # Releasing is a courtesy: a lease not revoked expires by itself after its TTL. An
    # error here must not hide what the holder's own block raised.
    log.warning("%s: could not revoke its lease (%s); it expires after its TTL", key, error)


class Contender(_QueueSpot):
    """What Lock and Election share: a lease, a queue key, and waiting for one's turn."""

    def __init__(self, client: Client, prefix: str, name: str, ttl: float) -> None:
        _QueueSpot.__init__(self, prefix, name, ttl)
        self.client = client
        self.keeper: LeaseKeeper | None = None

    def join(self, value: bytes | str, on_lost: Callable[[str], None] | None) -> None:
        client = self.client
        sent = time.monotonic()
        grant = client.lease_grant(self.ttl)
        self.keeper = LeaseKeeper(client, grant.id, grant.ttl, sent, on_lost)
        self.key = queue_key(self.prefix, self.name, grant.id)
        try:
            written = client.put(self.key, value, prev_revision=0, lease=grant.id)
        except BaseException:
            self.leave()
            raise
        self.revision = written.revision

    def wait_turn(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            keeper = self.keeper
            assert keeper is not None
            if keeper.lost.is_set():
                raise LockLostError(f"{self.key}: {keeper.reason}")
            place = queue_place(self.client.list(self.queue_prefix, limit=10_000), self.key)
            if place.mine is None:
                raise LockLostError(f"{self.key}: the key is gone (its lease expired)")
            if place.first:
                _check_still_valid(self.key, keeper.lost.is_set(), keeper.valid_until)
                return
            assert place.predecessor is not None
            self._wait_gone(place.predecessor, deadline)

    def _wait_gone(self, predecessor: KeyValue, deadline: float | None) -> None:
        """Until ``predecessor`` is deleted (or the deadline passes, or the lease is lost)."""
        keeper = self.keeper
        assert keeper is not None
        with self.client.watch(
            predecessor.key,
            since=predecessor.mod_revision,
            progress_interval=_WATCH_PROGRESS_S,
            with_progress=True,
        ) as watch:
            for event in watch:
                if event.type == "delete" or (event.type == "resync" and not event.items):
                    return
                if keeper.lost.is_set():
                    return  # wait_turn raises it
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockTimeoutError(f"{self.key}: not first in the queue in time")

    def leave(self) -> None:
        """Delete the queue key and revoke the lease (both already gone is fine)."""
        keeper, self.keeper = self.keeper, None
        if keeper is None:
            return
        keeper.stop()
        try:
            self.client.lease_revoke(keeper.lease_id)
        except NotFoundError:
            pass  # expired or revoked already
        except RaftkvError as exc:
            _revoke_quietly(self.key, exc)


class Lock:
    """``with Lock(client, "name") as token:`` — or ``acquire()``/``release()``.

    ``on_lost`` is called (from a background thread) with the reason when the lease can
    no longer be trusted; ``lost`` is set then too.
    """

    def __init__(
        self,
        client: Client,
        name: str,
        *,
        ttl: float = 10.0,
        prefix: str = DEFAULT_LOCK_PREFIX,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self._contender = Contender(client, prefix, name, ttl)
        self._on_lost = on_lost
        self.token = 0

    @property
    def key(self) -> str:
        return self._contender.key

    @property
    def lost(self) -> bool:
        keeper = self._contender.keeper
        return keeper is not None and keeper.lost.is_set()

    @property
    def valid_until(self) -> float:
        """``time.monotonic()`` until which the lock is certainly held."""
        keeper = self._contender.keeper
        return keeper.valid_until if keeper is not None else 0.0

    def acquire(self, timeout: float | None = None) -> int:
        """Wait for the lock; returns its fencing token. LockTimeoutError after
        ``timeout`` seconds, LockLostError if the lease expired while waiting."""
        contender = self._contender
        if contender.keeper is not None:
            raise RuntimeError("this Lock is already held or being acquired")
        contender.join(b"", self._on_lost)
        try:
            contender.wait_turn(timeout)
        except BaseException:
            contender.leave()
            raise
        self.token = contender.revision
        return self.token

    def release(self) -> None:
        self._contender.leave()
        self.token = 0

    def __enter__(self) -> int:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class AsyncLock:
    """The asyncio Lock: ``async with AsyncLock(client, "name") as token:``."""

    def __init__(
        self,
        client: AsyncClient,
        name: str,
        *,
        ttl: float = 10.0,
        prefix: str = DEFAULT_LOCK_PREFIX,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self._contender = AsyncContender(client, prefix, name, ttl)
        self._on_lost = on_lost
        self.token = 0

    @property
    def key(self) -> str:
        return self._contender.key

    @property
    def lost(self) -> bool:
        keeper = self._contender.keeper
        return keeper is not None and keeper.lost.is_set()

    @property
    def valid_until(self) -> float:
        """``time.monotonic()`` until which the lock is certainly held."""
        keeper = self._contender.keeper
        return keeper.valid_until if keeper is not None else 0.0

    async def acquire(self, timeout: float | None = None) -> int:
        contender = self._contender
        if contender.keeper is not None:
            raise RuntimeError("this AsyncLock is already held or being acquired")
        await contender.join(b"", self._on_lost)
        try:
            await contender.wait_turn(timeout)
        except BaseException:
            await contender.leave()
            raise
        self.token = contender.revision
        return self.token

    async def release(self) -> None:
        await self._contender.leave()
        self.token = 0

    async def __aenter__(self) -> int:
        return await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.release()


class AsyncContender(_QueueSpot):
    def __init__(self, client: AsyncClient, prefix: str, name: str, ttl: float) -> None:
        _QueueSpot.__init__(self, prefix, name, ttl)
        self.client = client
        self.keeper: AsyncLeaseKeeper | None = None

    async def join(self, value: bytes | str, on_lost: Callable[[str], None] | None) -> None:
        client = self.client
        sent = time.monotonic()
        grant = await client.lease_grant(self.ttl)
        self.keeper = AsyncLeaseKeeper(client, grant.id, grant.ttl, sent, on_lost)
        self.key = queue_key(self.prefix, self.name, grant.id)
        try:
            written = await client.put(self.key, value, prev_revision=0, lease=grant.id)
        except BaseException:
            await self.leave()
            raise
        self.revision = written.revision

    async def wait_turn(self, timeout: float | None) -> None:
        try:
            await asyncio.wait_for(self._wait_turn(), timeout)
        except TimeoutError:
            raise LockTimeoutError(f"{self.key}: not first in the queue in time") from None

    async def _wait_turn(self) -> None:
        while True:
            keeper = self.keeper
            assert keeper is not None
            if keeper.lost.is_set():
                raise LockLostError(f"{self.key}: {keeper.reason}")
            items = await self.client.list(self.queue_prefix, limit=10_000)
            place = queue_place(items, self.key)
            if place.mine is None:
                raise LockLostError(f"{self.key}: the key is gone (its lease expired)")
            if place.first:
                _check_still_valid(self.key, keeper.lost.is_set(), keeper.valid_until)
                return
            assert place.predecessor is not None
            await self._wait_gone(place.predecessor)

    async def _wait_gone(self, predecessor: KeyValue) -> None:
        keeper = self.keeper
        assert keeper is not None
        async with await self.client.watch(
            predecessor.key,
            since=predecessor.mod_revision,
            progress_interval=_WATCH_PROGRESS_S,
            with_progress=True,
        ) as watch:
            async for event in watch:
                if event.type == "delete" or (event.type == "resync" and not event.items):
                    return
                if keeper.lost.is_set():
                    return

    async def leave(self) -> None:
        keeper, self.keeper = self.keeper, None
        if keeper is None:
            return
        await keeper.stop()
        try:
            await self.client.lease_revoke(keeper.lease_id)
        except NotFoundError:
            pass  # expired or revoked already
        except RaftkvError as exc:
            _revoke_quietly(self.key, exc)
