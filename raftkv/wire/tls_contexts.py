"""Building ``ssl.SSLContext`` objects from certificate files, the same way everywhere.

Every TLS endpoint of the project (peer links, the HTTPS port, the native client port)
and every client of it (the Python client, kvctl, a worker asking the leader, ``kvnode
--join``) gets its context here, so the protocol floor and the verification rules are
set in one place. Problems with the files become ``TlsSetupError`` with a message that
names the file, never an ``ssl`` traceback.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from typing import TypeAlias

__all__ = ["FilePath", "TlsSetupError", "client_context", "server_context"]


# Where a certificate, key or CA file is: a str or any path-like object.
FilePath: TypeAlias = str | os.PathLike[str]


class TlsSetupError(ValueError):
    """A certificate, key or CA file that cannot be used, with a message saying why."""


def _readable(path: FilePath, what: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise TlsSetupError(f"{what} {str(file)!r} does not exist or is not a file")
    try:
        with file.open("rb"):
            pass
    except OSError as exc:
        raise TlsSetupError(f"{what} {str(file)!r} cannot be read: {exc.strerror}") from None
    return str(file)


def _new_context(purpose: int) -> ssl.SSLContext:
    context = ssl.SSLContext(purpose)
    # TLS 1.2 is the oldest version without known protocol breaks that every supported
    # OpenSSL still offers; nothing of ours needs to talk to anything older.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _load_chain(context: ssl.SSLContext, cert_file: FilePath, key_file: FilePath) -> None:
    cert = _readable(cert_file, "certificate file")
    key = _readable(key_file, "key file")
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise TlsSetupError(
            f"cannot use certificate {cert!r} with key {key!r}: {exc.reason or exc} "
            "(not PEM, or the key does not belong to the certificate)"
        ) from None


def _load_ca(context: ssl.SSLContext, ca_file: FilePath) -> None:
    ca = _readable(ca_file, "CA file")
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as exc:
        raise TlsSetupError(f"cannot use CA file {ca!r}: {exc.reason or exc}") from None


def server_context(
    cert_file: FilePath, key_file: FilePath, client_ca_file: FilePath | None = None
) -> ssl.SSLContext:
    """The accepting side: presents ``cert_file``; with ``client_ca_file`` it also demands
    a client certificate signed by that CA and refuses a connection without one."""
    context = _new_context(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(context, cert_file, key_file)
    if client_ca_file is not None:
        _load_ca(context, client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca_file: FilePath | None = None,
    cert_file: FilePath | None = None,
    key_file: FilePath | None = None,
) -> ssl.SSLContext:
    """The dialling side: verifies the server's certificate and host name against
    ``ca_file`` (the system's trusted CAs when None) and presents ``cert_file`` when the
    server asks for a client certificate."""
    if (cert_file is None) != (key_file is None):
        raise TlsSetupError("a client certificate needs its key, and a key its certificate")
    context = _new_context(ssl.PROTOCOL_TLS_CLIENT)
    if ca_file is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _load_ca(context, ca_file)
    if cert_file is not None and key_file is not None:
        _load_chain(context, cert_file, key_file)
    return context
