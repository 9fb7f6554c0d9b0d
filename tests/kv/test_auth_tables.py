"""The access-control tables in the state machine: AuthChange commands, their rules,
determinism across replicas, and snapshots (the new section, and version 1 snapshots
written before it existed)."""

from __future__ import annotations

import struct

import orjson
import pytest

from raftkv.kv import (
    AuthChange,
    KVStateMachine,
    Put,
    SnapshotFormatError,
    Status,
    decode_command,
    encode_command,
)
from raftkv.kv.auth_tables import AuthTables
from raftkv.kv.snapshot_format import HEADER, MAGIC, seal

HASH = "scrypt$16384$8$1$c2FsdA==$aGFzaA=="
DIGEST = "ab" * 32


def change(**doc: object) -> bytes:
    return encode_command(AuthChange(orjson.dumps(doc)))


def admin_setup() -> list[bytes]:
    """root with an admin role, reader with read on app/."""
    return [
        change(op="user_add", name="root", password_hash=HASH),
        change(op="role_add", name="admins"),
        change(op="role_grant", name="admins", access="admin", prefix=""),
        change(op="user_grant", name="root", role="admins"),
        change(op="user_add", name="reader", password_hash=HASH),
        change(op="role_add", name="app-read"),
        change(op="role_grant", name="app-read", access="read", prefix="app/"),
        change(op="user_grant", name="reader", role="app-read"),
        change(op="token_add", name="reader", id="0123456789abcdef", digest=DIGEST),
    ]


def fed(payloads: list[bytes]) -> tuple[KVStateMachine, list[Status]]:
    sm = KVStateMachine()
    statuses = [sm.apply(i, p).status for i, p in enumerate(payloads, 1)]
    return sm, statuses


def test_auth_change_encoding_round_trips() -> None:
    cmd = AuthChange(b'{"op":"enable"}', client_id=7, seq=3, first_incomplete=2)
    payload = encode_command(cmd)
    assert decode_command(payload) == cmd
    assert encode_command(decode_command(payload)) == payload


def test_setup_applies_and_tables_say_who_is_admin() -> None:
    sm, statuses = fed(admin_setup())
    assert statuses == [Status.OK] * len(statuses)
    auth = sm.auth
    assert auth.admin_users() == ["root"]
    assert auth.roles["app-read"] == {("read", "app/")}
    assert auth.users["reader"].roles == {"app-read"}
    assert auth.tokens == {DIGEST: ("0123456789abcdef", "reader")}
    assert auth.revision == len(statuses)
    assert not auth.enabled


def test_enable_refused_without_an_admin_user() -> None:
    sm = KVStateMachine()
    result = sm.apply(1, change(op="enable"))
    assert result.status == Status.BAD_COMMAND
    assert "admin" in result.error
    assert not sm.auth.enabled
    assert sm.auth.revision == 0
    sm.apply(2, change(op="user_add", name="root", password_hash=HASH))
    assert sm.apply(3, change(op="enable")).status == Status.BAD_COMMAND


def test_enable_then_the_last_admin_cannot_go() -> None:
    sm, _ = fed(admin_setup())
    index = len(admin_setup())
    assert sm.apply(index + 1, change(op="enable")).status == Status.OK
    assert sm.auth.enabled
    before = sm.auth.to_json()
    for i, doc in enumerate(
        [
            {"op": "user_delete", "name": "root"},
            {"op": "user_revoke", "name": "root", "role": "admins"},
            {"op": "role_delete", "name": "admins"},
            {"op": "role_revoke", "name": "admins", "access": "admin", "prefix": ""},
        ],
        index + 2,
    ):
        result = sm.apply(i, change(**doc))
        assert result.status == Status.BAD_COMMAND, doc
        assert "admin" in result.error
        assert sm.auth.to_json() == before
    # Once auth is off again, the admin may go.
    assert sm.apply(index + 10, change(op="disable")).status == Status.OK
    assert sm.apply(index + 11, change(op="user_delete", name="root")).status == Status.OK
    assert sm.auth.admin_users() == []


