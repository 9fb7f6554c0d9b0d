"""The HTTP API of one worker: routes, validation, and the mapping of Raft replies to HTTP.

Each handler validates its input, turns it into one ClientRequest (writes tagged by
``session``), sends it to the Raft process through the worker's single IpcClient and
turns the ClientReply into a response. Every error is a JSON object ``{"error": "..."}``.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import unquote_to_bytes

import httpx
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from raftkv.http.auth_cache import AuthTablesCache, AuthTablesUnavailable
from raftkv.http.auth_gate import AuthGate
from raftkv.http.auth_routes import AuthRoutes
from raftkv.http.cors import ReadOnlyCors
from raftkv.http.credentials import PasswordCache
from raftkv.http.dashboard import DashboardPage
from raftkv.http.fast_path import KvFastPath
from raftkv.http.ipc_client import IpcClient, IpcUnavailable
from raftkv.http.key_route import KEY_PARAM, KV_PREFIX, query_bytes
from raftkv.http.metrics import HttpMetrics, metrics_endpoint
from raftkv.http.metrics_middleware import HttpMetricsMiddleware
from raftkv.http.openapi import build_openapi
from raftkv.http.operations import OperationRoutes
from raftkv.http.peer_http import node_url, peer_http_client
from raftkv.http.rate_limit import rate_limiting
from raftkv.http.settings import WorkerSettings
from raftkv.kv.results import KeyValue
from raftkv.wire.decimals import bounded_decimal
from raftkv.wire.protocol import (
    Flag,
    Op,
    ReplyStatus,
    decode_key_value,
    decode_key_values,
)
from raftkv.wire.sessions import (
    SessionHeaderError,
    SessionTag,
    WriteSession,
    parse_session_headers,
    send_tagged,
)
from raftkv_ext.codec import ClientReply, ClientRequest

__all__ = ["DEFAULT_LIST_LIMIT", "MAX_LIST_LIMIT", "ApiError", "create_app"]

log = logging.getLogger(__name__)

DEFAULT_LIST_LIMIT = 1000
MAX_LIST_LIMIT = 10_000
_MAX_REVISION = 2**63 - 1
_JSON = "application/json"
_OCTETS = "application/octet-stream"


class ApiError(Exception):
    """An error answered as ``{"error": message, **extra}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra or {}
        self.headers = headers


def json_response(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(content), status_code, headers, media_type=_JSON)


# -- small parsers ----------------------------------------------------------------------


def _text_or_base64(name: str, data: bytes) -> dict[str, str]:
    """``{name: text}`` when ``data`` is UTF-8, else ``{name_base64: ...}``."""
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_base64": base64.b64encode(data).decode("ascii")}


def _kv_json(kv: KeyValue) -> dict[str, Any]:
    doc: dict[str, Any] = _text_or_base64("key", kv.key)
    doc.update(_text_or_base64("value", kv.value))
    doc["create_revision"] = kv.create_revision
    doc["mod_revision"] = kv.mod_revision
    doc["version"] = kv.version
    return doc


def _parse_revision(text: str, where: str) -> int:
    value = bounded_decimal(text, _MAX_REVISION)
    if value is None:
        raise ApiError(400, f"{where} must be a non-negative integer, got {text!r}")
    if value > _MAX_REVISION:
        raise ApiError(400, f"{where} is too large (at most {_MAX_REVISION})")
    return value


def _query_revision(request: Request) -> int | None:
    text = request.query_params.get("prev_revision")
    return None if text is None else _parse_revision(text, "query parameter prev_revision")


def _raw_query_param(request: Request, name: bytes) -> bytes | None:
    return query_bytes(request.scope.get("query_string", b""), name)


def _consistency_flags(request: Request) -> int:
    level = request.query_params.get("consistency", "linearizable")
    if level == "linearizable":
        return 0
    if level == "stale":
        return int(Flag.STALE_READ)
    raise ApiError(
        400, f"query parameter consistency must be 'linearizable' or 'stale', got {level!r}"
    )


def _wants_json(request: Request) -> bool:
    """True when the Accept header lists application/json with a non-zero quality."""
    for item in request.headers.get("accept", "").split(","):
        media_type, *params = item.split(";")
        if media_type.strip().lower() != _JSON:
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


