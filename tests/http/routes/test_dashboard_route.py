"""GET /dashboard serves the page, and the status endpoints it polls allow other origins."""

from __future__ import annotations

import base64
import hashlib
import re

from starlette.testclient import TestClient

from raftkv.http.routes.dashboard import build_page


def test_dashboard_is_one_self_contained_html_page(client: TestClient) -> None:
    response = client.get("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    page = response.text
    assert page.startswith("<!doctype html>")
    # Style and script are inlined: nothing else to fetch from a node that may go down.
    assert "@inline" not in page
    assert "<link" not in page and "src=" not in page
    assert "function pollStatus" in page and ".node[data-role" in page
    # The markers the browser tests (and anyone scripting the page) rely on.
    assert 'id="nodes"' in page and 'id="leader"' in page and 'id="history"' in page
    assert "data-node-id" in page and "data-role" in page


def test_content_security_policy_admits_exactly_the_inline_script_and_style() -> None:
    body, policy = build_page()
    page = body.decode("utf-8")
    directives = dict(d.split(" ", 1) for d in policy.split("; "))
    assert directives["default-src"] == "'none'"
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        (block,) = re.findall(rf"<{tag}>(.*?)</{tag}>", page, re.DOTALL)
        digest = base64.b64encode(hashlib.sha256(block.encode("utf-8")).digest()).decode()
        assert directives[directive] == f"'sha256-{digest}'"


def test_head_of_the_dashboard_has_no_body(client: TestClient) -> None:
    response = client.head("/dashboard")
    assert response.status_code == 200
    assert response.content == b""


def test_status_endpoints_allow_any_origin_and_others_do_not(client: TestClient) -> None:
    origin = {"Origin": "http://127.0.0.1:1"}
    for path in ("/cluster/status?local=true", "/cluster/nodes?local=true", "/health"):
        response = client.get(path, headers=origin)
        assert response.headers.get("access-control-allow-origin") == "*", path
    assert "access-control-allow-origin" not in client.get("/dashboard").headers
    assert "access-control-allow-origin" not in client.get("/kv/a", headers=origin).headers
    assert "access-control-allow-origin" not in client.get("/kv", headers=origin).headers
    missing = client.post("/cluster/status", headers=origin)
    assert "access-control-allow-origin" not in missing.headers


def test_static_files_are_declared_package_data() -> None:
    """A non-editable install ships only what pyproject.toml declares."""
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    config = tomllib.loads((root / "pyproject.toml").read_text("utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["raftkv.http"]
    static = root / "raftkv" / "http" / "static"
    files = sorted(path.relative_to(static.parent).as_posix() for path in static.iterdir())
    assert {"static/dashboard.html", "static/dashboard.css", "static/dashboard.js"} <= set(files)
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
