"""Cross-origin reads of the cluster's read-only status endpoints.

The dashboard served by one node polls every node directly, each on its own port, which
is another origin to the browser. These GET endpoints answer with
``Access-Control-Allow-Origin: *`` so that it may read them. They are public, never use
cookies or credentials, and change nothing; a plain GET needs no preflight, so there is
no OPTIONS to answer. Every other route (the keys, membership, backups) stays
same-origin only.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CORS_READABLE_PATHS", "ReadOnlyCors"]

CORS_READABLE_PATHS = frozenset({"/health", "/cluster/status", "/cluster/nodes", "/metrics"})


class ReadOnlyCors:
    """ASGI middleware: lets any origin read the GET answers of ``paths``."""

    def __init__(self, app: ASGIApp, paths: frozenset[str] = CORS_READABLE_PATHS) -> None:
        self._app = app
        self._paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in ("GET", "HEAD")
            or scope["path"] not in self._paths
        ):
            await self._app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["Access-Control-Allow-Origin"] = "*"
            await send(message)

        await self._app(scope, receive, send_with_cors)
