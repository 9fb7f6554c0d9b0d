"""The dashboard in a real headless Chromium, against real kvnode processes.

Chromium is the system's (Debian's ``chromium`` package), driven by Playwright; a machine
without it fails these tests with a message that says what to install, rather than
skipping them. The last screenshot is saved under ``test-artifacts/`` of the current
directory (or ``$RAFTKV_TEST_ARTIFACTS``).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raftkv.http.routes.dashboard import build_page
from raftkv.testing.cluster import LocalCluster, running_cluster

CHROMIUM = Path(os.environ.get("RAFTKV_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("RAFTKV_TEST_ARTIFACTS", "test-artifacts"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LATENCY_METRIC = "raftkv_http_request_duration_seconds"
# Long enough for an election after a kill -9 on a slow, busy machine.
FAILOVER_TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A Chromium context with a fresh profile."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: the dashboard tests need it. Install "
            "Debian's package (apt-get install -y --no-install-recommends chromium) or set "
            "RAFTKV_CHROMIUM to a Chromium binary.",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the Python package playwright is missing: pip install '.[test]'", pytrace=False
        )
    with (
        tempfile.TemporaryDirectory(prefix="rkv-chromium-") as profile,
        sync_playwright() as playwright,
    ):
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 860},
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path, 3) as running:
        yield running


def open_dashboard(browser: Any, url: str, errors: list[str]) -> Any:
    page = browser.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{url}/dashboard")
    return page


def write_for(cluster: LocalCluster, node_id: int, seconds: float, prefix: str) -> None:
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        cluster.put(node_id, f"{prefix}/{i}", "value")
        i += 1


def test_dashboard_shows_the_cluster_and_follows_a_failover(
    cluster: LocalCluster, browser: Any
) -> None:
    from playwright.sync_api import expect

    leader = cluster.leader()
    survivor = min(n for n in cluster.nodes if n != leader)
    errors: list[str] = []
    # One page served by a node that survives, one by the leader that is about to die:
    # both must go on showing the cluster.
    on_survivor = open_dashboard(browser, cluster.url(survivor), errors)
    on_leader = open_dashboard(browser, cluster.url(leader), errors)

    for page in (on_survivor, on_leader):
        nodes = page.locator("article.node")
        expect(nodes).to_have_count(3)
        for node_id in cluster.nodes:
            expect(page.locator(f'article.node[data-node-id="{node_id}"]')).to_have_count(1)
        leaders = page.locator('article.node[data-role="leader"]')
        expect(leaders).to_have_count(1)
        expect(leaders).to_have_attribute("data-node-id", str(leader))
        expect(page.locator("#leader")).to_have_attribute("data-leader-id", str(leader))
        expect(page.locator('article.node[data-reachable="true"]')).to_have_count(3)
        expect(page.locator(f'#history tr[data-leader-id="{leader}"]')).to_have_count(1)

    cluster.kill(leader)
    new_leader = cluster.leader(timeout=FAILOVER_TIMEOUT_MS / 1000)
    assert new_leader != leader

    # Load on the new leader while the pages watch, so the throughput shows.
    writer = threading.Thread(target=write_for, args=(cluster, new_leader, 4.0, "dashboard"))
    writer.start()
    try:
        for page in (on_survivor, on_leader):
            timeout = FAILOVER_TIMEOUT_MS
            expect(page.locator("#leader")).to_have_attribute(
                "data-leader-id", str(new_leader), timeout=timeout
            )
            leaders = page.locator('article.node[data-role="leader"]')
            expect(leaders).to_have_count(1, timeout=timeout)
            expect(leaders).to_have_attribute("data-node-id", str(new_leader))
            dead = page.locator(f'article.node[data-node-id="{leader}"]')
            expect(dead).to_have_attribute("data-reachable", "false", timeout=timeout)
            expect(page.locator('article.node[data-reachable="true"]')).to_have_count(2)
            # The history keeps the old leader's term under the new one.
            expect(page.locator(f'#history tr[data-leader-id="{new_leader}"]')).to_have_count(1)
            expect(page.locator(f'#history tr[data-leader-id="{leader}"]')).to_have_count(1)
            first_row = page.locator("#history tr").first
            expect(first_row).to_have_attribute("data-leader-id", str(new_leader))
        expect(on_leader.locator("#connection")).to_contain_text("served this page is down")
        expect(on_survivor.locator("#writes")).not_to_have_text("—", timeout=10_000)
        expect(on_survivor.locator("#writes")).not_to_have_text("0.0", timeout=10_000)
        metrics = cluster.client.get(f"{cluster.url(new_leader)}/metrics")
        if LATENCY_METRIC in metrics.text:
            # Only once the nodes export the histogram; until then the page shows "—".
            expect(on_survivor.locator("#latency")).not_to_have_text("—", timeout=10_000)
    finally:
        writer.join()

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "dashboard.png"
    on_survivor.screenshot(path=str(screenshot), full_page=True)
    print(f"dashboard screenshot: {screenshot.resolve()}")
    assert errors == [], errors


def histogram(buckets: dict[str, int], total_seconds: float, *, route: str = "/kv/{key}") -> str:
    labels = f'method="PUT",route="{route}",status="200"'
    lines = [
        f'{LATENCY_METRIC}_bucket{{{labels},le="{le}"}} {count}' for le, count in buckets.items()
    ]
    lines.append(f"{LATENCY_METRIC}_sum{{{labels}}} {total_seconds}")
    lines.append(f"{LATENCY_METRIC}_count{{{labels}}} {buckets['+Inf']}")
    return "\n".join(lines) + "\n"


def test_latency_comes_from_histogram_deltas_without_the_pages_own_polls(browser: Any) -> None:
    """The page's Prometheus parsing and quantiles, on made-up scrapes (no cluster)."""
    page = browser.new_page()
    page.set_content(build_page()[0].decode("utf-8"))
    before = histogram({"0.001": 10, "0.01": 20, "+Inf": 20}, 0.05)
    after = histogram({"0.001": 60, "0.01": 120, "+Inf": 120}, 0.35)
    own_polls = histogram({"0.001": 900, "+Inf": 900}, 0.2, route="/cluster/status")
    result = page.evaluate(
        """([before, after]) => {
            const delta = subtractHistograms(parseHistogram(after), parseHistogram(before));
            return {
                count: delta.count,
                p50: quantile(delta, 0.5),
                p99: quantile(delta, 0.99),
                mean: delta.sum / delta.count,
                restarted: subtractHistograms(parseHistogram(before), parseHistogram(after)),
                absent: parseHistogram("other_metric 1\\n"),
            };
        }""",
        [before + own_polls, after + own_polls],
    )
    page.close()
    assert result["count"] == 100
    # 50 of the 100 fell at or under 1 ms, all 100 under 10 ms: interpolated in the bucket.
    assert result["p50"] == pytest.approx(0.001)
    assert result["p99"] == pytest.approx(0.001 + 0.009 * 49 / 50)
    assert result["mean"] == pytest.approx(0.003)
    assert result["restarted"] is None
    assert result["absent"] is None
