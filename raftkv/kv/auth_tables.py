"""The replicated access-control tables: users, roles, tokens and the auth switch.

They live in the state machine so every node agrees on who may do what. Changes arrive
as :class:`~raftkv.kv.commands.AuthChange` commands whose payload is a small JSON
document; everything expensive (scrypt of a password, randomness of a token) was done by
the worker that received the request, so applying a change is deterministic and cheap:
the tables only store the password hash and the token's SHA-256 they are given.

A change either applies whole or is refused with a message and changes nothing. The
rules that keep a cluster administrable are enforced here, where every replica sees the
same order of changes: auth cannot be enabled unless some user holds the admin
permission, and while it is enabled no change may leave the cluster without one.

The tables serialize to canonical JSON (sorted keys, sorted lists), which is both their
snapshot section and what the Raft process hands the workers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

__all__ = [
    "ACCESS_ADMIN",
    "ACCESS_LEVELS",
    "ACCESS_READ",
    "ACCESS_READWRITE",
    "AuthChangeRefused",
    "AuthTables",
    "check_name",
]

ACCESS_READ: Final = "read"
ACCESS_READWRITE: Final = "readwrite"
ACCESS_ADMIN: Final = "admin"
ACCESS_LEVELS: Final = (ACCESS_READ, ACCESS_READWRITE, ACCESS_ADMIN)

MAX_PREFIX_BYTES: Final = 4096
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,128}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_TOKEN_ID = re.compile(r"[0-9a-f]{8,32}")
_PASSWORD_HASH_PREFIX: Final = "scrypt$"
_MAX_HASH_CHARS: Final = 512


class AuthChangeRefused(ValueError):
    """A change that is malformed or breaks a rule; ``missing`` says the named user,
    role or token does not exist (answered as not found rather than bad request)."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


