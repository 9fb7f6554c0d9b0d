"""Transactions on real kvnode processes: through a follower, at one revision on every
replica, compare-and-swap increments racing from every node (none lost, none applied
twice), and a leader killed under a retried transaction (docs/api.md, "Transactions")."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from raftkv.testing.cluster import LocalCluster, running_cluster, wait_until


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("txn"), 3) as running:
        yield running


def txn(url: str, doc: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    response = httpx.post(f"{url}/txn", json=doc, timeout=10.0, **kwargs)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def stale_get(cluster: LocalCluster, node: int, key: str) -> dict[str, Any] | None:
    response = httpx.get(
        f"{cluster.url(node)}/kv/{key}",
        params={"consistency": "stale"},
        headers={"Accept": "application/json"},
        timeout=5.0,
    )
    if response.status_code == 404:
        return None
    answer: dict[str, Any] = response.json()
    return answer


def test_a_transaction_through_a_follower_lands_at_one_revision_everywhere(
    cluster: LocalCluster,
) -> None:
    follower = cluster.followers()[0]
    answer = txn(
        cluster.url(follower),
        {
            "compare": [{"key": "tx/a", "target": "exists", "value": False}],
            "success": [
                {"put": {"key": "tx/a", "value": "1"}},
                {"put": {"key": "tx/b", "value": "2"}},
            ],
        },
    )
    assert answer["succeeded"]
    revision = answer["revision"]
    for node in (1, 2, 3):
        wait_until(
            lambda node=node: stale_get(cluster, node, "tx/b") is not None,  # type: ignore[misc]
            timeout=10.0,
            what=f"node {node} to apply the transaction",
        )
        for key in ("tx/a", "tx/b"):
            kv = stale_get(cluster, node, key)
            assert kv is not None and kv["mod_revision"] == revision


def test_racing_compare_and_swap_increments_lose_nothing(cluster: LocalCluster) -> None:
    """Each worker reads the counter and its revision in a transaction, then swaps in
    the next value only if the revision is unchanged; every node takes some of them.
    The counter ends at exactly the number of swaps that reported success."""
    key = "tx/counter"
    txn(cluster.url(1), {"success": [{"put": {"key": key, "value": "0"}}]})
    successes: list[int] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker(node: int) -> None:
        url = cluster.url(node)
        try:
            for _ in range(15):
                read = txn(url, {"success": [{"get": {"key": key}}]})
                kv = read["results"][0]["get"]["kv"]
                swap = txn(
                    url,
                    {
                        "compare": [
                            {"key": key, "target": "mod_revision", "value": kv["mod_revision"]}
                        ],
                        "success": [{"put": {"key": key, "value": str(int(kv["value"]) + 1)}}],
                        "failure": [{"get": {"key": key}}],
                    },
                )
                if swap["succeeded"]:
                    with lock:
                        successes.append(swap["revision"])
                else:
                    # The failure branch read a newer revision than the one compared.
                    assert swap["results"][0]["get"]["kv"]["mod_revision"] > kv["mod_revision"]
        except Exception as exc:  # reported below, with the thread's node
            errors.append(f"node {node}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in (1, 2, 3, 1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert successes
    assert len(set(successes)) == len(successes)  # each swap at a revision of its own
    final = txn(cluster.url(2), {"success": [{"get": {"key": key}}]})["results"][0]["get"]["kv"]
    assert int(final["value"]) == len(successes)
    assert final["mod_revision"] == max(successes)


def test_a_retried_transaction_across_a_leader_kill_applies_once(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with running_cluster(tmp_path_factory.mktemp("txn-kill"), 3) as cluster:
        leader = cluster.leader()
        survivor = next(n for n in (1, 2, 3) if n != leader)
        headers = {
            "X-Raftkv-Client-Id": "4242",
            "X-Raftkv-Seq": "1",
            "X-Raftkv-First-Incomplete": "1",
        }
        doc = {
            "compare": [{"key": "once", "target": "exists", "value": False}],
            "success": [{"put": {"key": "once", "value": "applied"}}],
            "failure": [{"get": {"key": "once"}}],
        }
        first = txn(cluster.url(survivor), doc, headers=headers)
        cluster.kill(leader)
        # The client did not trust the first answer and sends it again, same tag, until
        # a new leader answers (503s meanwhile).
        answers: list[httpx.Response] = []

        def answered() -> bool:
            response = httpx.post(
                f"{cluster.url(survivor)}/txn", json=doc, headers=headers, timeout=10.0
            )
            answers.append(response)
            assert response.status_code in (200, 503), response.text
            return response.status_code == 200

        wait_until(answered, timeout=60.0, interval=0.2, what="the retry to be answered")
        again = answers[-1].json()
        assert again["succeeded"] and again["revision"] == first["revision"]
        assert again["results"] == first["results"] == [{"put": {}}]
        kv = stale_get(cluster, survivor, "once")
        assert kv is not None and kv["version"] == 1
