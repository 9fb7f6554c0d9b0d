"""The key routes: ``/kv/{key}`` (read, write, compare-and-set, delete) and ``/kv``
(list or delete a prefix).

Each handler validates its input, turns it into one ClientRequest (writes tagged for
exactly-once), sends it through the worker's ``RaftCalls`` and turns the reply into the
answer: JSON, or a key's raw value when the client did not ask for JSON.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from raftkv.http.errors import ApiError
from raftkv.http.key_request import KeyRequest
from raftkv.http.key_route import query_bytes
from raftkv.http.kv_json import json_type, kv_json, text_or_base64
from raftkv.http.lease_json import parse_lease_id, parse_ttl, seconds
from raftkv.http.responses import JSON_MEDIA_TYPE, Answer, json_answer
from raftkv.http.routes.raft_calls import RaftCalls, reply_message
from raftkv.http.routes.request_input import (
    consistency_flags,
    parse_revision,
    read_body,
    session_tag,
)
from raftkv.wire.decimals import bounded_decimal
from raftkv.wire.http_headers import (
    HEADER_CREATE_REVISION,
    HEADER_INDEX,
    HEADER_LEASE,
    HEADER_REVISION,
    HEADER_TTL,
    HEADER_VERSION,
)
from raftkv.wire.protocol import (
    DEFAULT_LIST_LIMIT,
    KEY_LEASE,
    LEASE_GRANT_FIELDS,
    MAX_LIST_LIMIT,
    MAX_REVISION,
    Flag,
    Op,
    ReplyStatus,
    decode_key_value,
    decode_key_values,
)
from raftkv.wire.sessions import SessionTag

__all__ = ["KeyRoutes"]

_OCTETS = "application/octet-stream"


# -- small parsers ----------------------------------------------------------------------


def _query_revision(request: KeyRequest) -> int | None:
    text = request.query_params.get("prev_revision")
    return None if text is None else parse_revision(text, "query parameter prev_revision")


def _raw_query_param(request: KeyRequest, name: bytes) -> bytes | None:
    return query_bytes(request.query_string, name)


def _wants_json(request: KeyRequest) -> bool:
    """True when the Accept header lists application/json with a non-zero quality."""
    for item in request.headers.get("accept", "").split(","):
        media_type, *params = item.split(";")
        if media_type.strip().lower() != JSON_MEDIA_TYPE:
            continue
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        return quality > 0
    return False


def _deleted_count(body: bytes) -> int:
    """The number of keys a DELETE_PREFIX removed: an empty body for none, else a JSON
    object ``{"deleted": n}``."""
    if not body:
        return 0
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    count = doc.get("deleted") if isinstance(doc, dict) else None
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ApiError(500, "malformed delete-prefix reply from the Raft process")
    return count


_DECIMAL_SECONDS = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")
"""A TTL in the query string: plain decimal seconds (no sign, exponent or spaces)."""

_Lease = tuple[int, int] | None
"""A put's (lease id, ttl ms), exactly one of them non-zero; None for neither."""


def _lease_fields(lease: object, ttl: object, lease_name: str, ttl_name: str) -> _Lease:
    if lease is not None and ttl is not None:
        raise ApiError(400, f"{lease_name} and {ttl_name} cannot both be given")
    if lease is not None:
        return parse_lease_id(lease, lease_name), 0
    if ttl is not None:
        return 0, parse_ttl(ttl, ttl_name)
    return None


def _query_lease(request: KeyRequest) -> _Lease:
    params = request.query_params
    lease: object = None
    ttl: object = None
    if "lease" in params:
        text = params["lease"]
        lease = bounded_decimal(text, MAX_REVISION)
        if lease is None:
            raise ApiError(400, f"query parameter lease must be an integer, got {text!r}")
    if "ttl" in params:
        text = params["ttl"]
        if _DECIMAL_SECONDS.fullmatch(text) is None:
            raise ApiError(400, f"query parameter ttl must be a number, got {text!r}")
        ttl = float(text)
    return _lease_fields(lease, ttl, "query parameter lease", "query parameter ttl")


# -- the routes -------------------------------------------------------------------------


