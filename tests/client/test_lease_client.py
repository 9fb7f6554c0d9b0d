"""The lease calls of ``Client`` and ``AsyncClient`` against one real node
(``LocalCluster``): grant, keep alive, revoke, look up and list; keys written with a
lease or a TTL, and the ``lease`` and ``ttl`` a read shows; a lease that is not kept
alive expires with its keys; the errors, from the server (NotFoundError, ConflictError)
and from the client's own checks (ValueError, TypeError), which send nothing."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from raftkv.client import AsyncClient, Client, ConflictError, LeaseGrant, NotFoundError
from raftkv.testing.cluster import LocalCluster, free_ports, running_cluster, wait_until


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("lease-client"), 1) as running:
        yield running


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster.url(1)) as opened:
        yield opened


def gone(client: Client, key: str) -> bool:
    try:
        client.get(key)
    except NotFoundError:
        return True
    return False


def test_grant_attach_look_up_keep_alive_and_revoke(client: Client) -> None:
    grant = client.lease_grant(30)
    assert isinstance(grant, LeaseGrant)
    assert grant.id >= 1 and grant.ttl == 30.0

    written = client.put("lease/a", "1", lease=grant.id)
    assert (written.lease, written.ttl) == (grant.id, 30.0)
    client.put("lease/b", b"\x00\xff", lease=grant.id)
    plain = client.put("lease/plain", "no lease")
    assert (plain.lease, plain.ttl) == (0, None)

    kv = client.get("lease/a")
    assert kv.lease == grant.id
    assert kv.ttl is not None and 25 < kv.ttl <= 30
    unleased = client.get("lease/plain")
    assert (unleased.lease, unleased.ttl) == (0, None)

    info = client.lease_info(grant.id)
    assert (info.id, info.ttl, info.more) == (grant.id, 30.0, False)
    assert info.remaining is not None and 25 < info.remaining <= 30
    assert sorted(info.keys) == ["lease/a", "lease/b"]
    assert client.lease_info(grant.id, keys=False).keys == ()
    stale = client.lease_info(grant.id, consistency="stale")
    assert stale.id == grant.id

    listed = {lease.id: lease for lease in client.leases()}
    assert listed[grant.id].ttl == 30.0 and listed[grant.id].keys == ()

    renewed = client.lease_keep_alive(grant.id)
    assert renewed == LeaseGrant(grant.id, 30.0)

    assert client.lease_revoke(grant.id) == 2  # the keys deleted with it
    assert gone(client, "lease/a") and gone(client, "lease/b")
    assert client.get_value("lease/plain") == b"no lease"
    assert grant.id not in {lease.id for lease in client.leases()}

    # A lease that is gone: every call on it says so.
    with pytest.raises(NotFoundError):
        client.lease_revoke(grant.id)
    with pytest.raises(NotFoundError):
        client.lease_keep_alive(grant.id)
    with pytest.raises(NotFoundError):
        client.lease_info(grant.id)
    with pytest.raises(NotFoundError):
        client.put("lease/late", "x", lease=grant.id)
    assert gone(client, "lease/late")


def test_a_lease_id_of_ones_own(client: Client) -> None:
    wanted = 2**62 + 12345
    grant = client.lease_grant(5, lease_id=wanted)
    try:
        assert grant == LeaseGrant(wanted, 5.0)
        with pytest.raises(ConflictError):
            client.lease_grant(5, lease_id=wanted)
    finally:
        client.lease_revoke(wanted)


def test_a_lease_not_kept_alive_expires_with_its_keys(client: Client) -> None:
    grant = client.lease_grant(1)
    client.put("expiry/k", "v", lease=grant.id)
    # Kept alive, it outlives its TTL...
    started = time.monotonic()
    while time.monotonic() - started < 1.6:
        assert client.lease_keep_alive(grant.id).ttl == 1.0
        time.sleep(0.3)
    assert client.get_value("expiry/k") == b"v"
    # ... and once left alone it ends, no sooner than a TTL after the last keep-alive.
    sent = time.monotonic()
    client.lease_keep_alive(grant.id)
    wait_until(lambda: gone(client, "expiry/k"), 5.0, what="the key of the expired lease")
    assert time.monotonic() - sent >= 1.0
    with pytest.raises(NotFoundError):
        client.lease_info(grant.id)


def test_a_key_with_a_ttl_gets_a_lease_of_its_own(client: Client) -> None:
    sent = time.monotonic()
    written = client.put("ttl/k", "v", ttl=1.5)
    assert written.lease >= 1 and written.ttl == 1.5
    kv = client.get("ttl/k")
    assert kv.lease == written.lease
    assert kv.ttl is not None and 0 < kv.ttl <= 1.5
    assert client.lease_info(written.lease).keys == ("ttl/k",)
    wait_until(lambda: gone(client, "ttl/k"), 5.0, what="the key written with a TTL")
    assert time.monotonic() - sent >= 1.5
    with pytest.raises(NotFoundError):
        client.lease_info(written.lease)

    # Written again without one, the key keeps no TTL.
    first = client.put("ttl/rewritten", "v", ttl=1)
    again = client.put("ttl/rewritten", "w")
    assert (again.lease, again.ttl) == (0, None)
    time.sleep(1.5)
    kv = client.get("ttl/rewritten")
    assert (kv.value, kv.lease, kv.ttl) == (b"w", 0, None)
    with pytest.raises(NotFoundError):
        client.lease_info(first.lease)


BAD_CALLS: list[tuple[str, Callable[[Client], Any], type[Exception]]] = [
    ("ttl below 1 s", lambda c: c.lease_grant(0.5), ValueError),
    ("negative ttl", lambda c: c.lease_grant(-1), ValueError),
    ("ttl as text", lambda c: c.lease_grant("10"), TypeError),
    ("ttl as bool", lambda c: c.lease_grant(True), TypeError),
    ("nan ttl", lambda c: c.lease_grant(math.nan), TypeError),
    ("infinite ttl", lambda c: c.lease_grant(math.inf), TypeError),
    ("lease id 0", lambda c: c.lease_grant(5, lease_id=0), ValueError),
    ("lease id 2**63", lambda c: c.lease_grant(5, lease_id=2**63), ValueError),
    ("float lease id", lambda c: c.lease_grant(5, lease_id=1.0), TypeError),
    ("keep-alive of -1", lambda c: c.lease_keep_alive(-1), ValueError),
    ("revoke of True", lambda c: c.lease_revoke(True), TypeError),
    ("info of a str", lambda c: c.lease_info("7"), TypeError),
    ("put with ttl and lease", lambda c: c.put("k", "v", ttl=5, lease=1), ValueError),
    ("put with a short ttl", lambda c: c.put("k", "v", ttl=0.2), ValueError),
    ("put with lease 0", lambda c: c.put("k", "v", lease=0), ValueError),
]


@pytest.mark.parametrize(
    ("call", "error"), [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
)
def test_bad_arguments_are_refused_before_sending(
    call: Callable[[Client], Any], error: type[Exception]
) -> None:
    # Nothing listens there: a call that sent anything would fail otherwise.
    (port,) = free_ports(1)
    with Client(f"http://127.0.0.1:{port}", retry_for=0) as offline, pytest.raises(error):
        call(offline)


def test_the_async_client(cluster: LocalCluster) -> None:
    async def scenario() -> None:
        async with AsyncClient(cluster.url(1)) as client:
            grant = await client.lease_grant(20)
            assert grant.ttl == 20.0
            written = await client.put("async/a", "1", lease=grant.id)
            assert (written.lease, written.ttl) == (grant.id, 20.0)
            kv = await client.get("async/a")
            assert kv.lease == grant.id and kv.ttl is not None and 0 < kv.ttl <= 20

            info = await client.lease_info(grant.id)
            assert info.keys == ("async/a",) and info.ttl == 20.0
            assert (await client.lease_info(grant.id, keys=False)).keys == ()
            assert grant.id in {lease.id for lease in await client.leases()}
            assert await client.lease_keep_alive(grant.id) == LeaseGrant(grant.id, 20.0)

            ttl_write = await client.put("async/ttl", "t", ttl=1)
            assert ttl_write.lease >= 1 and ttl_write.ttl == 1.0

            assert await client.lease_revoke(grant.id) == 1
            with pytest.raises(NotFoundError):
                await client.get("async/a")
            with pytest.raises(NotFoundError):
                await client.lease_keep_alive(grant.id)
            with pytest.raises(NotFoundError):
                await client.lease_revoke(grant.id)
            with pytest.raises(NotFoundError):
                await client.put("async/late", "x", lease=grant.id)
            with pytest.raises(ValueError):
                await client.lease_grant(0)
            with pytest.raises(TypeError):
                await client.lease_keep_alive("1")  # type: ignore[arg-type]

            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    await client.get("async/ttl")
                except NotFoundError:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the key written with a TTL did not expire")

    asyncio.run(scenario())
