"""Regressions found by fuzzing the HTTP API: keys holding a newline reached no route
(404) for the methods served by the router rather than the fast path, and over-long
digit strings in numeric parameters escaped as 500."""

from __future__ import annotations

from fake_raft import FakeRaft
from starlette.testclient import TestClient


def test_a_key_with_a_newline_is_written_read_and_deleted(
    client: TestClient, fake: FakeRaft
) -> None:
    path = "/kv/a%0Ab%0D"
    posted = client.post(path, json={"value": "v"})
    assert posted.status_code == 200, posted.text
    assert fake.data[b"a\nb\r"].value == b"v"
    assert client.get(path).content == b"v"
    assert client.delete(path).status_code == 200
    assert b"a\nb\r" not in fake.data


def test_endless_digits_are_a_400_not_a_500(client: TestClient) -> None:
    digits = "9" * 5000
    for response in (
        client.put("/kv/k", content=b"v", params={"prev_revision": digits}),
        client.get("/kv", params={"prefix": "k", "limit": digits}),
        client.delete(f"/cluster/members/{digits}"),
        client.delete("/cluster/members/%C2%B2"),  # "²": isdigit(), yet not for int()
        client.post(
            "/kv/k",
            json={"value": "v"},
            headers={
                "X-Raftkv-Client-Id": digits,
                "X-Raftkv-Seq": "1",
                "X-Raftkv-First-Incomplete": "1",
            },
        ),
    ):
        assert response.status_code == 400, response.text
        assert response.json()["error"]
