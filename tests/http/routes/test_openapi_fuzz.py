"""The HTTP API fuzzed from its own OpenAPI document: Schemathesis generates requests for
every operation (valid ones and ones that break the schema) and sends them to a real
single node. No answer may be a 5xx, and every status code must be one the document
lists for that operation.

CI runs a few dozen requests per operation; ``RAFTKV_FUZZ=long`` (or
``RAFTKV_FUZZ_HTTP_EXAMPLES``) runs many more, see docs/testing.md.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import status_code_conformance

from raftkv.http.routes.openapi import build_openapi
from raftkv.http.serving.settings import WorkerSettings
from raftkv.testing.cluster import LocalCluster

_LONG = os.environ.get("RAFTKV_FUZZ") == "long"
EXAMPLES = int(os.environ.get("RAFTKV_FUZZ_HTTP_EXAMPLES", "1000" if _LONG else "100"))

pytestmark = pytest.mark.timeout(3600 if _LONG else 600)


@pytest.fixture(scope="module")
def node_url() -> Iterator[str]:
    base = Path(tempfile.mkdtemp(prefix="rkv-openapi-fuzz-"))
    cluster = LocalCluster(base, 1)
    try:
        cluster.start()
        yield cluster.url(1)
        # The node survived everything, and nothing in it ended in a traceback.
        assert cluster.nodes[1].running, cluster.describe()
        assert "Traceback" not in cluster.nodes[1].log_text(), cluster.nodes[1].log_text()
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@schemathesis.serializer("application/x-ndjson")
def _ndjson(ctx: schemathesis.SerializationContext, value: object) -> bytes:
    """The streaming keep-alive's body: one JSON document per line (a generated body
    that is not a list goes as one line, which the route must refuse with a message)."""
    items = value if isinstance(value, list) else [value]
    # json, not orjson: generated ids may be beyond 64 bits, which the route refuses.
    return "".join(json.dumps(item) + "\n" for item in items).encode()


# The document of a node with default settings, built here because Schemathesis needs
# it when the tests are collected, before any node runs; test_the_node_serves_this_document
# checks that it is the one the node under test serves.
DOCUMENT = build_openapi(WorkerSettings(ipc_path="unused"))
schema = schemathesis.openapi.from_dict(DOCUMENT)


def test_the_node_serves_this_document(node_url: str) -> None:
    assert httpx.get(f"{node_url}/openapi.json", timeout=10).json() == DOCUMENT


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case: Any, node_url: str) -> None:
    if case.path.startswith("/watch"):
        # A watch stream never ends by itself: fuzz its long-poll form, answered at
        # once (a malformed wait stays, to be refused). Streams are tested in
        # tests/http/routes/test_watch.py and tests/cluster/test_watch_cluster.py.
        query = dict(case.query or {})
        try:
            valid_wait = 0 <= float(query.get("wait", 0)) <= 300
        except (TypeError, ValueError):
            valid_wait = False
        if valid_wait:
            query["wait"] = "0"
        case.query = query
    response = case.call(base_url=node_url, timeout=30)
    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path} answered {response.status_code}: "
        f"{response.text[:500]}\nreproduce: {case.as_curl_command(base_url=node_url)}"
    )
    case.validate_response(response, checks=[not_a_server_error, status_code_conformance])
