"""The access-control tables as a worker uses them: compiled for fast checks.

Built from the canonical JSON the Raft process hands out (see
:mod:`raftkv.kv.auth_tables`): for each user the union of the permissions of its roles,
split into the prefixes it may read and those it may write, and whether it is an admin;
and an index of tokens by digest. A check is then a scan of one user's few prefixes.

The rules: ``readwrite`` on a prefix allows reading and writing every key under it;
``read`` allows reading; ``admin`` allows the cluster operations and the management of
users, roles and auth, and every key. A single key needs a prefix that covers it; a
listing or delete of a prefix needs one prefix that covers the whole requested prefix
(``app/`` covers ``app/x``; it does not cover ``ap``, which could match ``apz``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import Enum

from raftkv.kv.auth_tables import ACCESS_ADMIN, ACCESS_READ, AuthTables

__all__ = ["AccessTables", "Grants", "Need", "token_digest"]


class Need(Enum):
    """What a request needs besides valid credentials."""

    NOTHING = "any user"
    READ = "read"
    WRITE = "readwrite"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Grants:
    """What one user may do."""

    admin: bool = False
    read: tuple[bytes, ...] = ()
    write: tuple[bytes, ...] = ()

    def allows(self, need: Need, key: bytes) -> bool:
        """Whether a request needing ``need`` on ``key`` (a key, or a whole prefix) is
        allowed; ``key`` is ignored for NOTHING and ADMIN."""
        if self.admin or need is Need.NOTHING:
            return True
        if need is Need.ADMIN:
            return False
        prefixes = self.write if need is Need.WRITE else self.read
        return any(key.startswith(prefix) for prefix in prefixes)


def token_digest(token: str) -> str:
    """How a token is stored and looked up: the hex SHA-256 of the secret."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class AccessTables:
    enabled: bool = False
    revision: int = -1
    """-1 until the tables were first fetched."""
    password_hashes: dict[str, str] = field(default_factory=dict)
    grants: dict[str, Grants] = field(default_factory=dict)
    token_users: dict[str, str] = field(default_factory=dict)
    """Token digest -> user name."""

    @classmethod
    def from_json(cls, data: bytes) -> AccessTables:
        tables = AuthTables.from_json(data)
        role_grants = {name: sorted(perms) for name, perms in tables.roles.items()}
        grants: dict[str, Grants] = {}
        for name, user in tables.users.items():
            admin = False
            read: set[bytes] = set()
            write: set[bytes] = set()
            for role in user.roles:
                for access, prefix in role_grants.get(role, ()):
                    if access == ACCESS_ADMIN:
                        admin = True
                        continue
                    encoded = prefix.encode("utf-8", "surrogatepass")
                    read.add(encoded)
                    if access != ACCESS_READ:
                        write.add(encoded)
            grants[name] = Grants(admin, tuple(sorted(read)), tuple(sorted(write)))
        return cls(
            enabled=tables.enabled,
            revision=tables.revision,
            password_hashes={name: user.password_hash for name, user in tables.users.items()},
            grants=grants,
            token_users={digest: user for digest, (_, user) in tables.tokens.items()},
        )
