"""Keeping a lease alive from the client, and knowing when it can no longer be trusted
(docs/client.md, "Locks and elections").

The store never expires a lease before its TTL has passed since the client *sent* the
last keep-alive it acknowledged. So the client counts from the send time too: the lease
is certainly alive until ``sent + ttl``. A keeper sends a keep-alive every third of the
TTL; when one is refused (the lease is gone) or none has been acknowledged by
``sent + ttl - margin``, the lease is *lost*: the keeper stops, sets ``lost`` and calls
``on_lost``, early enough that whatever the lease protects can stop before another
client could be granted what it held.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from raftkv.wire.errors import NotFoundError, RaftkvError

if TYPE_CHECKING:
    from raftkv.client.http_client import AsyncClient, Client

__all__ = ["AsyncLeaseKeeper", "LeaseKeeper", "safety_margin"]

log = logging.getLogger("raftkv.client")


def safety_margin(ttl: float) -> float:
    """How long before ``sent + ttl`` a keeper gives the lease up: a tenth of the TTL,
    at least 0.2 s, for clock-rate differences and the time a holder needs to stop."""
    return max(0.2, ttl / 10)


class _Validity:
    """When the lease was last known alive, by the send time of acknowledged renewals."""

    def __init__(self, ttl: float, sent: float) -> None:
        self.ttl = ttl
        self.valid_until = sent + ttl - safety_margin(ttl)

    def acknowledged(self, sent: float, ttl: float) -> None:
        self.ttl = ttl
        self.valid_until = max(self.valid_until, sent + ttl - safety_margin(ttl))

    def interval(self) -> float:
        return self.ttl / 3


class LeaseKeeper:
    """Keeps one lease alive from a daemon thread, with its own ``Client`` calls."""

    def __init__(
        self,
        client: Client,
        lease_id: int,
        ttl: float,
        granted_sent_at: float,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        """``granted_sent_at``: ``time.monotonic()`` when the grant (or the first write
        the lease was made for) was sent."""
        self.lease_id = lease_id
        self.lost = threading.Event()
        self.reason = ""
        self._client = client
        self._validity = _Validity(ttl, granted_sent_at)
        self._on_lost = on_lost
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._run, name=f"raftkv-lease-{lease_id}", daemon=True
        )
        # A keep-alive can hang for as long as the client retries: the lease is given up
        # on time all the same.
        self._watchdog = threading.Thread(
            target=self._watch_deadline, name=f"raftkv-lease-{lease_id}-deadline", daemon=True
        )
        self._thread.start()
        self._watchdog.start()

    @property
    def valid_until(self) -> float:
        """``time.monotonic()`` until which the lease is certainly alive."""
        return self._validity.valid_until

    def _watch_deadline(self) -> None:
        while not self._stop.wait(self._until_lost()):
            if self._until_lost() <= 0:
                self._lose("no keep-alive was acknowledged within the lease's TTL")
                return

    def _run(self) -> None:
        validity = self._validity
        while not self._stop.wait(validity.interval()):
            if self.lost.is_set():
                return
            sent = time.monotonic()
            try:
                renewed = self._client.lease_keep_alive(self.lease_id)
            except NotFoundError:
                self._lose("the lease expired or was revoked")
                return
            except RaftkvError as exc:
                log.info("lease %d: keep-alive failed, trying again: %s", self.lease_id, exc)
                continue
            if not self.lost.is_set():
                validity.acknowledged(sent, renewed.ttl)

    def _until_lost(self) -> float:
        return max(0.0, self._validity.valid_until - time.monotonic())

    def _lose(self, reason: str) -> None:
        with self._lock:
            if self._stop.is_set() or self.lost.is_set():
                return
            self.reason = reason
            self.lost.set()
        if self._on_lost is not None:
            self._on_lost(reason)

    def stop(self) -> None:
        """Stop keeping the lease alive (it then expires after its TTL unless revoked)."""
        with self._lock:
            self._stop.set()
        for thread in (self._thread, self._watchdog):
            if threading.current_thread() is not thread:
                thread.join(timeout=0 if thread is self._thread else None)


class AsyncLeaseKeeper:
    """Keeps one lease alive from a task, with its own ``AsyncClient`` calls."""

    def __init__(
        self,
        client: AsyncClient,
        lease_id: int,
        ttl: float,
        granted_sent_at: float,
        on_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.lease_id = lease_id
        self.lost = asyncio.Event()
        self.reason = ""
        self._client = client
        self._validity = _Validity(ttl, granted_sent_at)
        self._on_lost = on_lost
        self._stopped = False
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def valid_until(self) -> float:
        return self._validity.valid_until

    def _until_lost(self) -> float:
        return max(0.0, self._validity.valid_until - time.monotonic())

    async def _run(self) -> None:
        validity = self._validity
        while True:
            await asyncio.sleep(min(validity.interval(), self._until_lost()))
            if self._until_lost() <= 0:
                self._lose("no keep-alive was acknowledged within the lease's TTL")
                return
            sent = time.monotonic()
            try:
                renewed = await asyncio.wait_for(
                    self._client.lease_keep_alive(self.lease_id), self._until_lost()
                )
            except NotFoundError:
                self._lose("the lease expired or was revoked")
                return
            except (TimeoutError, RaftkvError) as exc:
                log.info("lease %d: keep-alive failed, trying again: %s", self.lease_id, exc)
                continue
            validity.acknowledged(sent, renewed.ttl)

    def _lose(self, reason: str) -> None:
        if self._stopped:
            return
        self.reason = reason
        self.lost.set()
        if self._on_lost is not None:
            self._on_lost(reason)

    async def stop(self) -> None:
        self._stopped = True
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
