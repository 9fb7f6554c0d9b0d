"""The worker's copy of the access-control tables, kept fresh by polling the Raft process.

Checking every request with the Raft process would add a round trip to each; instead the
worker holds the tables and asks every ``AUTH_POLL_INTERVAL_S`` whether their revision
changed (an unchanged answer is a few bytes). A change made through this worker is
fetched at once, so its author sees it on the next request. A change made elsewhere takes
effect here within the poll interval after this node has applied it.

Until the tables have been fetched once, nothing is served (fail closed): a request
waits for the first fetch, and gets a 503 if the Raft process cannot be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from raftkv.http.auth.access import AccessTables
from raftkv.http.serving.ipc_client import IpcClient, IpcUnavailable
from raftkv.wire.protocol import Op, ReplyStatus
from raftkv_ext.codec import ClientRequest

__all__ = ["AUTH_POLL_INTERVAL_S", "AuthTablesCache", "AuthTablesUnavailable"]

log = logging.getLogger(__name__)

AUTH_POLL_INTERVAL_S: Final = 0.25
_FETCH_TIMEOUT_S: Final = 2.0


class AuthTablesUnavailable(Exception):
    """The tables were never fetched and the Raft process does not answer."""


class AuthTablesCache:
    def __init__(self, ipc: IpcClient, poll_interval_s: float = AUTH_POLL_INTERVAL_S) -> None:
        self._ipc = ipc
        self._interval = poll_interval_s
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None
        self.tables = AccessTables()

    @property
    def known(self) -> bool:
        return self.tables.revision >= 0

    async def current(self) -> AccessTables:
        """The tables, fetching them first if they never were."""
        if not self.known:
            await self.refresh(only_if_unknown=True)
        return self.tables

    async def refresh(self, *, only_if_unknown: bool = False) -> None:
        """Ask the Raft process for the tables if their revision changed.

        Raises AuthTablesUnavailable when it cannot answer and no tables are known yet.
        ``only_if_unknown``: requests that queued up behind the first fetch use its
        result rather than each asking again.
        """
        async with self._lock:
            if only_if_unknown and self.known:
                return
            request = ClientRequest(
                self._ipc.next_request_id(),
                int(Op.AUTH_TABLES),
                prev_revision=self.tables.revision,
                timeout_ms=int(_FETCH_TIMEOUT_S * 1000),
            )
            try:
                reply = await self._ipc.request(request, _FETCH_TIMEOUT_S)
            except IpcUnavailable as exc:
                if not self.known:
                    raise AuthTablesUnavailable(f"cannot fetch the auth tables: {exc}") from None
                return
            if reply.status != ReplyStatus.OK:
                message = reply.body.decode(errors="replace")
                if not self.known:
                    raise AuthTablesUnavailable(f"cannot fetch the auth tables: {message}")
                return
            if not reply.body:
                return
            try:
                tables = AccessTables.from_json(reply.body)
            except ValueError as exc:
                log.error("the Raft process sent unreadable auth tables: %s", exc)
                if not self.known:
                    raise AuthTablesUnavailable("unreadable auth tables") from None
                return
            if tables.enabled != self.tables.enabled:
                log.info("authentication is now %s", "enabled" if tables.enabled else "disabled")
            self.tables = tables

    def start(self) -> None:
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def stop(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller

    async def _poll(self) -> None:
        while True:
            try:
                await self.refresh()
            except AuthTablesUnavailable:
                pass  # the Raft process is down: requests get 503 until it is back
            except Exception:
                # Polling must outlive any surprise: a stopped poller would let a
                # revoked token keep working on this worker.
                log.exception("refreshing the auth tables failed; retrying")
            await asyncio.sleep(self._interval)
