"""How the routes talk to the Raft process: one request, one reply, errors as ApiError.

Every route that needs the Raft process goes through one ``RaftCalls``, shared by the
worker: it builds ClientRequests with the worker's deadline, sends them over the
worker's single IpcClient, tags writes for exactly-once (the client's own tag when it
sent one, else the worker's ``WriteSession``), and turns what cannot be answered into
an ``ApiError``: a Raft process that cannot be reached, a stale session, a reply that is
not OK (its HTTP status from the table in ``raftkv.wire.errors``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from raftkv.http.errors import ApiError
from raftkv.http.serving.ipc_client import IpcClient, IpcUnavailable
from raftkv.http.serving.settings import WorkerSettings
from raftkv.wire.errors import WRITE_NOT_APPLIED, WRITE_OUTCOME_UNKNOWN, row_for_reply_status
from raftkv.wire.protocol import Op, ReplyStatus
from raftkv.wire.sessions import SessionTag, WriteSession, send_tagged
from raftkv_ext.codec import ClientReply, ClientRequest

__all__ = ["RaftCalls", "reply_message"]


def reply_message(reply: ClientReply, default: str) -> str:
    """The explanation the Raft process put in a reply's body, else ``default``."""
    text = reply.body.decode("utf-8", "replace").strip()
    return text or default


class RaftCalls:
    """The worker's requests to the Raft process, shared by every route."""

    def __init__(self, settings: WorkerSettings, ipc: IpcClient, session: WriteSession) -> None:
        self.settings = settings
        self.ipc = ipc
        self.session = session
        """The worker's own exactly-once session, for writes whose client sent no tag."""
        # Computed once: the settings compute them on every read, twice per request.
        self._timeout_ms = settings.timeout_ms
        self._local_timeout_s = settings.local_timeout_s

    def request(self, op: Op, **fields: Any) -> ClientRequest:
        """A request with the next id and the worker's deadline."""
        return ClientRequest(
            self.ipc.next_request_id(), int(op), timeout_ms=self._timeout_ms, **fields
        )

    async def call(self, request: ClientRequest, *, write: bool) -> ClientReply:
        """Send ``request`` and wait for its reply; 503 when the Raft process cannot
        answer, saying whether a write may have been applied."""
        try:
            return await self.ipc.request(request, self._local_timeout_s)
        except IpcUnavailable as exc:
            if not write:
                outcome = "the request was not served; retry"
            elif exc.sent:
                outcome = WRITE_OUTCOME_UNKNOWN
            else:
                outcome = WRITE_NOT_APPLIED
            raise ApiError.retry_later(f"{exc}; {outcome}") from None

    async def linearizable_now(self) -> int:
        """The applied index once this node has caught up with the leader's commit
        index at the time of asking: every write acknowledged before is at or below it."""
        reply = await self.call(self.request(Op.READ_INDEX), write=False)
        if reply.status != ReplyStatus.OK:
            raise self.error_for(reply, write=False)
        return reply.index

    async def write(
        self,
        client_tag: SessionTag | None,
        build: Callable[[SessionTag], ClientRequest],
    ) -> ClientReply:
        """Send the write ``build`` makes for a tag, under ``client_tag`` or the worker's
        session (renewed once if the state machine forgot it). A client's stale session
        is a 410 for the client to start over; the worker's own, even when new, a 500."""

        async def send(tag: SessionTag) -> ClientReply:
            return await self.call(build(tag), write=True)

        reply = await send_tagged(self.session, client_tag, send)
        if reply.status == ReplyStatus.STALE_SESSION:
            if client_tag is not None:
                raise ApiError(
                    410,
                    "stale client session: "
                    + reply_message(reply, "the session is unknown or the seq is settled")
                    + "; this request was not applied now; start a new session "
                    "(new client id, seq from 1)",
                    extra={"stale_session": True},
                )
            raise ApiError(
                500, "the Raft process refused a fresh client session: " + reply_message(reply, "")
            )
        return reply

    async def write_op(self, client_tag: SessionTag | None, op: Op, **fields: Any) -> ClientReply:
        """``write`` of one operation with these fields, tagged with each session tag it
        is sent under."""

        def build(tag: SessionTag) -> ClientRequest:
            return self.request(
                op,
                client_id=tag.client_id,
                seq=tag.seq,
                first_incomplete=tag.first_incomplete,
                **fields,
            )

        return await self.write(client_tag, build)

    @staticmethod
    def error_for(reply: ClientReply, *, write: bool, prev_revision: int | None = None) -> ApiError:
        """The error for a reply that is not OK. Callers that expect NOT_FOUND answer it
        their own way; here it is a plain 404. ``prev_revision`` explains a conflict."""
        status = reply.status
        row = row_for_reply_status(status)
        extra: dict[str, Any] | None = None
        if status == ReplyStatus.NOT_FOUND:
            message = reply_message(reply, "key not found")
        elif status == ReplyStatus.CONFLICT:
            current = reply.revision
            if prev_revision == 0:
                message = f"the key already exists (current revision {current})"
            elif current == 0:
                message = f"prev_revision {prev_revision} does not match: the key does not exist"
            else:
                message = (
                    f"prev_revision {prev_revision} does not match the key's current "
                    f"revision {current}"
                )
            extra = {"current_revision": current}
        elif status == ReplyStatus.BAD_REQUEST:
            message = reply_message(reply, "bad request")
        elif status in (ReplyStatus.UNAVAILABLE, ReplyStatus.TIMEOUT):
            default = "no leader" if status == ReplyStatus.UNAVAILABLE else "timed out"
            message = reply_message(reply, default)
            if write and "applied" not in message:
                message += "; " + WRITE_OUTCOME_UNKNOWN
            elif not write:
                message += "; the request was not served; retry"
        elif status == ReplyStatus.INTERNAL:
            message = "internal error in the Raft process: " + reply_message(reply, "")
        else:
            message = f"unexpected reply status {status} from the Raft process"
        if row.retry_later:
            return ApiError.retry_later(message)
        return ApiError(row.http_status, message, extra=extra)
