"""``POST /txn``: a multi-key transaction, checked, authorized key by key, and sent to
the Raft process as one write (docs/api.md, "Transactions")."""

from __future__ import annotations

from collections.abc import Callable

import orjson
from starlette.requests import Request
from starlette.responses import Response

from raftkv.http.auth.access import Need
from raftkv.http.auth.tables_cache import AuthTablesCache
from raftkv.http.errors import ApiError
from raftkv.http.middleware.auth_gate import Requirement, check_access
from raftkv.http.responses import json_response
from raftkv.http.routes.raft_calls import RaftCalls
from raftkv.http.routes.request_input import read_body, session_tag
from raftkv.http.serving.settings import JSON_OVERHEAD_BYTES
from raftkv.http.txn_json import TxnDocumentLimits, parse_txn_document, txn_result_json
from raftkv.kv.txn import TxnBody, TxnBodyError, TxnOpKind, decode_txn_result, encode_txn_body
from raftkv.wire.protocol import Op, ReplyStatus
from raftkv.wire.sessions import SessionTag

__all__ = ["TxnRoutes"]

_WRITES = {TxnOpKind.PUT: "key", TxnOpKind.DELETE: "key", TxnOpKind.DELETE_PREFIX: "prefix"}


def access_needed(body: TxnBody) -> list[Requirement]:
    """What the transaction needs of its user: read on every key it compares, gets or
    lists (a list: the whole prefix), write on every key or prefix it writes."""
    needs = [Requirement(Need.READ, c.key, "key") for c in body.compares]
    for op in (*body.success, *body.failure):
        if op.kind in _WRITES:
            subject = "key" if _WRITES[op.kind] == "key" else "the whole prefix"
            needs.append(Requirement(Need.WRITE, op.key, subject))
        elif op.kind is TxnOpKind.GET:
            needs.append(Requirement(Need.READ, op.key, "key"))
        else:
            needs.append(Requirement(Need.READ, op.key, "the whole prefix"))
    return needs


class TxnRoutes:
    def __init__(self, raft: RaftCalls, auth_cache: AuthTablesCache) -> None:
        self._raft = raft
        self._auth_cache = auth_cache
        settings = raft.settings
        self._limits = TxnDocumentLimits(
            settings.txn, settings.max_key_bytes, settings.max_value_bytes
        )
        # JSON may spell the bytes out at greater length (escapes, base64).
        self._body_limit = max(settings.max_body_bytes, 2 * settings.txn.max_bytes) + (
            JSON_OVERHEAD_BYTES
        )

    async def post_txn(self, request: Request) -> Response:
        tag = session_tag(request)
        raw = await read_body(request, self._body_limit, "request body")
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None
        body = parse_txn_document(doc, self._limits)
        may_read = await check_access(request.scope, self._auth_cache, access_needed(body))
        try:
            encoded = encode_txn_body(body)
        except TxnBodyError as exc:  # what the parser let through and the log would not
            raise ApiError(400, f"invalid transaction: {exc}") from None
        return await self._send(encoded, tag, may_read)

    async def _send(
        self, encoded: bytes, tag: SessionTag | None, may_read: Callable[[bytes], bool] | None
    ) -> Response:
        raft = self._raft

        reply = await raft.write_op(
            tag,
            Op.TXN,
            value=encoded,
        )
        if reply.status != ReplyStatus.OK:
            raise raft.error_for(reply, write=True)
        try:
            result, end = decode_txn_result(reply.body)
            if end != len(reply.body):
                raise TxnBodyError("trailing bytes")
        except TxnBodyError as exc:
            if tag is not None:
                # What the client table kept for this seq is another request's answer.
                raise ApiError(
                    409,
                    f"seq {tag.seq} of client {tag.client_id} was used by another request "
                    "that is not this transaction; send it with a new seq",
                ) from None
            message = f"malformed transaction reply from the Raft process: {exc}"
            raise ApiError(500, message) from None
        return json_response(txn_result_json(result, reply.index, reply.term, may_read))
