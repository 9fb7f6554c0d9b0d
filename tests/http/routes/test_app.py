"""The worker's HTTP API, driven through Starlette's TestClient against a fake Raft process."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from conftest import make_settings
from fake_raft import FakeRaft, Forced
from starlette.testclient import TestClient

from raftkv.http.routes.app import create_app
from raftkv.wire.protocol import MAX_LIST_LIMIT, Flag, Op, ReplyStatus
from raftkv.wire.sessions import WriteSession

JSON = {"Accept": "application/json"}


def error_of(response: httpx.Response) -> str:
    assert response.headers["content-type"] == "application/json"
    message = response.json()["error"]
    assert isinstance(message, str)
    assert message
    return message


def put(client: TestClient, key: str, value: str, **fields: Any) -> httpx.Response:
    response: httpx.Response = client.post(f"/kv/{key}", json={"value": value, **fields})
    return response


# -- writes and reads ---------------------------------------------------------------------


def test_post_then_raw_get(client: TestClient, fake: FakeRaft) -> None:
    response = put(client, "greeting", "hello")
    assert response.status_code == 200
    assert response.json() == {"key": "greeting", "index": 1, "term": 3, "revision": 1}
    assert fake.data[b"greeting"].value == b"hello"

    got = client.get("/kv/greeting")
    assert got.status_code == 200
    assert got.content == b"hello"
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["x-raftkv-revision"] == "1"
    assert got.headers["x-raftkv-create-revision"] == "1"
    assert got.headers["x-raftkv-version"] == "1"
    assert got.headers["x-raftkv-index"] == "1"


def test_json_get_reports_revisions(client: TestClient) -> None:
    assert put(client, "k", "one").status_code == 200
    assert put(client, "other", "x").status_code == 200
    assert put(client, "k", "two").status_code == 200
    got = client.get("/kv/k", headers=JSON)
    assert got.status_code == 200
    assert got.json() == {
        "key": "k",
        "value": "two",
        "create_revision": 1,
        "mod_revision": 3,
        "version": 2,
    }
    assert got.headers["x-raftkv-index"] == "3"
    # q=0 means "not JSON": the raw value comes back.
    raw = client.get("/kv/k", headers={"Accept": "application/json;q=0, */*"})
    assert raw.content == b"two"


def test_raw_put_stores_any_bytes(client: TestClient, fake: FakeRaft) -> None:
    value = bytes(range(256)) * 4
    response = client.put("/kv/blob", content=value)
    assert response.status_code == 200
    assert response.json()["revision"] == 1
    assert fake.data[b"blob"].value == value
    assert client.get("/kv/blob").content == value
    doc = client.get("/kv/blob", headers=JSON).json()
    assert "value" not in doc
    assert base64.b64decode(doc["value_base64"]) == value


def test_raw_put_empty_value(client: TestClient) -> None:
    assert client.put("/kv/empty", content=b"").status_code == 200
    got = client.get("/kv/empty")
    assert got.status_code == 200
    assert got.content == b""
    assert got.headers["x-raftkv-version"] == "1"


def test_keys_with_slashes_and_unicode(client: TestClient, fake: FakeRaft) -> None:
    key = "config/служба/ü✓/leaf"
    response = put(client, key, "v")
    assert response.status_code == 200
    assert response.json()["key"] == key
    assert key.encode("utf-8") in fake.data
    assert client.get(f"/kv/{key}").content == b"v"
    # A percent-encoded slash is the same key as a literal one.
    assert client.get("/kv/config%2F%D1%81%D0%BB%D1%83%D0%B6%D0%B1%D0%B0/ü✓/leaf").content == b"v"


def test_key_bytes_that_are_not_utf8(client: TestClient, fake: FakeRaft) -> None:
    response = client.put("/kv/raw%FF%00key", content=b"x")
    assert response.status_code == 200
    assert b"raw\xff\x00key" in fake.data
    doc = response.json()
    assert "key" not in doc
    assert base64.b64decode(doc["key_base64"]) == b"raw\xff\x00key"
    assert client.get("/kv/raw%FF%00key").content == b"x"


def test_get_absent_key_is_404(client: TestClient) -> None:
    response = client.get("/kv/nope/nothing")
    assert response.status_code == 404
    assert response.json() == {"error": "key not found", "key": "nope/nothing"}


def test_consistency_levels(client: TestClient, fake: FakeRaft) -> None:
    fake.put_direct(b"k", b"v")
    assert client.get("/kv/k?consistency=stale").content == b"v"
    assert client.get("/kv/k?consistency=linearizable").content == b"v"
    assert client.get("/kv/k").content == b"v"
    # Every HTTP read asks for the key's lease too (shown when it has one).
    flags = [r.flags & ~Flag.WITH_LEASE for r in fake.requests_of(Op.GET)]
    assert flags == [int(Flag.STALE_READ), 0, 0]
    assert all(r.flags & Flag.WITH_LEASE for r in fake.requests_of(Op.GET))
    bad = client.get("/kv/k?consistency=eventual")
    assert bad.status_code == 400
    assert "consistency" in error_of(bad)
    assert client.get("/kv?consistency=sometimes").status_code == 400
    assert client.get("/kv?consistency=stale").status_code == 200
    assert fake.requests_of(Op.LIST)[-1].flags == int(Flag.STALE_READ)


def test_delete(client: TestClient, fake: FakeRaft) -> None:
    assert put(client, "a/b", "v").status_code == 200
    response = client.delete("/kv/a/b")
    assert response.status_code == 200
    assert response.json() == {"key": "a/b", "deleted": True, "index": 2, "term": 3, "revision": 2}
    assert b"a/b" not in fake.data
    assert client.get("/kv/a/b").status_code == 404
    again = client.delete("/kv/a/b")
    assert again.status_code == 404
    assert error_of(again) == "key not found"


def test_writes_are_tagged_and_reads_are_not(client: TestClient, fake: FakeRaft) -> None:
    session = client.app.state.session  # type: ignore[attr-defined]
    assert isinstance(session, WriteSession)
    for i in range(3):
        assert put(client, f"k{i}", "v").status_code == 200
    assert client.delete("/kv/k0").status_code == 200
    assert client.delete("/kv?prefix=k").status_code == 200
    assert client.get("/kv/k1").status_code == 404
    writes = [r for r in fake.requests if r.op in (Op.PUT, Op.DELETE, Op.DELETE_PREFIX)]
    assert [r.client_id for r in writes] == [session.client_id] * 5
    assert [r.seq for r in writes] == [1, 2, 3, 4, 5]
    # Each was the only one outstanding, so first_incomplete is its own seq.
    assert [r.first_incomplete for r in writes] == [1, 2, 3, 4, 5]
    assert all(0 < r.timeout_ms <= 500 for r in fake.requests)
    reads = fake.requests_of(Op.GET)
    assert [(r.client_id, r.seq, r.first_incomplete) for r in reads] == [(0, 0, 0)]
    assert session.outstanding == 0


# -- compare-and-set ----------------------------------------------------------------------


def test_cas_with_json_body(client: TestClient) -> None:
    created = put(client, "lock", "me", prev_revision=0)
    assert created.status_code == 200
    revision = created.json()["revision"]

    exists = put(client, "lock", "you", prev_revision=0)
    assert exists.status_code == 409
    assert exists.json()["current_revision"] == revision
    assert "already exists" in error_of(exists)

    stale = put(client, "lock", "you", prev_revision=revision + 7)
    assert stale.status_code == 409
    assert stale.json()["current_revision"] == revision
    assert f"prev_revision {revision + 7}" in error_of(stale)

    swapped = put(client, "lock", "you", prev_revision=revision)
    assert swapped.status_code == 200
    assert client.get("/kv/lock").content == b"you"


def test_cas_on_absent_key_reports_revision_zero(client: TestClient) -> None:
    response = put(client, "ghost", "v", prev_revision=4)
    assert response.status_code == 409
    assert response.json()["current_revision"] == 0
    assert "does not exist" in error_of(response)
    assert client.get("/kv/ghost").status_code == 404


def test_cas_with_raw_put_and_delete(client: TestClient, fake: FakeRaft) -> None:
    assert client.put("/kv/c?prev_revision=0", content=b"1").status_code == 200
    assert client.put("/kv/c?prev_revision=0", content=b"2").status_code == 409
    assert client.put("/kv/c?prev_revision=1", content=b"2").status_code == 200
    assert fake.requests_of(Op.PUT)[-1].prev_revision == 1
    assert fake.requests_of(Op.PUT)[-1].flags == int(Flag.HAS_PREV_REVISION)
    conflict = client.delete("/kv/c?prev_revision=1")
    assert conflict.status_code == 409
    assert conflict.json()["current_revision"] == 3
    assert client.delete("/kv/c?prev_revision=3").status_code == 200
    # Without prev_revision the request says so (-1 and no flag).
    assert client.put("/kv/d", content=b"x").status_code == 200
    plain = fake.requests_of(Op.PUT)[-1]
    assert (plain.prev_revision, plain.flags) == (-1, 0)


# -- prefixes -----------------------------------------------------------------------------


def test_list_prefix(client: TestClient, fake: FakeRaft) -> None:
    for key in ("app/b", "app/a", "other/x", "app/c"):
        assert put(client, key, key.upper()).status_code == 200
    fake.put_direct(b"app/bin", b"\xff\xfe")
    response = client.get("/kv?prefix=app/")
    assert response.status_code == 200
    doc = response.json()
    assert doc["count"] == 4
    assert doc["more"] is False
    assert [item.get("key") for item in doc["items"]] == ["app/a", "app/b", "app/bin", "app/c"]
    assert doc["items"][0] == {
        "key": "app/a",
        "value": "APP/A",
        "create_revision": 2,
        "mod_revision": 2,
        "version": 1,
    }
    assert base64.b64decode(doc["items"][2]["value_base64"]) == b"\xff\xfe"
    # The worker asks for one more than the limit, to know whether there are more.
    assert fake.requests_of(Op.LIST)[-1].limit == 1001

    limited = client.get("/kv?prefix=app/&limit=2").json()
    assert limited["count"] == 2
    assert limited["more"] is True
    assert [item["key"] for item in limited["items"]] == ["app/a", "app/b"]

    everything = client.get("/kv").json()
    assert everything["count"] == 5


def test_list_limit_validation(client: TestClient) -> None:
    for query, fragment in [
        ("limit=ten", "integer"),
        ("limit=-1", "integer"),
        ("limit=0", "between 1 and 10000"),
        ("limit=10001", "between 1 and 10000"),
    ]:
        response = client.get(f"/kv?prefix=a&{query}")
        assert response.status_code == 400, query
        assert fragment in error_of(response)
    assert client.get("/kv?prefix=a&limit=10000").status_code == 200


def test_the_largest_limit_still_tells_whether_there_are_more(
    client: TestClient, fake: FakeRaft
) -> None:
    """The worker asks for one key more than the client's limit. The Raft process used
    to cap a listing at MAX_LIST_LIMIT keys, so ``limit=10000`` could never answer
    ``"more": true``; it serves LIST_FETCH_MAX = MAX_LIST_LIMIT + 1."""
    assert MAX_LIST_LIMIT == 10_000
    for i in range(MAX_LIST_LIMIT):
        fake.put_direct(b"big/%05d" % i, b"v")
    fake.put_direct(b"bigger", b"not under the prefix, right after it")
    query = f"/kv?prefix=big/&limit={MAX_LIST_LIMIT}"

    exact = client.get(query).json()
    assert (exact["count"], exact["more"]) == (MAX_LIST_LIMIT, False)

    fake.put_direct(b"big/%05d" % MAX_LIST_LIMIT, b"v")
    over = client.get(query).json()
    assert (over["count"], over["more"]) == (MAX_LIST_LIMIT, True)
    assert over["items"][-1]["key"] == "big/09999"
    assert fake.requests_of(Op.LIST)[-1].limit == MAX_LIST_LIMIT + 1


def test_delete_prefix(client: TestClient, fake: FakeRaft) -> None:
    for key in ("t/1", "t/2", "t/3", "u/1"):
        assert put(client, key, "v").status_code == 200
    response = client.delete("/kv?prefix=t/")
    assert response.status_code == 200
    assert response.json() == {"deleted": 3, "index": 5, "term": 3}
    assert sorted(fake.data) == [b"u/1"]
    none = client.delete("/kv?prefix=t/")
    assert none.status_code == 200
    assert none.json()["deleted"] == 0


def test_delete_prefix_requires_prefix(client: TestClient, fake: FakeRaft) -> None:
    assert put(client, "a", "v").status_code == 200
    assert put(client, "b", "v").status_code == 200
    missing = client.delete("/kv")
    assert missing.status_code == 400
    assert "prefix is required" in error_of(missing)
    assert fake.requests_of(Op.DELETE_PREFIX) == []
    everything = client.delete("/kv?prefix=")
    assert everything.status_code == 200
    assert everything.json()["deleted"] == 2
    assert fake.data == {}


def test_prefix_keeps_raw_bytes(client: TestClient, fake: FakeRaft) -> None:
    fake.put_direct(b"\xffa", b"1")
    fake.put_direct(b"\xffb", b"2")
    fake.put_direct(b"plain", b"3")
    doc = client.get("/kv?prefix=%FF").json()
    assert doc["count"] == 2
    assert [base64.b64decode(i["key_base64"]) for i in doc["items"]] == [b"\xffa", b"\xffb"]
    spaced = client.get("/kv?prefix=a+b")
    assert spaced.status_code == 200
    assert fake.requests_of(Op.LIST)[-1].key == b"a b"


# -- limits and malformed input -----------------------------------------------------------


@pytest.fixture
def small(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(max_key_bytes=16, max_value_bytes=100, max_body_bytes=200)


def test_empty_key_is_400(client: TestClient) -> None:
    for response in (client.get("/kv/"), client.put("/kv/", content=b"x"), put(client, "", "x")):
        assert response.status_code == 400
        assert error_of(response) == "key must not be empty"


def test_key_too_long_is_413(small: TestClient, fake: FakeRaft) -> None:
    assert small.put("/kv/" + "k" * 16, content=b"x").status_code == 200
    for response in (
        small.put("/kv/" + "k" * 17, content=b"x"),
        small.get("/kv/" + "k" * 17),
        small.delete("/kv/" + "é" * 9),  # 18 bytes in UTF-8
        small.get("/kv?prefix=" + "p" * 17),
    ):
        assert response.status_code == 413
        assert "the limit is 16 bytes" in error_of(response)
    assert len(fake.requests) == 1


def test_value_too_large_is_413(small: TestClient, fake: FakeRaft) -> None:
    assert small.put("/kv/k", content=b"v" * 100).status_code == 200
    raw = small.put("/kv/k", content=b"v" * 101)
    assert raw.status_code == 413
    assert error_of(raw) == "value is 101 bytes; the limit is 100 bytes"
    as_json = small.post("/kv/k", json={"value": "é" * 51})  # 102 bytes of UTF-8
    assert as_json.status_code == 413
    assert error_of(as_json) == "value is 102 bytes; the limit is 100 bytes"
    assert len(fake.requests_of(Op.PUT)) == 1


def test_body_too_large_is_413(small: TestClient, fake: FakeRaft) -> None:
    body = b'{"value": "' + b"\\u0041" * 40 + b'"}'  # 40 bytes of value in 253 of JSON
    response = small.post("/kv/k", content=body)
    assert response.status_code == 413
    assert "request body is" in error_of(response)
    assert "the limit is 200 bytes" in error_of(response)
    # Refused from Content-Length alone, before the body is read.
    declared = small.post("/kv/k", content=b"{}", headers={"Content-Length": "5000000"})
    assert declared.status_code == 413
    assert "5000000 bytes" in error_of(declared)
    assert fake.requests == []


def test_body_without_length_is_counted(small: TestClient, fake: FakeRaft) -> None:
    def chunks() -> Any:
        yield b"x" * 60
        yield b"x" * 60

    response = small.put("/kv/k", content=chunks())
    assert response.status_code == 413
    assert "exceeds the limit of 100 bytes" in error_of(response)
    assert fake.requests == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'["value"]', "must be a JSON object"),
        (b'"just a string"', "must be a JSON object"),
        (b"{}", 'missing the "value" field'),
        (b'{"value": 12}', '"value" must be a string, got a number'),
        (b'{"value": null}', '"value" must be a string, got null'),
        (b'{"value": ["a"]}', '"value" must be a string, got an array'),
        (b'{"value": "x", "prev_revision": "3"}', '"prev_revision" must be an integer'),
        (b'{"value": "x", "prev_revision": 1.5}', '"prev_revision" must be an integer'),
        (b'{"value": "x", "prev_revision": true}', '"prev_revision" must be an integer'),
        (b'{"value": "x", "prev_revision": -1}', '"prev_revision" must be between 0'),
        (b'{"value": "x", "prev_revison": 1}', "unknown field(s) in request body: prev_revison"),
    ],
)
def test_malformed_json_body_is_400(
    client: TestClient, fake: FakeRaft, body: bytes, fragment: str
) -> None:
    response = client.post("/kv/k", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert fragment in error_of(response)
    assert fake.requests == []


def test_bad_query_revision_is_400(client: TestClient, fake: FakeRaft) -> None:
    for response in (
        client.put("/kv/k?prev_revision=abc", content=b"x"),
        client.put("/kv/k?prev_revision=-2", content=b"x"),
        client.delete("/kv/k?prev_revision=1e3"),
        client.delete("/kv/k?prev_revision=99999999999999999999"),
    ):
        assert response.status_code == 400
        assert "prev_revision" in error_of(response)
    assert fake.requests == []


def test_unknown_route_and_wrong_method(client: TestClient) -> None:
    missing = client.get("/nothing/here")
    assert missing.status_code == 404
    assert error_of(missing) == "no such route: GET /nothing/here"
    wrong = client.patch("/kv/k", content=b"x")
    assert wrong.status_code == 405
    assert "PATCH is not allowed on /kv/k" in error_of(wrong)
    assert set(wrong.headers["allow"].replace(" ", "").split(",")) >= {
        "GET",
        "POST",
        "PUT",
        "DELETE",
    }
    assert client.post("/kv", json={}).status_code == 405
    assert client.delete("/health").status_code == 405


def test_head_on_a_key(client: TestClient) -> None:
    assert client.put("/kv/k", content=b"12345").status_code == 200
    head = client.head("/kv/k")
    assert head.status_code == 200
    assert head.headers["x-raftkv-version"] == "1"
    assert head.content == b""


# -- mapping of Raft replies --------------------------------------------------------------


def test_bad_request_reply_is_400_with_its_message(client: TestClient, fake: FakeRaft) -> None:
    fake.forced.append(Forced(ReplyStatus.BAD_REQUEST, b"key contains a forbidden byte"))
    response = put(client, "k", "v")
    assert response.status_code == 400
    assert error_of(response) == "key contains a forbidden byte"


def test_internal_reply_is_500(client: TestClient, fake: FakeRaft) -> None:
    fake.forced.append(Forced(ReplyStatus.INTERNAL, b"disk on fire"))
    response = client.get("/kv/k")
    assert response.status_code == 500
    assert "disk on fire" in error_of(response)
    fake.forced.append(Forced(99))  # type: ignore[arg-type]
    unknown = client.get("/kv/k")
    assert unknown.status_code == 500
    assert "unexpected reply status 99" in error_of(unknown)


def test_not_found_reply_to_a_write_is_404(client: TestClient, fake: FakeRaft) -> None:
    fake.forced.append(Forced(ReplyStatus.NOT_FOUND, b"no such key"))
    response = put(client, "k", "v")
    assert response.status_code == 404
    assert error_of(response) == "no such key"


def test_timeout_reply_to_a_write_is_503(client: TestClient, fake: FakeRaft) -> None:
    fake.forced.append(Forced(ReplyStatus.TIMEOUT))
    response = put(client, "k", "v")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert error_of(response) == "timed out; the write may or may not have been applied"


def test_unavailable_is_503(client: TestClient, fake: FakeRaft) -> None:
    fake.unavailable = True
    write = put(client, "k", "v")
    assert write.status_code == 503
    assert write.headers["retry-after"] == "1"
    # The Raft process knows the write was not proposed, and says so.
    assert error_of(write) == "no leader in time; the write was not applied"
    read = client.get("/kv/k")
    assert read.status_code == 503
    assert read.headers["retry-after"] == "1"
    assert "not served" in error_of(read)
    fake.forced.append(Forced(ReplyStatus.UNAVAILABLE))
    fake.unavailable = False
    vague = client.delete("/kv?prefix=")
    assert vague.status_code == 503
    assert error_of(vague) == "no leader; the write may or may not have been applied"


# -- IPC failures -------------------------------------------------------------------------


def test_silent_raft_process_times_out_with_503(
    make_client: Callable[..., TestClient], fake: FakeRaft
) -> None:
    client = make_client(request_timeout_s=0.2, ipc_grace_s=0.1)
    fake.silent = True
    started = time.monotonic()
    response = put(client, "k", "v")
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "the write may or may not have been applied" in error_of(response)
    assert 0.25 <= elapsed < 2.0
    read = client.get("/kv/k")
    assert read.status_code == 503
    assert "no reply from the Raft process" in error_of(read)
    # The worker gave up on that seq: the next write no longer waits on it.
    fake.silent = False
    session = client.app.state.session  # type: ignore[attr-defined]
    assert put(client, "k2", "v").status_code == 200
    unanswered, next_write, resent = fake.requests_of(Op.PUT)
    assert (unanswered.seq, unanswered.first_incomplete) == (1, 1)
    assert (next_write.seq, next_write.first_incomplete) == (2, 2)
    # The store never applied seq 1, so it knows no session that had replies already:
    # it refuses seq 2 as stale, and the worker sends it once more in a new session.
    assert resent.client_id == session.client_id != next_write.client_id
    assert (resent.seq, resent.first_incomplete) == (1, 1)
    assert fake.data[b"k2"].value == b"v"


def test_ipc_loss_is_503_and_the_worker_recovers(client: TestClient, fake: FakeRaft) -> None:
    assert put(client, "before", "v").status_code == 200
    fake.stop()
    down = put(client, "during", "v")
    assert down.status_code == 503
    assert down.headers["retry-after"] == "1"
    assert "the write was not applied" in error_of(down)
    assert client.get("/kv/before").status_code == 503
    health = client.get("/health")
    assert health.status_code == 503
    assert health.json()["status"] == "raft process unreachable"

    fake.start()
    deadline = time.monotonic() + 5
    while True:
        response = put(client, "after", "v")
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        assert response.status_code == 503  # still inside the reconnect backoff
        time.sleep(0.05)
    assert response.status_code == 200
    assert client.get("/kv/after").content == b"v"
    assert b"during" not in fake.data
    assert fake.connections == 2


def test_connection_dropped_mid_request(client: TestClient, fake: FakeRaft) -> None:
    assert put(client, "a", "v").status_code == 200
    fake.drop_next = True
    dropped = put(client, "b", "v")
    assert dropped.status_code == 503
    assert "connection to the Raft process lost" in error_of(dropped)
    assert "may or may not have been applied" in error_of(dropped)
    # The next request reconnects at once.
    assert put(client, "c", "v").status_code == 200
    assert fake.connections == 2


# -- sessions -----------------------------------------------------------------------------


def test_stale_session_is_retried_under_a_new_client_id(client: TestClient, fake: FakeRaft) -> None:
    session = client.app.state.session  # type: ignore[attr-defined]
    assert put(client, "first", "v").status_code == 200
    old_id = session.client_id
    fake.evict_session(old_id)
    response = put(client, "second", "v")
    assert response.status_code == 200
    assert fake.data[b"second"].value == b"v"
    refused, retried = fake.requests_of(Op.PUT)[-2:]
    assert (refused.client_id, refused.seq) == (old_id, 2)
    assert retried.client_id == session.client_id != old_id
    assert (retried.seq, retried.first_incomplete) == (1, 1)
    assert session.renewals == 1
    # Later writes go on in the new session.
    assert put(client, "third", "v").status_code == 200
    last = fake.requests_of(Op.PUT)[-1]
    assert (last.client_id, last.seq) == (session.client_id, 2)


def test_client_session_headers_pass_through(client: TestClient, fake: FakeRaft) -> None:
    # The client's session is opened by its first writes (the store refuses a
    # first_incomplete above 1 from a client it has no session for); then seqs 5 to 7
    # are in flight, and the worker passes the client's tag on as it is.
    client_id = {"X-Raftkv-Client-Id": "18446744073709551615"}
    for seq in range(1, 5):
        opened = client.post(
            f"/kv/opening-{seq}",
            json={"value": "v"},
            headers={**client_id, "X-Raftkv-Seq": str(seq), "X-Raftkv-First-Incomplete": "1"},
        )
        assert opened.status_code == 200, opened.text
    headers = {**client_id, "X-Raftkv-Seq": "7", "X-Raftkv-First-Incomplete": "5"}
    first = client.post("/kv/k", json={"value": "v"}, headers=headers)
    assert first.status_code == 200, first.text
    sent = fake.requests_of(Op.PUT)[-1]
    assert (sent.client_id, sent.seq, sent.first_incomplete) == (2**64 - 1, 7, 5)
    # A retry with the same tag is answered with the first outcome, not applied again.
    retry = client.post("/kv/k", json={"value": "v"}, headers=headers)
    assert retry.status_code == 200
    assert retry.json() == first.json()
    assert fake.data[b"k"].version == 1
    # The worker's own session was not touched.
    assert client.app.state.session.outstanding == 0  # type: ignore[attr-defined]
    deleted = client.delete(
        "/kv/k",
        headers={"X-Raftkv-Client-Id": "9", "X-Raftkv-Seq": "1", "X-Raftkv-First-Incomplete": "1"},
    )
    assert deleted.status_code == 200
    assert fake.requests_of(Op.DELETE)[-1].client_id == 9


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [
        ({"X-Raftkv-Client-Id": "1"}, "missing: x-raftkv-seq, x-raftkv-first-incomplete"),
        ({"X-Raftkv-Client-Id": "1", "X-Raftkv-Seq": "2"}, "missing: x-raftkv-first-incomplete"),
        (
            {"X-Raftkv-Client-Id": "x1", "X-Raftkv-Seq": "2", "X-Raftkv-First-Incomplete": "1"},
            "x-raftkv-client-id must be a decimal",
        ),
        (
            {"X-Raftkv-Client-Id": "1", "X-Raftkv-Seq": "-2", "X-Raftkv-First-Incomplete": "1"},
            "x-raftkv-seq must be a decimal",
        ),
        (
            {"X-Raftkv-Client-Id": "0", "X-Raftkv-Seq": "2", "X-Raftkv-First-Incomplete": "1"},
            "must not be 0",
        ),
        (
            {"X-Raftkv-Client-Id": "1", "X-Raftkv-Seq": "2", "X-Raftkv-First-Incomplete": "3"},
            "must not exceed",
        ),
        (
            {
                "X-Raftkv-Client-Id": str(2**64),
                "X-Raftkv-Seq": "2",
                "X-Raftkv-First-Incomplete": "1",
            },
            "does not fit in 64 bits",
        ),
    ],
)
def test_bad_session_headers_are_400(
    client: TestClient, fake: FakeRaft, headers: dict[str, str], fragment: str
) -> None:
    response = client.put("/kv/k", content=b"v", headers=headers)
    assert response.status_code == 400
    assert fragment in error_of(response)
    assert fake.requests == []


def test_stale_session_with_client_headers_goes_back_to_the_client(
    client: TestClient, fake: FakeRaft
) -> None:
    # The store has no session for client 42, which says it already had replies
    # (first_incomplete 2): its session was lost, and the store will not guess.
    headers = {"X-Raftkv-Client-Id": "42", "X-Raftkv-Seq": "3", "X-Raftkv-First-Incomplete": "2"}
    response = client.put("/kv/k", content=b"v", headers=headers)
    assert response.status_code == 410
    assert response.json()["stale_session"] is True
    assert "start a new session" in error_of(response)
    assert len(fake.requests_of(Op.PUT)) == 1
    assert fake.data == {}


# -- health and cluster -------------------------------------------------------------------


def test_health(client: TestClient, fake: FakeRaft) -> None:
    ok = client.get("/health")
    assert ok.status_code == 200
    assert ok.json() == {"status": "ok", "node_id": 1, "leader": 1}
    fake.leader = None
    no_leader = client.get("/health")
    assert no_leader.status_code == 503
    assert no_leader.json() == {"status": "no leader", "node_id": 1, "leader": None}
    fake.leader = 2
    assert client.get("/health").json()["leader"] == 2


def test_cluster_status_and_nodes_pass_through(client: TestClient, fake: FakeRaft) -> None:
    put(client, "k", "v")
    status = client.get("/cluster/status")
    assert status.status_code == 200
    assert status.headers["content-type"] == "application/json"
    assert status.json() == {
        "node_id": 1,
        "leader": 1,
        "term": 3,
        "commit_index": 1,
        "role": "leader",
    }
    nodes = client.get("/cluster/nodes")
    assert nodes.status_code == 200
    assert nodes.json() == {"nodes": {"1": {"id": 1, "http_addr": "127.0.0.1:1"}}}
    assert [r.op for r in fake.requests[-2:]] == [Op.STATUS, Op.NODES]


# -- pipelining ---------------------------------------------------------------------------


def test_concurrent_requests_share_one_pipelined_connection(fake: FakeRaft) -> None:
    """Twenty writes in flight at once over one connection; the fake answers only once it
    holds all twenty, and then in reverse order. A worker that waited for each reply
    before sending the next request would time out here."""
    count = 20
    fake.hold = count
    app = create_app(make_settings(fake, request_timeout_s=2.0))

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as http:
            return await asyncio.gather(
                *(http.put(f"/kv/p/{i}", content=f"value {i}".encode()) for i in range(count))
            )

    responses = asyncio.run(run())
    assert [r.status_code for r in responses] == [200] * count
    puts = fake.requests_of(Op.PUT)
    for i, response in enumerate(responses):
        # Each HTTP request got its own reply, whatever order the replies came in.
        assert response.json()["key"] == f"p/{i}"
        assert fake.data[f"p/{i}".encode()].value == f"value {i}".encode()
        assert response.json()["revision"] == fake.data[f"p/{i}".encode()].mod_revision
    assert fake.connections == 1
    # Requests issued in the same loop turn went out in few writes, not one per request.
    assert max(fake.frames_per_read) > 1
    assert len(fake.frames_per_read) < count
    # While they were all in flight, first_incomplete stayed at the lowest open seq.
    assert sorted(r.seq for r in puts) == list(range(1, count + 1))
    assert all(r.first_incomplete == 1 for r in puts)
