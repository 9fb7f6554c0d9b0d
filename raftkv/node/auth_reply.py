"""The Raft process's answer to a worker asking for the access-control tables.

Workers poll for the tables and cache them; a reply whose ``revision`` equals the one the
worker already holds carries no body, so a poll costs a few bytes while nothing changes.
The tables are this node's applied state: a follower's may lag the leader's by its
replication delay, which is part of the bound documented for revocations.
"""

from __future__ import annotations

from raftkv.kv.auth_tables import AuthTables
from raftkv.wire.protocol import ReplyStatus
from raftkv_ext.codec import ClientReply, ClientRequest

__all__ = ["auth_tables_reply"]


def auth_tables_reply(request: ClientRequest, tables: AuthTables) -> ClientReply:
    revision = tables.revision
    body = b"" if request.prev_revision == revision else tables.to_json()
    return ClientReply(request.request_id, ReplyStatus.OK, revision=revision, body=body)