def test_missing_names_are_not_found_and_malformed_changes_bad() -> None:
    sm, _ = fed(admin_setup())
    cases = [
        ({"op": "user_delete", "name": "nobody"}, Status.NOT_FOUND, "nobody"),
        ({"op": "user_grant", "name": "reader", "role": "nope"}, Status.NOT_FOUND, "nope"),
        ({"op": "token_revoke", "id": "ffffffff"}, Status.NOT_FOUND, "ffffffff"),
        ({"op": "user_add", "name": "root", "password_hash": ""}, Status.BAD_COMMAND, "exists"),
        ({"op": "user_add", "name": "bad name", "password_hash": ""}, Status.BAD_COMMAND, "name"),
        ({"op": "user_add", "name": "x", "password_hash": "md5$x"}, Status.BAD_COMMAND, "scrypt"),
        ({"op": "role_grant", "name": "admins", "access": "write"}, Status.BAD_COMMAND, "access"),
        (
            {"op": "role_grant", "name": "admins", "access": "admin", "prefix": "a"},
            Status.BAD_COMMAND,
            "prefix",
        ),
        ({"op": "launch"}, Status.BAD_COMMAND, "unknown"),
    ]
    before = sm.auth.to_json()
    for i, (doc, status, word) in enumerate(cases, 100):
        result = sm.apply(i, change(**doc))
        assert (result.status, word in result.error) == (status, True), doc
    assert sm.apply(200, encode_command(AuthChange(b"[1, 2"))).status == Status.BAD_COMMAND
    assert sm.auth.to_json() == before


def test_deleting_a_user_removes_its_tokens_and_role_delete_ungrants() -> None:
    sm, _ = fed(admin_setup())
    assert sm.apply(50, change(op="role_delete", name="app-read")).status == Status.OK
    assert sm.auth.users["reader"].roles == set()
    assert sm.apply(51, change(op="user_delete", name="reader")).status == Status.OK
    assert sm.auth.tokens == {}


def test_replicas_agree_and_a_retried_change_applies_once() -> None:
    tagged = [
        encode_command(
            AuthChange(
                orjson.dumps({"op": "role_add", "name": f"r{i}"}),
                client_id=9,
                seq=i,
                first_incomplete=i,
            )
        )
        for i in range(1, 4)
    ]
    payloads = admin_setup() + tagged + [tagged[-1]]
    a, statuses = fed(payloads)
    b, _ = fed(payloads)
    assert a.state_hash() == b.state_hash()
    assert a.snapshot() == b.snapshot()
    # The retried role_add was answered from the client table, not refused as a duplicate.
    assert statuses[-1] == Status.OK


def test_snapshot_round_trip_keeps_the_tables() -> None:
    sm, _ = fed([*admin_setup(), change(op="enable"), encode_command(Put(b"app/x", b"1"))])
    restored = KVStateMachine()
    restored.restore(sm.snapshot())
    assert restored.auth.to_json() == sm.auth.to_json()
    assert restored.auth.enabled
    assert restored.snapshot() == sm.snapshot()
    assert restored.get(b"app/x") is not None


def test_version_1_snapshot_still_loads_with_auth_off() -> None:
    record = struct.pack("<II", 1, 1) + b"k" + struct.pack("<QQQ", 1, 1, 1) + b"v"
    body = HEADER.pack(MAGIC, 1, 4, 1) + record + struct.pack("<Q", 0)
    sm, _ = fed(admin_setup())
    sm.restore(seal([body]))
    assert sm.applied_index == 4
    assert sm.get(b"k") is not None
    assert sm.auth.to_json() == AuthTables().to_json()
    assert not sm.auth.enabled


def test_snapshot_with_bad_auth_section_rejected() -> None:
    sm, _ = fed(admin_setup())
    snap = sm.snapshot()
    tables = sm.auth.to_json()
    body = snap[:-32]
    assert body.endswith(tables)
    not_canonical = tables.replace(b'"enabled":false', b'"enabled": false')
    edited = body[: -len(tables) - 4] + struct.pack("<I", len(not_canonical)) + not_canonical
    with pytest.raises(SnapshotFormatError, match="canonical"):
        KVStateMachine().restore(seal([edited]))
    with pytest.raises(SnapshotFormatError, match="truncated"):
        KVStateMachine().restore(seal([body[:-3]]))


def test_tables_json_round_trip_is_canonical() -> None:
    sm, _ = fed(admin_setup())
    data = sm.auth.to_json()
    assert AuthTables.from_json(data).to_json() == data
    with pytest.raises(ValueError, match="malformed"):
        AuthTables.from_json(b'{"enabled": true}')
