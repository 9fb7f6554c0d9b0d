"""The worker's Starlette application: the route table, the middleware around it and
the exception handlers.

The handlers live with their concern (``keys``, ``cluster``, ``operations``, ``auth``,
``openapi``, ``dashboard``); all of them reach the Raft process through one
``RaftCalls``, which uses the worker's single IpcClient. Every error is a JSON object
``{"error": "..."}``: an ``ApiError`` raised anywhere, a route Starlette does not know
(404, 405), or an unexpected exception (500).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from raftkv.http.auth.credentials import PasswordCache
from raftkv.http.auth.tables_cache import AuthTablesCache, AuthTablesUnavailable
from raftkv.http.errors import ApiError
from raftkv.http.key_request import KeyRequest
from raftkv.http.key_route import KEY_PARAM
from raftkv.http.middleware.auth_gate import AccessCheck, AuthGate
from raftkv.http.middleware.cors import ReadOnlyCors
from raftkv.http.middleware.metrics import HttpMetrics, HttpMetricsMiddleware
from raftkv.http.middleware.rate_limit import rate_limiter, rate_limiting
from raftkv.http.responses import Answer, json_response
from raftkv.http.routes.auth_admin import AuthRoutes
from raftkv.http.routes.cluster_status import ClusterRoutes
from raftkv.http.routes.dashboard import DashboardPage
from raftkv.http.routes.hot_keys import HotKeyRoutes, KeyHandler
from raftkv.http.routes.keys import KeyRoutes
from raftkv.http.routes.lease_stream import LeaseKeepAliveStream
from raftkv.http.routes.leases import LeaseRoutes
from raftkv.http.routes.openapi import openapi_endpoint
from raftkv.http.routes.operations import OperationRoutes
from raftkv.http.routes.raft_calls import RaftCalls
from raftkv.http.routes.txn import TxnRoutes
from raftkv.http.routes.watch import WatchRoutes
from raftkv.http.serving.ipc_client import IpcClient, IpcUnavailable
from raftkv.http.serving.settings import WorkerSettings
from raftkv.http.watch.service import WatchService
from raftkv.wire.sessions import WriteSession

__all__ = ["create_app"]

log = logging.getLogger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]


# -- exception handlers -----------------------------------------------------------------


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.to_response()


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


def _method_route(path: str, handlers: dict[str, Endpoint]) -> Route:
    """One route for ``path`` whose handler depends on the method, so a wrong method
    gets a 405 whose Allow header lists every method the path takes."""
    table = dict(handlers)
    if "GET" in table:
        table["HEAD"] = table["GET"]

    async def dispatch(request: Request) -> Response:
        return await table[request.method](request)

    return Route(path, dispatch, methods=list(handlers))


def _key_endpoint(handler: KeyHandler) -> Endpoint:
    """A key route's handler as a Starlette endpoint."""

    async def endpoint(request: Request) -> Response:
        answer: Answer = await handler(KeyRequest.from_starlette(request))
        return answer.to_response()

    return endpoint


# -- the application --------------------------------------------------------------------


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
    raft = RaftCalls(settings, ipc, session or WriteSession())
    http_metrics = http_metrics or HttpMetrics.from_environment()
    keys = KeyRoutes(raft)
    key_handlers: dict[str, KeyHandler] = {
        "GET": keys.get_key,
        "POST": keys.post_key,
        "PUT": keys.put_key,
        "DELETE": keys.delete_key,
    }
    cluster = ClusterRoutes(raft, http_metrics)
    operations = OperationRoutes(raft)
    auth_cache = AuthTablesCache(ipc)
    auth = AuthRoutes(raft, auth_cache)
    watch_service = WatchService(ipc, settings.watch, http_metrics, raft.linearizable_now)
    watches = WatchRoutes(raft, watch_service)
    txns = TxnRoutes(raft, auth_cache)
    leases = LeaseRoutes(raft, auth_cache)
    client = ipc
    metrics = http_metrics

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
        metrics.flush()
        await auth_cache.stop()
        await watch_service.close()
        await client.close()
        await cluster.close()
        await operations.close()

    routes = [
        Route("/health", cluster.health, methods=["GET"]),
        Route("/cluster/status", cluster.cluster_status, methods=["GET"]),
        Route("/cluster/nodes", cluster.cluster_nodes, methods=["GET"]),
        Route("/openapi.json", openapi_endpoint(settings), methods=["GET"]),
        Route("/metrics", cluster.metrics, methods=["GET"]),
        Route("/dashboard", DashboardPage().get, methods=["GET"]),
        Route("/cluster/members", operations.add_member, methods=["POST"]),
        Route("/cluster/members/{node_id}", operations.remove_member, methods=["DELETE"]),
        Route("/cluster/leader", operations.transfer_leader, methods=["POST"]),
        Route("/cluster/snapshot", operations.snapshot, methods=["POST"]),
        Route("/cluster/backup", operations.backup, methods=["GET"]),
        _method_route(
            "/kv",
            {"GET": _key_endpoint(keys.list_prefix), "DELETE": _key_endpoint(keys.delete_prefix)},
        ),
        _method_route(
            f"/kv/{{key:{KEY_PARAM}}}",
            {method: _key_endpoint(handler) for method, handler in key_handlers.items()},
        ),
        Route("/txn", txns.post_txn, methods=["POST"]),
        _method_route("/lease", {"GET": leases.list_leases, "POST": leases.grant}),
        # Before /lease/{lease_id}, which would take "keepalive" for an id.
        Route("/lease/keepalive", LeaseKeepAliveStream(raft), methods=["POST"]),
        _method_route("/lease/{lease_id}", {"GET": leases.lookup, "DELETE": leases.revoke}),
        Route("/lease/{lease_id}/keepalive", leases.keep_alive, methods=["POST"]),
        Route("/watch", watches.watch_prefix, methods=["GET"]),
        Route(f"/watch/{{key:{KEY_PARAM}}}", watches.watch_key, methods=["GET"]),
        *auth.routes(),
    ]
    count_requests = Middleware(HttpMetricsMiddleware, metrics=http_metrics)
    access = AccessCheck(auth_cache, PasswordCache())
    auth_gate = Middleware(AuthGate, access=access)
    # Before authentication: password guessing is limited too.
    limiter = rate_limiter(
        settings.limits,
        http_metrics.count_rate_limited,
        credentials_checked=lambda: auth_cache.tables.enabled,
    )
    app = Starlette(
        routes=routes,
        # Counting first, then the rate limit (before authentication: password
        # guessing is limited too), then the auth gate, so that no request reaches a
        # handler without passing it. The hot key path (app.state.hot_routes, which the
        # worker's protocol uses) does the same, in the same order, with the same
        # objects.
        middleware=[
            count_requests,
            *rate_limiting(limiter),
            auth_gate,
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
    app.state.session = raft.session
    app.state.settings = settings
    app.state.hot_routes = HotKeyRoutes(key_handlers, access, limiter, http_metrics)
    return app