def _reply_message(reply: ClientReply, default: str) -> str:
    text = reply.body.decode("utf-8", "replace").strip()
    return text or default


# -- the application --------------------------------------------------------------------


class _Api:
    """The handlers, sharing the worker's settings, IPC client and write session."""

    def __init__(self, settings: WorkerSettings, ipc: IpcClient, session: WriteSession) -> None:
        self._peer_http: httpx.AsyncClient | None = None
        self.settings = settings
        self.ipc = ipc
        self.session = session
        self._openapi = orjson.dumps(build_openapi(settings))

    # -- validation ---------------------------------------------------------------------

    def _key(self, request: Request) -> bytes:
        """The key: the request path after ``/kv/``, percent-decoded, as bytes (taken from
        the raw path, so a key that is not UTF-8 keeps its bytes)."""
        raw = request.scope.get("raw_path")
        root = request.scope.get("root_path", "").encode("utf-8")
        if isinstance(raw, bytes) and raw.startswith(root + KV_PREFIX):
            key = unquote_to_bytes(raw[len(root) + len(KV_PREFIX) :])
        else:
            key = str(request.path_params["key"]).encode("utf-8")
        self._check_key(key, "key")
        return key

    def _check_key(self, key: bytes, what: str) -> None:
        if what == "key" and not key:
            raise ApiError(400, "key must not be empty")
        limit = self.settings.max_key_bytes
        if len(key) > limit:
            raise ApiError(413, f"{what} is {len(key)} bytes; the limit is {limit} bytes")

    def _check_value(self, value: bytes) -> None:
        limit = self.settings.max_value_bytes
        if len(value) > limit:
            raise ApiError(413, f"value is {len(value)} bytes; the limit is {limit} bytes")

    async def _read_body(self, request: Request, limit: int, what: str) -> bytes:
        """The whole body, refusing (413) one above ``limit`` bytes: at once from its
        Content-Length, else as soon as more than ``limit`` bytes have arrived."""
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.isascii() or not declared.strip().isdigit():
                raise ApiError(400, f"Content-Length is not a number: {declared!r}")
            if int(declared) > limit:
                raise ApiError(413, f"{what} is {int(declared)} bytes; the limit is {limit} bytes")
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise ApiError(413, f"{what} exceeds the limit of {limit} bytes")
        except ClientDisconnect:
            # The client left, or was cut off for sending too slowly (--read-timeout):
            # nobody will read this answer, but it must not become a 500 and a traceback.
            raise ApiError(408, f"the {what} did not arrive whole") from None
        return bytes(body)

    @staticmethod
    def _session_tag(request: Request) -> SessionTag | None:
        try:
            return parse_session_headers(request.headers)
        except SessionHeaderError as exc:
            raise ApiError(400, str(exc)) from None

    # -- talking to the Raft process ----------------------------------------------------

    def _request(self, op: Op, **fields: Any) -> ClientRequest:
        return ClientRequest(
            self.ipc.next_request_id(), int(op), timeout_ms=self.settings.timeout_ms, **fields
        )

    async def _call(self, request: ClientRequest, *, write: bool) -> ClientReply:
        try:
            return await self.ipc.request(request, self.settings.local_timeout_s)
        except IpcUnavailable as exc:
            if not write:
                outcome = "the request was not served; retry"
            elif exc.sent:
                outcome = "the write may or may not have been applied"
            else:
                outcome = "the write was not applied"
            raise ApiError(503, f"{exc}; {outcome}", headers={"Retry-After": "1"}) from None

    async def _write(
        self,
        client_tag: SessionTag | None,
        build: Callable[[SessionTag], ClientRequest],
    ) -> ClientReply:
        async def send(tag: SessionTag) -> ClientReply:
            return await self._call(build(tag), write=True)

        reply = await send_tagged(self.session, client_tag, send)
        if reply.status == ReplyStatus.STALE_SESSION:
            if client_tag is not None:
                raise ApiError(
                    410,
                    "stale client session: "
                    + _reply_message(reply, "the session is unknown or the seq is settled")
                    + "; this request was not applied now; start a new session "
                    "(new client id, seq from 1)",
                    extra={"stale_session": True},
                )
            raise ApiError(
                500, "the Raft process refused a fresh client session: " + _reply_message(reply, "")
            )
        return reply

    @staticmethod
    def _fail(reply: ClientReply, *, write: bool, prev_revision: int | None = None) -> ApiError:
        """The error for a reply that is not OK (NOT_FOUND is handled by the callers that
        expect it; here it maps to a plain 404)."""
        status = reply.status
        if status == ReplyStatus.NOT_FOUND:
            return ApiError(404, _reply_message(reply, "key not found"))
        if status == ReplyStatus.CONFLICT:
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
            return ApiError(409, message, extra={"current_revision": current})
        if status == ReplyStatus.BAD_REQUEST:
            return ApiError(400, _reply_message(reply, "bad request"))
        if status in (ReplyStatus.UNAVAILABLE, ReplyStatus.TIMEOUT):
            default = "no leader" if status == ReplyStatus.UNAVAILABLE else "timed out"
            message = _reply_message(reply, default)
            if write and "applied" not in message:
                message += "; the write may or may not have been applied"
            elif not write:
                message += "; the request was not served; retry"
            return ApiError(503, message, headers={"Retry-After": "1"})
        if status == ReplyStatus.INTERNAL:
            return ApiError(500, "internal error in the Raft process: " + _reply_message(reply, ""))
        return ApiError(500, f"unexpected reply status {status} from the Raft process")

    # -- /kv/{key} ----------------------------------------------------------------------

    async def get_key(self, request: Request) -> Response:
        key = self._key(request)
        flags = _consistency_flags(request)
        reply = await self._call(self._request(Op.GET, key=key, flags=flags), write=False)
        if reply.status == ReplyStatus.NOT_FOUND:
            raise ApiError(404, "key not found", extra=_text_or_base64("key", key))
        if reply.status != ReplyStatus.OK:
            raise self._fail(reply, write=False)
        try:
            kv = decode_key_value(key, reply.body)
        except ValueError as exc:
            raise ApiError(500, f"malformed GET reply from the Raft process: {exc}") from None
        headers = {
            "X-Raftkv-Revision": str(kv.mod_revision),
            "X-Raftkv-Create-Revision": str(kv.create_revision),
            "X-Raftkv-Version": str(kv.version),
            "X-Raftkv-Index": str(reply.index),
        }
        if _wants_json(request):
            return json_response(_kv_json(kv), headers=headers)
        return Response(kv.value, 200, headers, media_type=_OCTETS)

    async def post_key(self, request: Request) -> Response:
        key = self._key(request)
        tag = self._session_tag(request)
        body = await self._read_body(request, self.settings.max_body_bytes, "request body")
        value, prev_revision = self._parse_json_put(body)
        return await self._put(key, value, prev_revision, tag)

    async def put_key(self, request: Request) -> Response:
        key = self._key(request)
        tag = self._session_tag(request)
        prev_revision = _query_revision(request)
        limit = min(self.settings.max_value_bytes, self.settings.max_body_bytes)
        value = await self._read_body(request, limit, "value")
        return await self._put(key, value, prev_revision, tag)

    def _parse_json_put(self, body: bytes) -> tuple[bytes, int | None]:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ApiError(400, 'request body must be a JSON object like {"value": "..."}')
        unknown = sorted(set(doc) - {"value", "prev_revision"})
        if unknown:
            raise ApiError(400, f"unknown field(s) in request body: {', '.join(unknown)}")
        if "value" not in doc:
            raise ApiError(400, 'request body is missing the "value" field')
        value = doc["value"]
        if not isinstance(value, str):
            raise ApiError(
                400,
                f'"value" must be a string, got {_json_type(value)} '
                "(use PUT with a raw body for binary values)",
            )
        try:
            value_bytes = value.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, '"value" is not valid Unicode') from None
        self._check_value(value_bytes)
        prev = doc.get("prev_revision")
        if prev is None:
            return value_bytes, None
        if not isinstance(prev, int) or isinstance(prev, bool):
            raise ApiError(400, f'"prev_revision" must be an integer, got {_json_type(prev)}')
        if prev < 0 or prev > _MAX_REVISION:
            raise ApiError(400, f'"prev_revision" must be between 0 and {_MAX_REVISION}')
        return value_bytes, prev

    async def _put(
        self,
        key: bytes,
        value: bytes,
        prev_revision: int | None,
        tag: SessionTag | None,
    ) -> Response:
        self._check_value(value)

        def build(t: SessionTag) -> ClientRequest:
            return self._request(
                Op.PUT,
                key=key,
                value=value,
                prev_revision=-1 if prev_revision is None else prev_revision,
                flags=0 if prev_revision is None else int(Flag.HAS_PREV_REVISION),
                client_id=t.client_id,
                seq=t.seq,
                first_incomplete=t.first_incomplete,
            )

        reply = await self._write(tag, build)
        if reply.status != ReplyStatus.OK:
            raise self._fail(reply, write=True, prev_revision=prev_revision)
        doc = _text_or_base64("key", key)
        return json_response(
            {**doc, "index": reply.index, "term": reply.term, "revision": reply.revision}
        )

    async def delete_key(self, request: Request) -> Response:
        key = self._key(request)
        tag = self._session_tag(request)
        prev_revision = _query_revision(request)

        def build(t: SessionTag) -> ClientRequest:
            return self._request(
                Op.DELETE,
                key=key,
                prev_revision=-1 if prev_revision is None else prev_revision,
                flags=0 if prev_revision is None else int(Flag.HAS_PREV_REVISION),
                client_id=t.client_id,
                seq=t.seq,
                first_incomplete=t.first_incomplete,
            )

        reply = await self._write(tag, build)
        doc: dict[str, Any] = _text_or_base64("key", key)
        if reply.status == ReplyStatus.NOT_FOUND:
            raise ApiError(404, "key not found", extra=doc)
        if reply.status != ReplyStatus.OK:
            raise self._fail(reply, write=True, prev_revision=prev_revision)
        doc.update(deleted=True, index=reply.index, term=reply.term, revision=reply.revision)
        return json_response(doc)

    # -- /kv (prefixes) -----------------------------------------------------------------

    async def list_prefix(self, request: Request) -> Response:
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
        flags = _consistency_flags(request)
        # One more than asked, to tell the client whether the listing was cut short.
        ipc_request = self._request(Op.LIST, key=prefix, limit=limit + 1, flags=flags)
        reply = await self._call(ipc_request, write=False)
        if reply.status != ReplyStatus.OK:
            raise self._fail(reply, write=False)
        try:
            items = decode_key_values(reply.body)
        except ValueError as exc:
            raise ApiError(500, f"malformed LIST reply from the Raft process: {exc}") from None
        more = len(items) > limit
        items = items[:limit]
        return json_response(
            {"items": [_kv_json(kv) for kv in items], "count": len(items), "more": more},
            headers={"X-Raftkv-Index": str(reply.index)},
        )

    async def delete_prefix(self, request: Request) -> Response:
        prefix = _raw_query_param(request, b"prefix")
        if prefix is None:
            raise ApiError(
                400,
                "query parameter prefix is required (an explicit empty ?prefix= deletes every key)",
            )
        self._check_key(prefix, "prefix")
        tag = self._session_tag(request)

        def build(t: SessionTag) -> ClientRequest:
            return self._request(
                Op.DELETE_PREFIX,
                key=prefix,
                client_id=t.client_id,
                seq=t.seq,
                first_incomplete=t.first_incomplete,
            )

        reply = await self._write(tag, build)
        if reply.status != ReplyStatus.OK:
            raise self._fail(reply, write=True)
        deleted = _deleted_count(reply.body)
        return json_response({"deleted": deleted, "index": reply.index, "term": reply.term})

    # -- cluster ------------------------------------------------------------------------

    async def _forward_json(self, request: Request, op: Op) -> Response:
        want_hash = request.query_params.get("hash") in ("1", "true")
        flags = Flag.STATE_HASH if want_hash else 0
        reply = await self._call(self._request(op, flags=flags), write=False)
        if reply.status != ReplyStatus.OK:
            raise self._fail(reply, write=False)
        if request.query_params.get("local") not in ("1", "true") and not want_hash:
            from_leader = await self._ask_leader(request, reply.body)
            if from_leader is not None:
                return Response(from_leader, 200, media_type=_JSON)
        return Response(reply.body, 200, media_type=_JSON)

    async def _ask_leader(self, request: Request, local_body: bytes) -> bytes | None:
        """A follower knows only its own side of replication; the leader knows every
        follower's progress, so ask it (and fall back to the local view)."""
        try:
            local = orjson.loads(local_body)
        except orjson.JSONDecodeError:
            return None
        leader_addr = local.get("leaderHttpAddr") if isinstance(local, dict) else None
        if local.get("role") == "leader" or not isinstance(leader_addr, str):
            return None
        if self._peer_http is None:
            self._peer_http = peer_http_client(self.settings, timeout=1.0)
        try:
            # The caller's credentials go along: the leader checks them as well.
            # The first header, as the gate and the rate limiter read it.
            authorization = request.headers.get("authorization")
            passed = {} if authorization is None else {"authorization": authorization}
            answer = await self._peer_http.get(
                node_url(self.settings, leader_addr, request.url.path),
                params={"local": "true"},
                headers=passed,
            )
        except httpx.HTTPError as exc:
            # Once per status request (a dashboard polls): detail, not an event. The
            # answer itself shows it, being this node's own view.
            log.debug("could not ask the leader at %s: %s", leader_addr, exc)
            return None
        return answer.content if answer.status_code == 200 else None

    async def cluster_status(self, request: Request) -> Response:
        return await self._forward_json(request, Op.STATUS)

    async def cluster_nodes(self, request: Request) -> Response:
        return await self._forward_json(request, Op.NODES)

    async def health(self, request: Request) -> Response:
        node_id = self.settings.node_id
        try:
            reply = await self._call(self._request(Op.STATUS), write=False)
        except ApiError as exc:
            return json_response(
                {
                    "status": "raft process unreachable",
                    "node_id": node_id,
                    "leader": None,
                    "error": exc.message,
                },
                503,
                {"Retry-After": "1"},
            )
        if reply.status != ReplyStatus.OK:
            return json_response(
                {
                    "status": "unavailable",
                    "node_id": node_id,
                    "leader": None,
                    "error": _reply_message(reply, f"status {reply.status}"),
                },
                503,
                {"Retry-After": "1"},
            )
        try:
            status = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            status = None
        if not isinstance(status, dict):
            raise ApiError(500, "malformed status reply from the Raft process")
        if node_id is None and isinstance(status.get("node_id"), int):
            node_id = status["node_id"]
        leader = status.get("leader")
        if isinstance(leader, int) and not isinstance(leader, bool) and leader > 0:
            return json_response({"status": "ok", "node_id": node_id, "leader": leader})
        return json_response(
            {"status": "no leader", "node_id": node_id, "leader": None},
            503,
            {"Retry-After": "1"},
        )

    async def close(self) -> None:
        if self._peer_http is not None:
            await self._peer_http.aclose()

    async def openapi(self, request: Request) -> Response:
        return Response(self._openapi, 200, media_type=_JSON)

    async def raft_metrics(self) -> bytes:
        """The Raft process's metrics text (for /metrics)."""
        reply = await self._call(self._request(Op.METRICS), write=False)
        if reply.status != ReplyStatus.OK:
            raise self._fail(reply, write=False)
        return reply.body


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "a string"


