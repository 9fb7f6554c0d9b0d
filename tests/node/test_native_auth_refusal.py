"""The native TCP port cannot authenticate, so while auth is enabled it serves nothing;
and the access-control tables never leave through it."""

from __future__ import annotations

import pytest

from raftkv.node.native_check import AUTH_REFUSAL, NativeRequestCheck
from raftkv.wire.protocol import Op
from raftkv_ext.codec import ClientRequest


@pytest.mark.parametrize("op", [Op.GET, Op.PUT, Op.LIST, Op.STATUS, Op.NODES])
def test_everything_refused_while_auth_is_enabled(op: Op) -> None:
    enabled = [True]
    check = NativeRequestCheck(64, 64, lambda: enabled[0])
    request = ClientRequest(1, op, key=b"k")
    assert check(request) == AUTH_REFUSAL
    enabled[0] = False
    assert check(request) is None


@pytest.mark.parametrize("op", [Op.AUTH_TABLES, Op.AUTH_CHANGE])
def test_auth_operations_are_not_served_on_the_native_port(op: Op) -> None:
    check = NativeRequestCheck(64, 64, lambda: False)
    refusal = check(ClientRequest(1, op, value=b"{}"))
    assert refusal is not None
    assert "HTTP only" in refusal
