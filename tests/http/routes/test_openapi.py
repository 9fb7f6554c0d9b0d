"""The OpenAPI document describes exactly the routes the app serves, and is consistent."""

from __future__ import annotations

import re
from typing import Any

from fake_raft import FakeRaft
from starlette.routing import Route
from starlette.testclient import TestClient

from raftkv.http.routes.app import create_app
from raftkv.http.routes.openapi import build_openapi
from raftkv.http.serving.settings import WorkerSettings

HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


def served_routes() -> dict[str, set[str]]:
    app = create_app(WorkerSettings(ipc_path="unused.sock"))
    served: dict[str, set[str]] = {}
    for route in app.routes:
        assert isinstance(route, Route)
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        methods = {m.lower() for m in route.methods or ()} - {"head"}
        served.setdefault(path, set()).update(methods)
    return served


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        assert part in node, f"dangling $ref {ref}"
        node = node[part]
    return node


def walk(node: Any) -> list[str]:
    refs: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                refs.append(value)
            else:
                refs.extend(walk(value))
    elif isinstance(node, list):
        for item in node:
            refs.extend(walk(item))
    return refs


def test_document_is_served_and_lists_every_route(client: TestClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    doc = response.json()
    assert doc["openapi"] == "3.1.0"
    documented = {
        path: {m for m in item if m in HTTP_METHODS} for path, item in doc["paths"].items()
    }
    assert documented == served_routes()
    assert documented["/kv/{key}"] == {"get", "post", "put", "delete"}
    assert documented["/kv"] == {"get", "delete"}


def test_every_reference_resolves() -> None:
    doc = build_openapi(WorkerSettings(ipc_path="x"))
    refs = walk(doc)
    assert len(refs) > 30
    for ref in refs:
        resolve(doc, ref)


def operation_params(doc: dict[str, Any], path: str, method: str) -> dict[str, dict[str, Any]]:
    item = doc["paths"][path]
    params = [*item.get("parameters", []), *item[method].get("parameters", [])]
    resolved = [resolve(doc, p["$ref"]) if "$ref" in p else p for p in params]
    return {p["name"]: p for p in resolved}


def test_parameters_and_status_codes_match_the_api() -> None:
    doc = build_openapi(WorkerSettings(ipc_path="x", max_key_bytes=99))
    ops = {
        (path, method): op
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in HTTP_METHODS
    }
    operation_ids = [op["operationId"] for op in ops.values()]
    assert len(set(operation_ids)) == len(operation_ids)
    for (path, method), op in ops.items():
        for name in re.findall(r"\{(\w+)\}", path):
            param = operation_params(doc, path, method)[name]
            assert param["in"] == "path"
            assert param["required"] is True
        assert "200" in op["responses"], (path, method)

    def codes(path: str, method: str) -> set[str]:
        return set(doc["paths"][path][method]["responses"])

    auth = {"401", "403"}  # once auth is enabled
    assert codes("/kv/{key}", "get") == {"200", "400", "404", "413", "500", "503"} | auth
    # 404 on a write: the lease it names does not exist.
    assert {"200", "400", "404", "409", "410", "413", "500", "503"} | auth == codes(
        "/kv/{key}", "post"
    )
    assert codes("/kv/{key}", "put") == codes("/kv/{key}", "post")
    assert codes("/kv/{key}", "delete") == codes("/kv/{key}", "post")
    assert codes("/kv", "delete") == codes("/kv/{key}", "post") - {"404"}
    # A failed compare answers 200; 409 is only a session seq reused by another request.
    assert codes("/txn", "post") == codes("/kv/{key}", "post")
    assert codes("/lease", "post") == codes("/kv", "delete")
    assert codes("/lease/{lease_id}/keepalive", "post") == codes("/kv/{key}", "post") - {"409"}
    assert codes("/lease/{lease_id}", "delete") == codes("/kv/{key}", "post") - {"409"}
    assert codes("/lease/{lease_id}", "get") == codes("/kv/{key}", "get") - {"413"}
    assert "seq" in doc["paths"]["/txn"]["post"]["responses"]["409"]["description"]
    assert codes("/health", "get") == {"200", "503"}

    get_params = operation_params(doc, "/kv/{key}", "get")
    assert set(get_params) == {"key", "consistency"}
    assert get_params["consistency"]["schema"]["enum"] == ["linearizable", "stale"]
    assert "99 bytes" in get_params["key"]["description"]
    assert set(operation_params(doc, "/kv/{key}", "put")) == {
        "key",
        "prev_revision",
        "ttl",
        "lease",
        "X-Raftkv-Client-Id",
        "X-Raftkv-Seq",
        "X-Raftkv-First-Incomplete",
    }
    list_params = operation_params(doc, "/kv", "get")
    assert set(list_params) == {"prefix", "limit", "consistency"}
    assert list_params["limit"]["schema"]["maximum"] == 10_000
    assert list_params["limit"]["schema"]["default"] == 1000
    assert operation_params(doc, "/kv", "delete")["prefix"]["required"] is True

    body = doc["paths"]["/kv/{key}"]["post"]["requestBody"]["content"]["application/json"]
    schema = resolve(doc, body["schema"]["$ref"])
    assert schema["required"] == ["value"]
    assert set(schema["properties"]) == {"value", "prev_revision", "ttl", "lease"}
    unavailable = resolve(doc, "#/components/responses/WriteUnavailable")
    assert "Retry-After" in unavailable["headers"]


def test_document_reflects_settings(fake: FakeRaft) -> None:
    doc = build_openapi(WorkerSettings(ipc_path=fake.path, max_value_bytes=1234))
    too_large = doc["components"]["responses"]["TooLarge"]["description"]
    assert "1234 bytes" in too_large
