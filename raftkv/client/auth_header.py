"""Client credentials: the ``Authorization`` header a client sends, from arguments or
the environment.

A token wins over a user name and password. With no argument at all the environment is
read: ``RAFTKV_TOKEN``, else ``RAFTKV_USER`` with ``RAFTKV_PASSWORD``. No credentials
means no header, which is what a cluster with auth off expects.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping

__all__ = ["ENV_PASSWORD", "ENV_TOKEN", "ENV_USER", "authorization_header"]

ENV_USER = "RAFTKV_USER"
ENV_PASSWORD = "RAFTKV_PASSWORD"
ENV_TOKEN = "RAFTKV_TOKEN"


def authorization_header(
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """The header's value, or None for no credentials.

    ValueError if a password is given without a user, or a user without a password.
    """
    if user is None and password is None and token is None:
        env = os.environ if environ is None else environ
        token = env.get(ENV_TOKEN) or None
        user = env.get(ENV_USER) or None
        password = env.get(ENV_PASSWORD)
    if token:
        return f"Bearer {token}"
    if user is None and password is None:
        return None
    if not user:
        raise ValueError("a password needs a user name")
    if password is None:
        raise ValueError(f"user {user!r} needs a password (or use a token)")
    if ":" in user:
        raise ValueError("a user name cannot contain ':'")
    pair = f"{user}:{password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")
