"""The OpenAPI description of authentication: the security schemes and the ``/auth``
management routes (see raftkv.http.routes.auth_admin), merged into the document by
:func:`raftkv.http.routes.openapi.build_openapi`."""

from __future__ import annotations

from typing import Any

__all__ = ["AUTH_SECURITY_SCHEMES", "auth_paths", "with_auth_responses"]

AUTH_SECURITY_SCHEMES: dict[str, Any] = {
    "basic": {"type": "http", "scheme": "basic"},
    "bearer": {"type": "http", "scheme": "bearer"},
}

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_NAME = {"type": "string", "pattern": "^[A-Za-z0-9_.@-]{1,128}$"}


def _answer(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"type": "object"}}},
    }


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _ERROR}


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _NAME}


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": required}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _change(operation_id: str, summary: str, **extra: Any) -> dict[str, Any]:
    """A change to the tables: one entry in the Raft log."""
    responses = {
        "200": _answer("Applied."),
        "400": _error("Malformed, or refused by a rule (see the message)."),
        "401": _error("Auth is enabled and the credentials are missing or wrong."),
        "403": _error("The credentials lack the admin permission."),
        "404": _error("The named user, role or token does not exist."),
        "503": _error("No leader or quorum in time."),
    }
    return {"operationId": operation_id, "summary": summary, "responses": responses, **extra}


def auth_paths() -> dict[str, Any]:
    password = {"type": "string", "minLength": 1}
    permission = {
        "access": {"type": "string", "enum": ["read", "readwrite", "admin"]},
        "prefix": {"type": "string", "default": ""},
    }
    return {
        "/auth/status": {
            "get": {
                "operationId": "authStatus",
                "summary": "Whether authentication is enabled, the tables' revision, and "
                "the users with the admin permission.",
                "responses": {
                    "200": _answer('{"enabled", "revision", "users", "roles", "admin_users"}'),
                    "401": _error("Auth is enabled and the credentials are missing or wrong."),
                },
            }
        },
        "/auth/enable": {
            "post": _change(
                "authEnable",
                "Require credentials on every route but /health (refused unless a user "
                "holds a role with the admin permission).",
            )
        },
        "/auth/disable": {"post": _change("authDisable", "Stop checking credentials.")},
        "/auth/users": {
            "get": {
                "operationId": "listUsers",
                "summary": "The users, their roles and token ids (never hashes or secrets).",
                "responses": {"200": _answer('{"users": [...]}')},
            },
            "post": _change(
                "addUser",
                "Create a user (without a password it signs in with tokens only).",
                requestBody=_body({"name": _NAME, "password": password}, ["name"]),
            ),
        },
        "/auth/users/{name}": {
            "delete": _change(
                "deleteUser", "Delete a user and its tokens.", parameters=[_path_param("name")]
            )
        },
        "/auth/users/{name}/password": {
            "put": _change(
                "changePassword",
                "Set a user's password.",
                parameters=[_path_param("name")],
                requestBody=_body({"password": password}, ["password"]),
            )
        },
        "/auth/users/{name}/roles/{role}": {
            "put": _change(
                "grantRole",
                "Give a user a role.",
                parameters=[_path_param("name"), _path_param("role")],
            ),
            "delete": _change(
                "revokeRole",
                "Take a role from a user.",
                parameters=[_path_param("name"), _path_param("role")],
            ),
        },
        "/auth/users/{name}/tokens": {
            "post": _change(
                "createToken",
                'Create a token: {"id", "token", "user"}; the secret is in this answer only.',
                parameters=[_path_param("name")],
            )
        },
        "/auth/tokens/{token_id}": {
            "delete": _change(
                "revokeToken",
                "Revoke a token by its id.",
                parameters=[
                    {
                        "name": "token_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
            )
        },
        "/auth/roles": {
            "get": {
                "operationId": "listRoles",
                "summary": "The roles and their permissions.",
                "responses": {"200": _answer('{"roles": [...]}')},
            },
            "post": _change(
                "addRole", "Create a role.", requestBody=_body({"name": _NAME}, ["name"])
            ),
        },
        "/auth/roles/{name}": {
            "delete": _change(
                "deleteRole",
                "Delete a role (users that had it lose it).",
                parameters=[_path_param("name")],
            )
        },
        "/auth/roles/{name}/permissions": {
            "put": _change(
                "grantPermission",
                "Give a role read or readwrite on a key prefix, or admin.",
                parameters=[_path_param("name")],
                requestBody=_body(permission, ["access"]),
            ),
            "delete": _change(
                "revokePermission",
                "Take a permission from a role.",
                parameters=[
                    _path_param("name"),
                    {
                        "name": "access",
                        "in": "query",
                        "required": True,
                        "schema": permission["access"],
                    },
                    {"name": "prefix", "in": "query", "schema": {"type": "string"}},
                ],
            ),
        },
    }


_UNAUTHENTICATED = _error(
    "Auth is enabled and the credentials are missing, malformed or wrong; "
    "WWW-Authenticate lists the schemes (Basic, Bearer)."
)
_FORBIDDEN = _error("The credentials are valid but no role of the user allows this request.")


def with_auth_responses(paths: dict[str, Any]) -> dict[str, Any]:
    """``paths`` with the 401 and 403 answers added to every operation but /health's
    (which never needs credentials)."""
    for path, item in paths.items():
        if path == "/health":
            continue
        for operation in item.values():
            if isinstance(operation, dict) and "responses" in operation:
                operation["responses"].setdefault("401", _UNAUTHENTICATED)
                operation["responses"].setdefault("403", _FORBIDDEN)
    return paths