# -- exception handlers -----------------------------------------------------------------


def _error_response(exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return json_response({"error": exc.message, **exc.extra}, exc.status, exc.headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    return _error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 404:
        message = f"no such route: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        allowed = headers.get("Allow", "") if headers else ""
        message = f"method {request.method} is not allowed on {request.url.path}"
        if allowed:
            message += f"; allowed: {allowed}"
    else:
        message = str(exc.detail)
    return json_response({"error": message}, exc.status_code, headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return json_response({"error": "internal server error"}, 500)


Endpoint = Callable[[Request], Awaitable[Response]]


def _method_route(path: str, handlers: dict[str, Endpoint]) -> Route:
    """One route for ``path`` whose handler depends on the method, so a wrong method
    gets a 405 whose Allow header lists every method the path takes."""
    table = dict(handlers)
    if "GET" in table:
        table["HEAD"] = table["GET"]

    async def dispatch(request: Request) -> Response:
        return await table[request.method](request)

    return Route(path, dispatch, methods=list(handlers))


def create_app(
    settings: WorkerSettings,
    *,
    ipc: IpcClient | None = None,
    session: WriteSession | None = None,
    http_metrics: HttpMetrics | None = None,
) -> Starlette:
    """The worker's ASGI app. The IPC client connects at startup (lifespan), or on the
    first request if the Raft process was not reachable then, and closes at shutdown."""
    if ipc is None:
        ipc = IpcClient(
            settings.ipc_path,
            max_frame_size=settings.max_frame_size,
            connect_timeout=settings.connect_timeout_s,
            cluster_id=settings.cluster_id,
            node_id=settings.node_id or 0,
        )
    api = _Api(settings, ipc, session or WriteSession())
    operations = OperationRoutes(api)
    auth_cache = AuthTablesCache(ipc)
    auth_routes = AuthRoutes(api, auth_cache)
    http_metrics = http_metrics or HttpMetrics.from_environment()
    client = ipc

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            await client.connect()
        except IpcUnavailable as exc:
            log.warning("%s; will retry on the first request", exc)
        # Fetch the auth tables before serving, so the first requests need not wait.
        with contextlib.suppress(AuthTablesUnavailable):
            await auth_cache.refresh()
        auth_cache.start()
        yield
        await auth_cache.stop()
        await client.close()
        await api.close()
        await operations.close()

    routes = [
        Route("/health", api.health, methods=["GET"]),
        Route("/cluster/status", api.cluster_status, methods=["GET"]),
        Route("/cluster/nodes", api.cluster_nodes, methods=["GET"]),
        Route("/openapi.json", api.openapi, methods=["GET"]),
        Route("/metrics", metrics_endpoint(api.raft_metrics, http_metrics), methods=["GET"]),
        Route("/dashboard", DashboardPage().get, methods=["GET"]),
        Route("/cluster/members", operations.add_member, methods=["POST"]),
        Route("/cluster/members/{node_id}", operations.remove_member, methods=["DELETE"]),
        Route("/cluster/leader", operations.transfer_leader, methods=["POST"]),
        Route("/cluster/snapshot", operations.snapshot, methods=["POST"]),
        Route("/cluster/backup", operations.backup, methods=["GET"]),
        _method_route("/kv", {"GET": api.list_prefix, "DELETE": api.delete_prefix}),
        _method_route(
            f"/kv/{{key:{KEY_PARAM}}}",
            {
                "GET": api.get_key,
                "POST": api.post_key,
                "PUT": api.put_key,
                "DELETE": api.delete_key,
            },
        ),
        *auth_routes.routes(),
    ]
    fast_path = Middleware(
        KvFastPath,
        handlers={"GET": api.get_key, "PUT": api.put_key},
        error_type=ApiError,
        render_error=_error_response,
    )
    count_requests = Middleware(HttpMetricsMiddleware, metrics=http_metrics)
    auth_gate = Middleware(AuthGate, cache=auth_cache, passwords=PasswordCache())
    app = Starlette(
        routes=routes,
        # Counting first, so that the fast path's requests count too; CORS inside the
        # fast path: the key requests never pass through it. The auth gate before the
        # fast path, so that no request reaches a handler without passing it.
        middleware=[
            count_requests,
            # Before authentication: password guessing is limited too.
            *rate_limiting(
                settings.limits,
                http_metrics.count_rate_limited,
                credentials_checked=lambda: auth_cache.tables.enabled,
            ),
            auth_gate,
            fast_path,
            Middleware(ReadOnlyCors),
        ],
        lifespan=lifespan,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
    app.state.ipc = ipc
    app.state.auth_cache = auth_cache
    app.state.session = api.session
    app.state.settings = settings
    return app
