"""The checks on requests from native clients, which no HTTP worker has validated."""

from __future__ import annotations

import pytest

from raftkv.node.native_check import NATIVE_OPS, NativeRequestCheck
from raftkv.wire.protocol import Flag, Op
from raftkv_ext.codec import ClientRequest

CHECK = NativeRequestCheck(max_key_bytes=8, max_value_bytes=16)


@pytest.mark.parametrize(
    "request_",
    [
        ClientRequest(1, Op.GET, key=b"k"),
        ClientRequest(1, Op.PUT, key=b"k" * 8, value=b"v" * 16),
        ClientRequest(1, Op.DELETE, key=b"k"),
        ClientRequest(1, Op.LIST, key=b""),
        ClientRequest(1, Op.LIST, key=b"p" * 8, limit=5),
        ClientRequest(1, Op.DELETE_PREFIX, key=b""),
        ClientRequest(1, Op.STATUS),
        ClientRequest(1, Op.NODES),
    ],
    ids=lambda r: Op(r.op).name,
)
def test_key_operations_and_status_are_served(request_: ClientRequest) -> None:
    assert CHECK(request_) is None


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (ClientRequest(1, Op.PUT, key=b"k" * 9), "key is 9 bytes; the limit is 8 bytes"),
        (ClientRequest(1, Op.LIST, key=b"p" * 9), "prefix is 9 bytes; the limit is 8 bytes"),
        (ClientRequest(1, Op.PUT, key=b"k", value=b"v" * 17), "value is 17 bytes"),
        (ClientRequest(1, Op.GET), "key must not be empty"),
        (ClientRequest(1, Op.DELETE), "key must not be empty"),
        (ClientRequest(1, Op.SNAPSHOT), "operation SNAPSHOT is served over HTTP only"),
        (ClientRequest(1, Op.BACKUP), "operation BACKUP is served over HTTP only"),
        (ClientRequest(1, Op.METRICS), "operation METRICS is served over HTTP only"),
        (ClientRequest(1, Op.MEMBER_ADD, value=b"{}"), "MEMBER_ADD is served over HTTP only"),
        (ClientRequest(1, 200), "unknown operation 200"),
    ],
)
def test_what_the_worker_would_refuse_is_refused(request_: ClientRequest, reason: str) -> None:
    refusal = CHECK(request_)
    assert refusal is not None and reason in refusal


def test_every_cluster_operation_and_the_metrics_stay_on_http() -> None:
    http_only = {
        Op.MEMBER_ADD,
        Op.MEMBER_REMOVE,
        Op.TRANSFER_LEADER,
        Op.SNAPSHOT,
        Op.BACKUP,
        Op.METRICS,  # scraped through /metrics, which adds the workers' own
        Op.AUTH_CHANGE,  # managed through the /auth routes, which check who asks
        Op.AUTH_TABLES,  # holds password hashes: for the workers only
        Op.TXN,  # its limits and key-by-key authorization are the worker's, for now
        # Leases too: the worker checks TTLs and ids and authorizes them.
        Op.LEASE_GRANT,
        Op.LEASE_REVOKE,
        Op.LEASE_KEEP_ALIVE,
        Op.LEASE_KEEP_ALIVES,
        Op.LEASE_INFO,
        Op.LEASE_LIST,
    }
    assert set(Op) - http_only == NATIVE_OPS


def test_leased_puts_and_reads_of_a_key_lease_stay_on_http() -> None:
    check = NativeRequestCheck(max_key_bytes=16, max_value_bytes=64)
    for op, flag in ((Op.PUT, Flag.LEASED), (Op.GET, Flag.WITH_LEASE)):
        refusal = check(ClientRequest(1, op, b"k", b"v" * 16, flags=flag))
        assert refusal is not None and "HTTP only" in refusal
