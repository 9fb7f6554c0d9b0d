"""``GET /dashboard``: one HTML page that watches the whole cluster live.

The page is written as three files under ``static/`` (markup, style, script) for ease of
editing, and served as one document with the style and script inlined: once the page is
loaded it needs nothing more from the node that served it, so it keeps showing the
cluster while that node is down. The script polls every node directly (see
``raftkv/http/middleware/cors.py`` for the headers that let it), rather than through an
endpoint of the serving node that would die with it.

A Content-Security-Policy allows exactly the inlined script and style (by hash), and
requests to any node, and nothing else.
"""

from __future__ import annotations

import base64
import hashlib
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response

__all__ = ["DashboardPage", "build_page"]

_STYLE_MARKER = "/* @inline dashboard.css */"
_SCRIPT_MARKER = "// @inline dashboard.js"


def _static_text(name: str) -> str:
    return (resources.files("raftkv.http") / "static" / name).read_text("utf-8")


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def build_page() -> tuple[bytes, str]:
    """The page with its style and script inlined, and the Content-Security-Policy
    that admits them."""
    page = _static_text("dashboard.html")
    style = _static_text("dashboard.css")
    script = _static_text("dashboard.js")
    if "</script" in script.lower() or "</style" in style.lower():
        raise ValueError("an inlined dashboard file would close its own tag")
    # The hashes cover the exact text between the tags, markers' lines included.
    style_block = page[page.index("<style>") + len("<style>") : page.index("</style>")]
    script_block = page[page.index("<script>") + len("<script>") : page.index("</script>")]
    style_block = style_block.replace(_STYLE_MARKER, style)
    script_block = script_block.replace(_SCRIPT_MARKER, script)
    page = page.replace(_STYLE_MARKER, style).replace(_SCRIPT_MARKER, script)
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_csp_hash(script_block)}",
            f"style-src {_csp_hash(style_block)}",
            # The page polls every node of the cluster, on whatever host and port.
            "connect-src *",
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    return page.encode("utf-8"), policy


class DashboardPage:
    """The endpoint; the page is built once, when the worker starts."""

    def __init__(self) -> None:
        self._body, self._policy = build_page()

    async def get(self, request: Request) -> Response:
        return Response(
            self._body,
            200,
            {
                "Content-Security-Policy": self._policy,
                # The page is small and changes with the installed version; always fresh.
                "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff",
            },
            media_type="text/html; charset=utf-8",
        )
