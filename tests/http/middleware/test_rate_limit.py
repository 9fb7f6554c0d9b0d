"""The rate limit of a worker: per client token buckets answering 429 with Retry-After.

The middleware alone on a clock moved by hand, then inside the worker's application
(in front of the fast path and the router, counted in the metrics)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from conftest import make_settings
from fake_raft import FakeRaft
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from raftkv.http.middleware.metrics import HttpMetrics
from raftkv.http.middleware.rate_limit import (
    RateLimiter,
    RateLimitMiddleware,
    retry_after_seconds,
)
from raftkv.http.routes.app import create_app
from raftkv.wire.limits import HttpLimits


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


async def plain_app(scope: Scope, receive: Receive, send: Send) -> None:
    """200 for every path, except 401 for /denied (as authentication would answer)."""
    status = 401 if scope["path"] == "/denied" else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


class Limited:
    """The middleware around ``plain_app``, and a way to call it as any client."""

    def __init__(self, rate: float, burst: float, *, auth_on: bool = True) -> None:
        self.clock = FakeClock()
        self.refused = 0
        self.limiter = RateLimiter(
            rate=rate,
            burst=burst,
            on_refused=self._count,
            clock=self.clock,
            credentials_checked=lambda: auth_on,
        )
        self.app = RateLimitMiddleware(plain_app, limiter=self.limiter)
        self._clients: dict[str, TestClient] = {}

    def _count(self) -> None:
        self.refused += 1

    def get(
        self, path: str = "/kv/a", *, address: str = "10.0.0.1", token: str | None = None
    ) -> httpx.Response:
        client = self._clients.get(address)
        if client is None:
            client = self._clients[address] = TestClient(self.app, client=(address, 4000))
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        return client.get(path, headers=headers)

    def statuses(self, count: int, **kwargs: str) -> list[int]:
        return [self.get(**kwargs).status_code for _ in range(count)]


def test_over_the_limit_is_429_with_a_json_error_and_retry_after() -> None:
    limited = Limited(rate=0.5, burst=2)
    assert limited.statuses(2) == [200, 200]
    refused = limited.get()
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "2"  # one token every 2 s
    assert refused.headers["content-type"] == "application/json"
    body = refused.json()
    assert body["retry_after"] == 2
    assert "too many requests" in body["error"]
    assert limited.refused == 1


def test_retry_after_is_the_wait_rounded_up_and_is_honest() -> None:
    limited = Limited(rate=0.5, burst=1)
    assert limited.get().status_code == 200
    limited.clock.now += 0.5
    assert limited.get().headers["retry-after"] == "2"  # 1.5 s, rounded up
    limited.clock.now += 1.0
    assert limited.get().headers["retry-after"] == "1"  # 0.5 s, rounded up
    limited.clock.now += 0.5
    assert limited.get().status_code == 200  # exactly when it said


@pytest.mark.parametrize(("wait", "header"), [(0.001, 1), (0.999, 1), (1.0, 1), (1.01, 2)])
def test_retry_after_seconds_rounds_up_to_at_least_one(wait: float, header: int) -> None:
    assert retry_after_seconds(wait) == header


def test_health_is_never_limited() -> None:
    limited = Limited(rate=0.001, burst=1)
    assert limited.get().status_code == 200
    assert limited.get().status_code == 429
    assert limited.statuses(20, path="/health") == [200] * 20
    assert limited.refused == 1


def test_addresses_are_separate_clients() -> None:
    limited = Limited(rate=0.001, burst=1)
    assert limited.statuses(2, address="10.0.0.1") == [200, 429]
    assert limited.statuses(2, address="10.0.0.2") == [200, 429]


def test_credentials_are_the_client_wherever_they_come_from() -> None:
    limited = Limited(rate=0.001, burst=2)
    # One token from two addresses shares one bucket...
    assert limited.get(token="alice", address="10.0.0.1").status_code == 200
    assert limited.get(token="alice", address="10.0.0.2").status_code == 200
    assert limited.get(token="alice", address="10.0.0.3").status_code == 429
    # ...and two tokens from one address (users behind one proxy) have two.
    assert limited.statuses(2, token="bob", address="10.0.0.1") == [200, 200]
    assert limited.statuses(2, address="10.0.0.1") == [200, 200]  # no credentials


def test_while_auth_is_off_made_up_credentials_do_not_make_a_new_client() -> None:
    limited = Limited(rate=0.001, burst=2, auth_on=False)
    # Nothing checks the header, so a new one per request is still the same address.
    statuses = [limited.get(token=f"made-up-{i}").status_code for i in range(3)]
    assert statuses == [200, 200, 429]
    assert limited.get(address="10.0.0.2").status_code == 200


def test_made_up_credentials_that_fail_cost_their_address() -> None:
    limited = Limited(rate=0.001, burst=3)
    # Each request with new credentials would get a new bucket; but each 401 takes a
    # token from the address's failure bucket, and an empty one stops them all.
    statuses = [limited.get("/denied", token=f"guess-{i}").status_code for i in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
    refused = limited.get("/kv/a", token="another-guess")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    # Another address, and requests without credentials, are not affected.
    assert limited.get("/denied", token="guess-9", address="10.0.0.2").status_code == 401
    assert limited.get("/kv/a").status_code == 200


def test_correct_credentials_never_touch_the_failure_bucket() -> None:
    limited = Limited(rate=0.001, burst=1)
    for user in ("u1", "u2", "u3", "u4"):
        assert limited.get(token=user).status_code == 200


# -- inside the worker's application --------------------------------------------------


@pytest.fixture
def metrics() -> HttpMetrics:
    return HttpMetrics(None)


@pytest.fixture
def limited_worker(fake: FakeRaft, metrics: HttpMetrics) -> Iterator[TestClient]:
    settings = make_settings(fake, limits=HttpLimits(rate_limit=0.001, rate_burst=3))
    with TestClient(create_app(settings, http_metrics=metrics)) as client:
        yield client


def test_the_worker_limits_the_fast_path_and_the_router(
    limited_worker: TestClient, metrics: HttpMetrics
) -> None:
    client = limited_worker
    assert client.put("/kv/a", content=b"1").status_code == 200  # fast path
    assert client.get("/kv/a").status_code == 200  # fast path
    assert client.post("/kv/b", json={"value": "2"}).status_code == 200  # router
    for response in (
        client.put("/kv/a", content=b"3"),
        client.get("/kv/a"),
        client.post("/kv/b", json={"value": "4"}),
        client.get("/cluster/status"),
    ):
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) >= 1
        assert "too many requests" in response.json()["error"]
    assert client.get("/health").status_code == 200
    text = metrics.exposition().decode()
    assert "raftkv_http_rate_limited_total 4.0" in text
    assert 'route="/kv/{key}",status="429"' in text


def test_without_a_rate_limit_nothing_is_refused(client: TestClient) -> None:
    statuses = {client.put("/kv/a", content=b"x").status_code for _ in range(50)}
    assert statuses == {200}