def check_name(kind: str, name: object) -> str:
    """A user or role name: 1 to 128 letters, digits or ``_ . @ -``."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise AuthChangeRefused(
            f"{kind} name must be 1 to 128 characters of letters, digits, '_', '.', '@' "
            f"or '-', got {name!r}"
        )
    return name


def _text(doc: dict[str, Any], name: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str):
        raise AuthChangeRefused(f'"{name}" must be a string')
    return value


def _password_hash(doc: dict[str, Any]) -> str:
    value = _text(doc, "password_hash")
    if value and (not value.startswith(_PASSWORD_HASH_PREFIX) or len(value) > _MAX_HASH_CHARS):
        raise AuthChangeRefused('"password_hash" is not an scrypt hash')
    return value


def _permission(doc: dict[str, Any]) -> tuple[str, str]:
    access = doc.get("access")
    if access not in ACCESS_LEVELS:
        raise AuthChangeRefused(f'"access" must be one of {", ".join(ACCESS_LEVELS)}')
    prefix = doc.get("prefix", "")
    if not isinstance(prefix, str):
        raise AuthChangeRefused('"prefix" must be a string')
    if access == ACCESS_ADMIN and prefix:
        raise AuthChangeRefused("the admin permission takes no prefix")
    if len(prefix.encode("utf-8", "surrogatepass")) > MAX_PREFIX_BYTES:
        raise AuthChangeRefused(f"prefix longer than {MAX_PREFIX_BYTES} bytes")
    return str(access), prefix


@dataclass(slots=True)
class _User:
    password_hash: str = ""
    roles: set[str] = field(default_factory=set)


@dataclass(slots=True)
class AuthTables:
    """Users (password hash, roles), roles (permissions), tokens (by SHA-256 digest)."""

    enabled: bool = False
    revision: int = 0
    """Index of the entry of the last change that applied (0: never changed)."""
    users: dict[str, _User] = field(default_factory=dict)
    roles: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    tokens: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Token digest (hex SHA-256 of the secret) -> (token id, user name)."""

    # -- applying --------------------------------------------------------------------

    def apply(self, index: int, payload: bytes) -> None:
        """Apply one change at log ``index``; raise AuthChangeRefused (nothing changed)."""
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise AuthChangeRefused("auth change is not valid JSON") from None
        if not isinstance(doc, dict):
            raise AuthChangeRefused("auth change must be a JSON object")
        action = doc.get("op")
        handler = _HANDLERS.get(action) if isinstance(action, str) else None
        if handler is None:
            raise AuthChangeRefused(f"unknown auth change {action!r}")
        handler(self, doc)
        self.revision = index

    def _enable(self, doc: dict[str, Any]) -> None:
        if not self.admin_users():
            raise AuthChangeRefused(
                "auth cannot be enabled: no user has a role with the admin permission "
                "(create one first, as etcd requires a root user)"
            )
        self.enabled = True

    def _disable(self, doc: dict[str, Any]) -> None:
        self.enabled = False

    def _user(self, doc: dict[str, Any]) -> tuple[str, _User]:
        name = check_name("user", doc.get("name"))
        user = self.users.get(name)
        if user is None:
            raise AuthChangeRefused(f"no user named {name!r}", missing=True)
        return name, user

    def _role(self, name: object) -> str:
        role = check_name("role", name)
        if role not in self.roles:
            raise AuthChangeRefused(f"no role named {role!r}", missing=True)
        return role

    def _user_add(self, doc: dict[str, Any]) -> None:
        name = check_name("user", doc.get("name"))
        if name in self.users:
            raise AuthChangeRefused(f"user {name!r} already exists")
        self.users[name] = _User(_password_hash(doc))

    def _user_delete(self, doc: dict[str, Any]) -> None:
        name, _ = self._user(doc)
        self._keep_an_admin(lambda: self.users.pop(name))
        for digest in [d for d, (_, owner) in self.tokens.items() if owner == name]:
            del self.tokens[digest]

    def _user_passwd(self, doc: dict[str, Any]) -> None:
        _, user = self._user(doc)
        user.password_hash = _password_hash(doc)

    def _user_grant(self, doc: dict[str, Any]) -> None:
        _, user = self._user(doc)
        user.roles.add(self._role(doc.get("role")))

    def _user_revoke(self, doc: dict[str, Any]) -> None:
        name, user = self._user(doc)
        role = check_name("role", doc.get("role"))
        if role not in user.roles:
            raise AuthChangeRefused(f"user {name!r} does not have role {role!r}", missing=True)
        self._keep_an_admin(lambda: user.roles.discard(role))

    def _token_add(self, doc: dict[str, Any]) -> None:
        name, _ = self._user(doc)
        token_id = _text(doc, "id")
        digest = _text(doc, "digest")
        if not _TOKEN_ID.fullmatch(token_id) or not _DIGEST.fullmatch(digest):
            raise AuthChangeRefused("a token needs a hex id and a hex SHA-256 digest")
        if digest in self.tokens or any(tid == token_id for tid, _ in self.tokens.values()):
            raise AuthChangeRefused("that token already exists")
        self.tokens[digest] = (token_id, name)

    def _token_revoke(self, doc: dict[str, Any]) -> None:
        token_id = _text(doc, "id")
        for digest, (tid, _) in self.tokens.items():
            if tid == token_id:
                del self.tokens[digest]
                return
        raise AuthChangeRefused(f"no token with id {token_id!r}", missing=True)

    def _role_add(self, doc: dict[str, Any]) -> None:
        name = check_name("role", doc.get("name"))
        if name in self.roles:
            raise AuthChangeRefused(f"role {name!r} already exists")
        self.roles[name] = set()

    def _role_delete(self, doc: dict[str, Any]) -> None:
        name = self._role(doc.get("name"))

        def delete() -> None:
            del self.roles[name]
            for user in self.users.values():
                user.roles.discard(name)

        self._keep_an_admin(delete)

    def _role_grant(self, doc: dict[str, Any]) -> None:
        name = self._role(doc.get("name"))
        self.roles[name].add(_permission(doc))

    def _role_revoke(self, doc: dict[str, Any]) -> None:
        name = self._role(doc.get("name"))
        permission = _permission(doc)
        if permission not in self.roles[name]:
            raise AuthChangeRefused(
                f"role {name!r} has no {permission[0]} permission on prefix {permission[1]!r}",
                missing=True,
            )
        self._keep_an_admin(lambda: self.roles[name].discard(permission))

    def _keep_an_admin(self, change: Callable[[], object]) -> None:
        """Make ``change``, undoing it if it leaves an enabled cluster with no admin."""
        if not self.enabled:
            change()
            return
        before = self.to_json()
        change()
        if not self.admin_users():
            restored = AuthTables.from_json(before)
            self.users, self.roles, self.tokens = restored.users, restored.roles, restored.tokens
            raise AuthChangeRefused(
                "refused: no user would be left with the admin permission while auth is "
                "enabled (disable auth first, or give another user an admin role)"
            )

    # -- reading ---------------------------------------------------------------------

    def admin_users(self) -> list[str]:
        admin_roles = {name for name, perms in self.roles.items() if (ACCESS_ADMIN, "") in perms}
        return sorted(name for name, user in self.users.items() if user.roles & admin_roles)

    def to_document(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "revision": self.revision,
            "users": {
                name: {"password_hash": user.password_hash, "roles": sorted(user.roles)}
                for name, user in sorted(self.users.items())
            },
            "roles": {
                name: [{"access": a, "prefix": p} for a, p in sorted(perms)]
                for name, perms in sorted(self.roles.items())
            },
            "tokens": {
                digest: {"id": tid, "user": user}
                for digest, (tid, user) in sorted(self.tokens.items())
            },
        }

    def to_json(self) -> bytes:
        """Canonical JSON: equal tables give equal bytes."""
        return orjson.dumps(self.to_document(), option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes) -> AuthTables:
        """Load :meth:`to_json`'s output; ValueError if it is not that."""
        try:
            doc = orjson.loads(data)
            tables = cls(
                enabled=_strict_bool(doc["enabled"]),
                revision=_strict_int(doc["revision"]),
                users={
                    check_name("user", name): _User(
                        _password_hash(user), {check_name("role", r) for r in user["roles"]}
                    )
                    for name, user in doc["users"].items()
                },
                roles={
                    check_name("role", name): {_permission(p) for p in perms}
                    for name, perms in doc["roles"].items()
                },
                tokens={
                    _checked_digest(digest): (_text(t, "id"), check_name("user", t["user"]))
                    for digest, t in doc["tokens"].items()
                },
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed auth tables: {exc!r}") from None
        except AuthChangeRefused as exc:
            raise ValueError(f"malformed auth tables: {exc}") from None
        if tables.to_json() != bytes(data):
            raise ValueError("auth tables are not in canonical form")
        return tables


def _strict_bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError("expected a boolean")
    return value


def _strict_int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise TypeError("expected a non-negative integer")
    return value


def _checked_digest(digest: object) -> str:
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise TypeError("token digest is not hex SHA-256")
    return digest


_HANDLERS: Final = {
    "enable": AuthTables._enable,
    "disable": AuthTables._disable,
    "user_add": AuthTables._user_add,
    "user_delete": AuthTables._user_delete,
    "user_passwd": AuthTables._user_passwd,
    "user_grant": AuthTables._user_grant,
    "user_revoke": AuthTables._user_revoke,
    "token_add": AuthTables._token_add,
    "token_revoke": AuthTables._token_revoke,
    "role_add": AuthTables._role_add,
    "role_delete": AuthTables._role_delete,
    "role_grant": AuthTables._role_grant,
    "role_revoke": AuthTables._role_revoke,
}
