"""GET /metrics on a worker: the Raft process's text, then the worker's own request
metrics, labelled by route template; and the sum over several worker processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from fake_raft import FakeRaft
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from raftkv.http.middleware.metrics import HttpMetrics
from raftkv.node.worker_metrics_dir import MULTIPROCESS_DIR_ENV, prepare_worker_metrics_dir

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient) -> tuple[list[str], Samples]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = list(text_string_to_metric_families(response.text))
    names = [family.name for family in families]
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in families
        for s in family.samples
    }
    return names, values


def labels(**pairs: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(pairs.items()))


def test_metrics_hold_the_raft_process_text_and_the_workers(client: TestClient) -> None:
    client.put("/kv/a", content=b"12345")
    names, values = scrape(client)
    assert names[0] == "raftkv_is_leader"  # the fake Raft process's text comes first
    assert values[("raftkv_is_leader", ())] == 1
    assert {
        "raftkv_http_request_duration_seconds",
        "raftkv_http_request_body_bytes",
        "raftkv_http_response_body_bytes",
    } <= set(names)
    assert [name for name, count in Counter(names).items() if count > 1] == []


def test_requests_are_counted_by_route_template_never_by_key(client: TestClient) -> None:
    # Through the fast path (GET, PUT) and through the router (POST, DELETE, a 404).
    assert client.put("/kv/users/alice", content=b"x" * 10).status_code == 200
    assert client.put("/kv/users/bob", content=b"y" * 5).status_code == 200
    assert client.get("/kv/users/alice").content == b"x" * 10
    assert client.get("/kv/nobody").status_code == 404
    assert client.post("/kv/users/carol", json={"value": "z"}).status_code == 200
    assert client.delete("/kv/users/bob").status_code == 200
    assert client.get("/no/such/route").status_code == 404
    assert client.get("/cluster/members/2").status_code == 405
    _, values = scrape(client)

    def count(method: str, route: str, status: str) -> float:
        key = labels(method=method, route=route, status=status)
        return values.get(("raftkv_http_request_duration_seconds_count", key), 0.0)

    assert count("PUT", "/kv/{key}", "200") == 2
    assert count("GET", "/kv/{key}", "200") == 1
    assert count("GET", "/kv/{key}", "404") == 1
    assert count("POST", "/kv/{key}", "200") == 1
    assert count("DELETE", "/kv/{key}", "200") == 1
    assert count("GET", "unmatched", "404") == 1
    assert count("GET", "/cluster/members/{node_id}", "405") == 1
    routes = {dict(key).get("route") for _, key in values}
    assert not any(route and ("alice" in route or "users" in route) for route in routes)
    received = values[
        ("raftkv_http_request_body_bytes_total", labels(method="PUT", route="/kv/{key}"))
    ]
    assert received == 15
    sent = values[
        ("raftkv_http_response_body_bytes_total", labels(method="GET", route="/kv/{key}"))
    ]
    assert sent >= 10  # the value, and the 404's JSON error


def test_a_raft_process_that_does_not_answer_fails_the_scrape(
    fake: FakeRaft, client: TestClient
) -> None:
    fake.unavailable = True
    response = client.get("/metrics")
    assert response.status_code == 503
    assert "error" in response.json()


def test_an_unknown_method_gets_one_shared_label(client: TestClient) -> None:
    client.request("BREW", "/kv/coffee")
    _, values = scrape(client)
    methods = {dict(key).get("method") for _, key in values}
    assert "other" in methods and "BREW" not in methods


_WORKER = """
import sys
from raftkv.http.middleware.metrics import HttpMetrics
metrics = HttpMetrics.from_environment()
for _ in range(int(sys.argv[1])):
    metrics.record("GET", "/kv/{key}", 200, 0.003, 0, 7)
sys.stdout.buffer.write(metrics.exposition())
"""


def run_worker(directory: Path, requests: int) -> str:
    env = {**os.environ, MULTIPROCESS_DIR_ENV: str(directory)}
    done = subprocess.run(
        [sys.executable, "-c", _WORKER, str(requests)],
        env=env,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return done.stdout.decode()


def test_workers_sharing_a_directory_are_summed(tmp_path: Path) -> None:
    directory = prepare_worker_metrics_dir(tmp_path)
    run_worker(directory, 3)
    text = run_worker(directory, 4)  # the second worker serves the sum of both
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    key = labels(method="GET", route="/kv/{key}", status="200")
    assert values[("raftkv_http_request_duration_seconds_count", key)] == 7
    sent = values[
        ("raftkv_http_response_body_bytes_total", labels(method="GET", route="/kv/{key}"))
    ]
    assert sent == 49
    # A node that starts again starts from an empty directory.
    assert prepare_worker_metrics_dir(tmp_path) == directory
    assert list(directory.iterdir()) == []


def _events_sent(metrics: HttpMetrics) -> float:
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name == "raftkv_http_watch_events_sent_total":
                return sample.value
    raise AssertionError("no raftkv_http_watch_events_sent_total")


def test_watch_events_are_recorded_once_per_turn_of_the_loop() -> None:
    async def scenario() -> None:
        metrics = HttpMetrics(None)
        recorded: list[float] = []
        counter = metrics._watch_events
        real_inc = counter.inc
        counter.inc = lambda amount=1: (recorded.append(amount), real_inc(amount))[1]  # type: ignore[method-assign]
        for _ in range(500):
            metrics.events_sent(2)
        metrics.events_sent(0)
        assert recorded == []
        await asyncio.sleep(0)
        assert recorded == [1000]
        metrics.events_sent(3)
        # A scrape in the same turn sees it too.
        assert _events_sent(metrics) == 1003
        await asyncio.sleep(0)
        assert recorded == [1000, 3]

    asyncio.run(scenario())
    # Without an event loop (a tool, a test), at once.
    metrics = HttpMetrics(None)
    metrics.events_sent(4)
    assert _events_sent(metrics) == 4