class KeyRoutes:
    """The handlers of ``/kv`` and ``/kv/{key}``."""

    def __init__(self, raft: RaftCalls) -> None:
        self._raft = raft
        self._settings = raft.settings

    # -- validation ---------------------------------------------------------------------

    def _key(self, request: KeyRequest) -> bytes:
        """The key named by the path (``KeyRequest.path_key``), checked."""
        key = request.path_key
        self._check_key(key, "key")
        return key

    def _check_key(self, key: bytes, what: str) -> None:
        if what == "key" and not key:
            raise ApiError(400, "key must not be empty")
        limit = self._settings.max_key_bytes
        if len(key) > limit:
            raise ApiError(413, f"{what} is {len(key)} bytes; the limit is {limit} bytes")

    def _check_value(self, value: bytes) -> None:
        limit = self._settings.max_value_bytes
        if len(value) > limit:
            raise ApiError(413, f"value is {len(value)} bytes; the limit is {limit} bytes")

    # -- /kv/{key} ----------------------------------------------------------------------

    async def get_key(self, request: KeyRequest) -> Answer:
        key = self._key(request)
        flags = consistency_flags(request)
        raft = self._raft
        flags |= Flag.WITH_LEASE
        reply = await raft.call(raft.request(Op.GET, key=key, flags=flags), write=False)
        if reply.status == ReplyStatus.NOT_FOUND:
            raise ApiError(404, "key not found", extra=text_or_base64("key", key))
        if reply.status != ReplyStatus.OK:
            raise raft.error_for(reply, write=False)
        try:
            if len(reply.body) < KEY_LEASE.size:
                raise ValueError("shorter than its lease fields")
            lease_id, remaining_ms = KEY_LEASE.unpack_from(reply.body)
            kv = decode_key_value(key, reply.body[KEY_LEASE.size :])
        except ValueError as exc:
            raise ApiError(500, f"malformed GET reply from the Raft process: {exc}") from None
        headers = {
            HEADER_REVISION: str(kv.mod_revision),
            HEADER_CREATE_REVISION: str(kv.create_revision),
            HEADER_VERSION: str(kv.version),
            HEADER_INDEX: str(reply.index),
        }
        if lease_id:
            headers[HEADER_LEASE] = str(lease_id)
            if remaining_ms >= 0:
                headers[HEADER_TTL] = f"{seconds(remaining_ms):g}"
        if _wants_json(request):
            doc = kv_json(kv)
            if lease_id:
                doc["lease"] = lease_id
                doc["ttl"] = None if remaining_ms < 0 else seconds(remaining_ms)
            return json_answer(doc, headers=headers)
        return Answer(kv.value, 200, headers, _OCTETS)

    async def post_key(self, request: KeyRequest) -> Answer:
        key = self._key(request)
        tag = session_tag(request)
        body = await read_body(request, self._settings.max_body_bytes, "request body")
        value, prev_revision, lease = self._parse_json_put(body)
        return await self._put(key, value, prev_revision, tag, lease)

    async def put_key(self, request: KeyRequest) -> Answer:
        key = self._key(request)
        tag = session_tag(request)
        prev_revision = _query_revision(request)
        lease = _query_lease(request)
        limit = min(self._settings.max_value_bytes, self._settings.max_body_bytes)
        value = await read_body(request, limit, "value")
        return await self._put(key, value, prev_revision, tag, lease)

    def _parse_json_put(self, body: bytes) -> tuple[bytes, int | None, _Lease]:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ApiError(400, 'request body must be a JSON object like {"value": "..."}')
        unknown = sorted(set(doc) - {"value", "prev_revision", "ttl", "lease"})
        if unknown:
            raise ApiError(400, f"unknown field(s) in request body: {', '.join(unknown)}")
        if "value" not in doc:
            raise ApiError(400, 'request body is missing the "value" field')
        value = doc["value"]
        if not isinstance(value, str):
            raise ApiError(
                400,
                f'"value" must be a string, got {json_type(value)} '
                "(use PUT with a raw body for binary values)",
            )
        try:
            value_bytes = value.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, '"value" is not valid Unicode') from None
        self._check_value(value_bytes)
        lease = _lease_fields(doc.get("lease"), doc.get("ttl"), '"lease"', '"ttl"')
        prev = doc.get("prev_revision")
        if prev is None:
            return value_bytes, None, lease
        if not isinstance(prev, int) or isinstance(prev, bool):
            raise ApiError(400, f'"prev_revision" must be an integer, got {json_type(prev)}')
        if prev < 0 or prev > MAX_REVISION:
            raise ApiError(400, f'"prev_revision" must be between 0 and {MAX_REVISION}')
        return value_bytes, prev, lease

    async def _put(
        self,
        key: bytes,
        value: bytes,
        prev_revision: int | None,
        tag: SessionTag | None,
        lease: _Lease = None,
    ) -> Answer:
        self._check_value(value)
        raft = self._raft
        flags = 0 if prev_revision is None else int(Flag.HAS_PREV_REVISION)
        if lease is not None:
            flags |= Flag.LEASED
            value = LEASE_GRANT_FIELDS.pack(*lease) + value

        reply = await raft.write_op(
            tag,
            Op.PUT,
            key=key,
            value=value,
            prev_revision=-1 if prev_revision is None else prev_revision,
            flags=flags,
        )
        if reply.status == ReplyStatus.NOT_FOUND and lease is not None:
            message = reply_message(reply, f"lease {lease[0]} not found")
            raise ApiError(404, message, extra={"lease": lease[0]})
        if reply.status != ReplyStatus.OK:
            raise raft.error_for(reply, write=True, prev_revision=prev_revision)
        doc: dict[str, Any] = text_or_base64("key", key)
        doc.update(index=reply.index, term=reply.term, revision=reply.revision)
        if lease is not None and reply.body:
            try:
                answer = orjson.loads(reply.body)
                doc["lease"] = int(answer["lease"])
                doc["ttl"] = seconds(int(answer["ttl_ms"]))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                raise ApiError(500, "malformed put reply from the Raft process") from None
        return json_answer(doc)

    async def delete_key(self, request: KeyRequest) -> Answer:
        key = self._key(request)
        tag = session_tag(request)
        prev_revision = _query_revision(request)
        raft = self._raft

        reply = await raft.write_op(
            tag,
            Op.DELETE,
            key=key,
            prev_revision=-1 if prev_revision is None else prev_revision,
            flags=0 if prev_revision is None else int(Flag.HAS_PREV_REVISION),
        )
        doc: dict[str, Any] = text_or_base64("key", key)
        if reply.status == ReplyStatus.NOT_FOUND:
            raise ApiError(404, "key not found", extra=doc)
        if reply.status != ReplyStatus.OK:
            raise raft.error_for(reply, write=True, prev_revision=prev_revision)
        doc.update(deleted=True, index=reply.index, term=reply.term, revision=reply.revision)
        return json_answer(doc)

    # -- /kv (prefixes) -----------------------------------------------------------------

    async def list_prefix(self, request: KeyRequest) -> Answer:
        prefix = _raw_query_param(request, b"prefix") or b""
        self._check_key(prefix, "prefix")
        limit_text = request.query_params.get("limit")
        limit = DEFAULT_LIST_LIMIT
        if limit_text is not None:
            parsed = bounded_decimal(limit_text, MAX_LIST_LIMIT)
            if parsed is None:
                raise ApiError(400, f"query parameter limit must be an integer, got {limit_text!r}")
            limit = parsed
            if not 1 <= limit <= MAX_LIST_LIMIT:
                raise ApiError(400, f"query parameter limit must be between 1 and {MAX_LIST_LIMIT}")
        flags = consistency_flags(request)
        raft = self._raft
        # One more than asked, to tell the client whether the listing was cut short (the
        # Raft process serves up to LIST_FETCH_MAX = MAX_LIST_LIMIT + 1 keys for this).
        ipc_request = raft.request(Op.LIST, key=prefix, limit=limit + 1, flags=flags)
        reply = await raft.call(ipc_request, write=False)
        if reply.status != ReplyStatus.OK:
            raise raft.error_for(reply, write=False)
        try:
            items = decode_key_values(reply.body)
        except ValueError as exc:
            raise ApiError(500, f"malformed LIST reply from the Raft process: {exc}") from None
        more = len(items) > limit
        items = items[:limit]
        return json_answer(
            {"items": [kv_json(kv) for kv in items], "count": len(items), "more": more},
            headers={HEADER_INDEX: str(reply.index)},
        )

    async def delete_prefix(self, request: KeyRequest) -> Answer:
        prefix = _raw_query_param(request, b"prefix")
        if prefix is None:
            raise ApiError(
                400,
                "query parameter prefix is required (an explicit empty ?prefix= deletes every key)",
            )
        self._check_key(prefix, "prefix")
        tag = session_tag(request)
        raft = self._raft

        reply = await raft.write_op(
            tag,
            Op.DELETE_PREFIX,
            key=prefix,
        )
        if reply.status != ReplyStatus.OK:
            raise raft.error_for(reply, write=True)
        deleted = _deleted_count(reply.body)
        return json_answer({"deleted": deleted, "index": reply.index, "term": reply.term})
