"""kvctl auth|user|role: turn authentication on and off, manage users, tokens and roles.

Each command is one call to an ``/auth/...`` route of the HTTP API (see docs/api.md).
Passwords are asked for at a prompt unless given; the server hashes them, and a token's
secret is printed once, at its creation, and never again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

import click
import orjson

from .context import CommandContext

__all__ = ["auth_group", "role_group", "user_group"]


def _context() -> CommandContext:
    context = click.get_current_context().find_object(CommandContext)
    if context is None:
        raise click.UsageError("run this command through kvctl")
    return context


def _call(method: str, path: str, document: dict[str, Any] | None = None) -> dict[str, Any]:
    return _context().client.auth_request(method, path, document)


def _show(document: dict[str, Any], text: Callable[[], str]) -> None:
    if _context().json:
        click.echo(orjson.dumps(document, option=orjson.OPT_SORT_KEYS).decode())
    else:
        click.echo(text())


def _segment(name: str) -> str:
    return quote(name, safe="")


def _new_password(given: str | None) -> str:
    if given is not None:
        return given
    password: str = click.prompt(
        "New password", hide_input=True, confirmation_prompt=True, err=True
    )
    return password


# ---------------------------------------------------------------------- auth


@click.group("auth")
def auth_group() -> None:
    """Turn authentication on or off (off until enabled)."""


@auth_group.command("enable")
def auth_enable_cmd() -> None:
    """Require credentials on every endpoint but /health.

    Refused unless a user holds a role with the admin permission. The native TCP port
    refuses every request while auth is enabled.
    """
    _show(_call("POST", "/auth/enable"), lambda: "authentication enabled")


@auth_group.command("disable")
def auth_disable_cmd() -> None:
    """Stop checking credentials (the users and roles are kept)."""
    _show(_call("POST", "/auth/disable"), lambda: "authentication disabled")


@auth_group.command("status")
def auth_status_cmd() -> None:
    """Show whether authentication is enabled, and who the admins are."""
    status = _call("GET", "/auth/status")

    def text() -> str:
        state = "enabled" if status.get("enabled") else "disabled"
        admins = ", ".join(status.get("admin_users", [])) or "(none)"
        return (
            f"authentication: {state}\nusers: {status.get('users')}  roles: "
            f"{status.get('roles')}\nadmin users: {admins}"
        )

    _show(status, text)


# ---------------------------------------------------------------------- users


@click.group("user")
def user_group() -> None:
    """Manage users, their roles and their tokens."""


@user_group.command("add")
@click.argument("name")
@click.option("--new-password", help="The user's password (asked for when not given).")
@click.option("--no-password", is_flag=True, help="A user that signs in with tokens only.")
def user_add_cmd(name: str, new_password: str | None, no_password: bool) -> None:
    """Create user NAME."""
    document: dict[str, Any] = {"name": name}
    if not no_password:
        document["password"] = _new_password(new_password)
    _show(_call("POST", "/auth/users", document), lambda: f"user {name} added")


@user_group.command("delete")
@click.argument("name")
def user_delete_cmd(name: str) -> None:
    """Delete user NAME and its tokens."""
    _show(_call("DELETE", f"/auth/users/{_segment(name)}"), lambda: f"user {name} deleted")


@user_group.command("list")
def user_list_cmd() -> None:
    """List the users, their roles and their token ids."""
    listing = _call("GET", "/auth/users")

    def text() -> str:
        lines = []
        for user in listing.get("users", []):
            roles = ", ".join(user["roles"]) or "-"
            tokens = ", ".join(user["tokens"]) or "-"
            password = "yes" if user["has_password"] else "no"
            lines.append(f"{user['name']}\troles: {roles}\tpassword: {password}\ttokens: {tokens}")
        return "\n".join(lines) or "(no users)"

    _show(listing, text)


@user_group.command("passwd")
@click.argument("name")
@click.option("--new-password", help="The new password (asked for when not given).")
def user_passwd_cmd(name: str, new_password: str | None) -> None:
    """Change the password of user NAME."""
    document = {"password": _new_password(new_password)}
    result = _call("PUT", f"/auth/users/{_segment(name)}/password", document)
    _show(result, lambda: f"password of {name} changed")


@user_group.command("grant-role")
@click.argument("name")
@click.argument("role")
def user_grant_role_cmd(name: str, role: str) -> None:
    """Give user NAME the role ROLE."""
    result = _call("PUT", f"/auth/users/{_segment(name)}/roles/{_segment(role)}")
    _show(result, lambda: f"user {name} has role {role}")


@user_group.command("revoke-role")
@click.argument("name")
@click.argument("role")
def user_revoke_role_cmd(name: str, role: str) -> None:
    """Take the role ROLE from user NAME."""
    result = _call("DELETE", f"/auth/users/{_segment(name)}/roles/{_segment(role)}")
    _show(result, lambda: f"user {name} no longer has role {role}")


@user_group.group("token")
def token_group() -> None:
    """Create or revoke access tokens (sent as 'Authorization: Bearer <token>')."""


@token_group.command("create")
@click.argument("name")
def token_create_cmd(name: str) -> None:
    """Create a token for user NAME; its secret is printed this once only."""
    result = _call("POST", f"/auth/users/{_segment(name)}/tokens")
    _show(result, lambda: f"{result['token']}\n(token id {result['id']}; keep the token secret)")


@token_group.command("revoke")
@click.argument("token_id")
def token_revoke_cmd(token_id: str) -> None:
    """Revoke the token with id TOKEN_ID (see 'kvctl user list')."""
    result = _call("DELETE", f"/auth/tokens/{_segment(token_id)}")
    _show(result, lambda: f"token {token_id} revoked")


# ---------------------------------------------------------------------- roles


@click.group("role")
def role_group() -> None:
    """Manage roles and their permissions."""


@role_group.command("add")
@click.argument("name")
def role_add_cmd(name: str) -> None:
    """Create role NAME (with no permission yet)."""
    _show(_call("POST", "/auth/roles", {"name": name}), lambda: f"role {name} added")


@role_group.command("delete")
@click.argument("name")
def role_delete_cmd(name: str) -> None:
    """Delete role NAME (users that had it lose it)."""
    _show(_call("DELETE", f"/auth/roles/{_segment(name)}"), lambda: f"role {name} deleted")


@role_group.command("list")
def role_list_cmd() -> None:
    """List the roles and their permissions."""
    listing = _call("GET", "/auth/roles")

    def text() -> str:
        lines = []
        for role in listing.get("roles", []):
            perms = ", ".join(
                p["access"] if p["access"] == "admin" else f"{p['access']} {p['prefix']!r}"
                for p in role["permissions"]
            )
            lines.append(f"{role['name']}\t{perms or '-'}")
        return "\n".join(lines) or "(no roles)"

    _show(listing, text)


def _permission_options(command: Callable[..., None]) -> Callable[..., None]:
    command = click.option("--admin", is_flag=True, help="Membership, operations and auth.")(
        command
    )
    command = click.option(
        "--readwrite", "readwrite", metavar="PREFIX", help="Read and write keys under PREFIX."
    )(command)
    return click.option("--read", metavar="PREFIX", help="Read keys under PREFIX.")(command)


def _permission(read: str | None, readwrite: str | None, admin: bool) -> dict[str, str]:
    chosen = [p for p in (read is not None, readwrite is not None, admin) if p]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --read PREFIX, --readwrite PREFIX, --admin")
    if admin:
        return {"access": "admin", "prefix": ""}
    if read is not None:
        return {"access": "read", "prefix": read}
    assert readwrite is not None
    return {"access": "readwrite", "prefix": readwrite}


@role_group.command("grant")
@click.argument("name")
@_permission_options
def role_grant_cmd(name: str, read: str | None, readwrite: str | None, admin: bool) -> None:
    """Give role NAME a permission ('' as PREFIX means every key)."""
    permission = _permission(read, readwrite, admin)
    result = _call("PUT", f"/auth/roles/{_segment(name)}/permissions", permission)
    _show(result, lambda: f"role {name} granted {permission['access']} {permission['prefix']!r}")


@role_group.command("revoke")
@click.argument("name")
@_permission_options
def role_revoke_cmd(name: str, read: str | None, readwrite: str | None, admin: bool) -> None:
    """Take a permission from role NAME."""
    permission = _permission(read, readwrite, admin)
    path = f"/auth/roles/{_segment(name)}/permissions?{urlencode(permission)}"
    result = _call("DELETE", path)
    _show(result, lambda: f"role {name} revoked {permission['access']} {permission['prefix']!r}")
