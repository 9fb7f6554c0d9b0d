"""HTTP routes that manage authentication: the switch, users, tokens and roles.

Each change becomes one AuthChange command in the Raft log (tagged like a key write, so
a retried request applies once). The expensive or random parts are done here, in the
worker, never in the state machine: the scrypt hash of a new password and the secret of
a new token, of which only the SHA-256 is stored. A token's secret is in the answer to
its creation and nowhere else.

Once auth is enabled these routes need the admin permission (``GET /auth/status`` needs
any valid credentials); while it is off anyone may call them, as in etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from raftkv.http.auth.access import token_digest
from raftkv.http.auth.passwords import hash_password
from raftkv.http.auth.tables_cache import AuthTablesCache, AuthTablesUnavailable
from raftkv.http.errors import ApiError
from raftkv.http.responses import json_response
from raftkv.http.routes.raft_calls import RaftCalls
from raftkv.http.routes.request_input import read_body, session_tag
from raftkv.kv.auth_tables import ACCESS_LEVELS, AuthTables, check_name
from raftkv.wire.protocol import Op, ReplyStatus
from raftkv.wire.sessions import SessionTag
from raftkv_ext.codec import ClientRequest

__all__ = ["AuthRoutes"]

_MAX_BODY: Final = 64 * 1024
_TOKEN_PREFIX: Final = "rkv"


class AuthRoutes:
    """The handlers, and the routes that serve them (``routes()``)."""

    def __init__(self, raft: RaftCalls, cache: AuthTablesCache) -> None:
        self._raft = raft
        self._cache = cache

    def routes(self) -> list[Route]:
        return [
            Route("/auth/status", self.status, methods=["GET"]),
            Route("/auth/enable", self.enable, methods=["POST"]),
            Route("/auth/disable", self.disable, methods=["POST"]),
            Route("/auth/users", self.list_users, methods=["GET"]),
            Route("/auth/users", self.add_user, methods=["POST"]),
            Route("/auth/users/{name}", self.delete_user, methods=["DELETE"]),
            Route("/auth/users/{name}/password", self.change_password, methods=["PUT"]),
            Route("/auth/users/{name}/roles/{role}", self.grant_role, methods=["PUT"]),
            Route("/auth/users/{name}/roles/{role}", self.revoke_role, methods=["DELETE"]),
            Route("/auth/users/{name}/tokens", self.create_token, methods=["POST"]),
            Route("/auth/tokens/{token_id}", self.revoke_token, methods=["DELETE"]),
            Route("/auth/roles", self.list_roles, methods=["GET"]),
            Route("/auth/roles", self.add_role, methods=["POST"]),
            Route("/auth/roles/{name}", self.delete_role, methods=["DELETE"]),
            Route("/auth/roles/{name}/permissions", self.grant_permission, methods=["PUT"]),
            Route("/auth/roles/{name}/permissions", self.revoke_permission, methods=["DELETE"]),
        ]

    # -- plumbing ----------------------------------------------------------------------

    async def _body(self, request: Request) -> dict[str, Any]:
        raw = await read_body(request, _MAX_BODY, "request body")
        try:
            document = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(document, dict):
            raise ApiError(400, "request body must be a JSON object")
        return document

    async def _change(self, request: Request, change: dict[str, Any]) -> dict[str, Any]:
        """Commit one AuthChange; the answer's fields, or an ApiError."""
        raft = self._raft
        payload = orjson.dumps(change, option=orjson.OPT_SORT_KEYS)

        def build(tag: SessionTag) -> ClientRequest:
            return raft.request(
                Op.AUTH_CHANGE,
                value=payload,
                client_id=tag.client_id,
                seq=tag.seq,
                first_incomplete=tag.first_incomplete,
            )

        reply = await raft.write(session_tag(request), build)
        if reply.status == ReplyStatus.NOT_FOUND:
            raise ApiError(404, reply.body.decode(errors="replace"))
        if reply.status != ReplyStatus.OK:
            raise raft.error_for(reply, write=True)
        # This worker sees its own change at once; the others within their poll interval.
        with contextlib.suppress(AuthTablesUnavailable):
            await self._cache.refresh()
        return {"ok": True, "revision": reply.revision}

    async def _tables(self) -> AuthTables:
        """This node's current tables, fetched now (not the cached copy)."""
        raft = self._raft
        reply = await raft.call(raft.request(Op.AUTH_TABLES, prev_revision=-1), write=False)
        if reply.status != ReplyStatus.OK:
            raise raft.error_for(reply, write=False)
        try:
            return AuthTables.from_json(reply.body)
        except ValueError as exc:
            raise ApiError(500, f"unreadable auth tables from the Raft process: {exc}") from None

    @staticmethod
    def _name(kind: str, value: object) -> str:
        try:
            return check_name(kind, value)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None

    async def _password_hash(self, document: dict[str, Any], *, required: bool) -> str:
        password = document.get("password")
        if password is None and not required:
            return ""
        if not isinstance(password, str) or not password:
            raise ApiError(400, '"password" must be a non-empty string')
        try:
            return await asyncio.to_thread(hash_password, password)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None

    # -- the switch --------------------------------------------------------------------

    async def status(self, request: Request) -> Response:
        tables = await self._tables()
        return json_response(
            {
                "enabled": tables.enabled,
                "revision": tables.revision,
                "users": len(tables.users),
                "roles": len(tables.roles),
                "admin_users": tables.admin_users(),
            }
        )

    async def enable(self, request: Request) -> Response:
        return json_response({**await self._change(request, {"op": "enable"}), "enabled": True})

    async def disable(self, request: Request) -> Response:
        return json_response({**await self._change(request, {"op": "disable"}), "enabled": False})

    # -- users -------------------------------------------------------------------------

    async def list_users(self, request: Request) -> Response:
        tables = await self._tables()
        tokens: dict[str, list[str]] = {}
        for token_id, user in sorted(tables.tokens.values()):
            tokens.setdefault(user, []).append(token_id)
        return json_response(
            {
                "users": [
                    {
                        "name": name,
                        "roles": sorted(user.roles),
                        "has_password": bool(user.password_hash),
                        "tokens": tokens.get(name, []),
                    }
                    for name, user in sorted(tables.users.items())
                ]
            }
        )

    async def add_user(self, request: Request) -> Response:
        document = await self._body(request)
        name = self._name("user", document.get("name"))
        password_hash = await self._password_hash(document, required=False)
        change = {"op": "user_add", "name": name, "password_hash": password_hash}
        return json_response({**await self._change(request, change), "user": name})

    async def delete_user(self, request: Request) -> Response:
        name = self._name("user", request.path_params["name"])
        return json_response({**await self._change(request, {"op": "user_delete", "name": name})})

    async def change_password(self, request: Request) -> Response:
        name = self._name("user", request.path_params["name"])
        password_hash = await self._password_hash(await self._body(request), required=True)
        change = {"op": "user_passwd", "name": name, "password_hash": password_hash}
        return json_response(await self._change(request, change))

    async def grant_role(self, request: Request) -> Response:
        return await self._user_role(request, "user_grant")

    async def revoke_role(self, request: Request) -> Response:
        return await self._user_role(request, "user_revoke")

    async def _user_role(self, request: Request, op: str) -> Response:
        name = self._name("user", request.path_params["name"])
        role = self._name("role", request.path_params["role"])
        return json_response(await self._change(request, {"op": op, "name": name, "role": role}))

    async def create_token(self, request: Request) -> Response:
        name = self._name("user", request.path_params["name"])
        token_id = secrets.token_hex(8)
        token = f"{_TOKEN_PREFIX}_{token_id}_{secrets.token_urlsafe(32)}"
        change = {"op": "token_add", "name": name, "id": token_id, "digest": token_digest(token)}
        result = await self._change(request, change)
        return json_response({**result, "user": name, "id": token_id, "token": token})

    async def revoke_token(self, request: Request) -> Response:
        token_id = str(request.path_params["token_id"])
        return json_response(await self._change(request, {"op": "token_revoke", "id": token_id}))

    # -- roles -------------------------------------------------------------------------

    async def list_roles(self, request: Request) -> Response:
        tables = await self._tables()
        return json_response(
            {
                "roles": [
                    {
                        "name": name,
                        "permissions": [{"access": a, "prefix": p} for a, p in sorted(perms)],
                    }
                    for name, perms in sorted(tables.roles.items())
                ]
            }
        )

    async def add_role(self, request: Request) -> Response:
        name = self._name("role", (await self._body(request)).get("name"))
        return json_response(
            {**await self._change(request, {"op": "role_add", "name": name}), "role": name}
        )

    async def delete_role(self, request: Request) -> Response:
        name = self._name("role", request.path_params["name"])
        return json_response(await self._change(request, {"op": "role_delete", "name": name}))

    async def grant_permission(self, request: Request) -> Response:
        document = await self._body(request)
        return await self._permission(
            request, "role_grant", document.get("access"), document.get("prefix", "")
        )

    async def revoke_permission(self, request: Request) -> Response:
        query = request.query_params
        return await self._permission(
            request, "role_revoke", query.get("access"), query.get("prefix", "")
        )

    async def _permission(
        self, request: Request, op: str, access: object, prefix: object
    ) -> Response:
        name = self._name("role", request.path_params["name"])
        if access not in ACCESS_LEVELS:
            raise ApiError(400, f'"access" must be one of {", ".join(ACCESS_LEVELS)}')
        if not isinstance(prefix, str):
            raise ApiError(400, '"prefix" must be a string')
        change = {"op": op, "name": name, "access": access, "prefix": prefix}
        return json_response(await self._change(request, change))
