"""A node's TLS settings: which files secure the peer links and the client ports.

Two independent groups, named as etcd names them:

* peer links (``--peer-cert-file``, ``--peer-key-file``, ``--peer-trusted-ca-file``):
  mutual TLS. Each node presents its certificate and demands one signed by the cluster's
  CA from the other side, in both directions. All three files or none.
* client ports (``--cert-file``, ``--key-file``, optionally ``--trusted-ca-file``):
  HTTPS on the HTTP port and TLS on the native client port; with a trusted CA, clients
  must present a certificate signed by it.

The files are checked when the node starts (they exist, parse, and the key matches the
certificate), so a mistake stops ``kvnode`` with one clear line instead of surfacing as
failed handshakes later.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from raftkv.wire.tls_contexts import TlsSetupError, client_context, server_context

__all__ = ["ClientTls", "PeerTls", "client_tls_from_flags", "peer_tls_from_flags"]


@dataclass(frozen=True, slots=True)
class PeerTls:
    """Mutual TLS on the peer links."""

    cert_file: Path
    key_file: Path
    trusted_ca_file: Path

    def server_context(self) -> ssl.SSLContext:
        """For connections other nodes open to us: a certificate is required."""
        return server_context(self.cert_file, self.key_file, self.trusted_ca_file)

    def client_context(self) -> ssl.SSLContext:
        """For connections we open: the peer's certificate and address are verified,
        and ours is presented."""
        return client_context(self.trusted_ca_file, self.cert_file, self.key_file)


@dataclass(frozen=True, slots=True)
class ClientTls:
    """TLS on the client ports (HTTPS and the native port)."""

    cert_file: Path
    key_file: Path
    # Set: clients must present a certificate signed by this CA.
    trusted_ca_file: Path | None = None

    def server_context(self) -> ssl.SSLContext:
        return server_context(self.cert_file, self.key_file, self.trusted_ca_file)


def _path(value: str | Path | None) -> Path | None:
    return None if value is None or str(value) == "" else Path(value)


def peer_tls_from_flags(
    cert_file: str | Path | None,
    key_file: str | Path | None,
    trusted_ca_file: str | Path | None,
) -> PeerTls | None:
    """Validate the three peer flags: all given (and usable) or none."""
    given = {
        "--peer-cert-file": _path(cert_file),
        "--peer-key-file": _path(key_file),
        "--peer-trusted-ca-file": _path(trusted_ca_file),
    }
    missing = [flag for flag, value in given.items() if value is None]
    if len(missing) == len(given):
        return None
    if missing:
        present = [flag for flag, value in given.items() if value is not None]
        raise TlsSetupError(
            f"peer TLS needs all of --peer-cert-file, --peer-key-file and "
            f"--peer-trusted-ca-file; {', '.join(present)} given without {', '.join(missing)}"
        )
    tls = PeerTls(*(value for value in given.values() if value is not None))
    # Build both contexts once now: this is what checks the files.
    tls.server_context()
    tls.client_context()
    return tls


def client_tls_from_flags(
    cert_file: str | Path | None,
    key_file: str | Path | None,
    trusted_ca_file: str | Path | None,
) -> ClientTls | None:
    """Validate the client-port flags: --cert-file and --key-file together, and
    --trusted-ca-file only with them."""
    cert, key, ca = _path(cert_file), _path(key_file), _path(trusted_ca_file)
    if cert is None and key is None:
        if ca is not None:
            raise TlsSetupError(
                "--trusted-ca-file requires client certificates on the HTTPS port, which "
                "needs --cert-file and --key-file"
            )
        return None
    if cert is None or key is None:
        given, missing = (
            ("--cert-file", "--key-file") if key is None else ("--key-file", "--cert-file")
        )
        raise TlsSetupError(
            f"HTTPS needs both --cert-file and --key-file; {given} given without {missing}"
        )
    tls = ClientTls(cert, key, ca)
    tls.server_context()
    return tls


def outbound_ca_file(client: ClientTls | None, peer: PeerTls | None) -> Path | None:
    """The CA a node verifies another node's HTTPS certificate with (a follower asking
    the leader, an operation passed on to it): the client CA when there is one, else the
    cluster's peer CA, else None (the system's trusted CAs)."""
    if client is not None and client.trusted_ca_file is not None:
        return client.trusted_ca_file
    return peer.trusted_ca_file if peer is not None else None


def worker_tls_arguments(client: ClientTls | None, peer: PeerTls | None) -> list[str]:
    """The HTTP worker's TLS flags (raftkv/http/worker.py) for this node's settings."""
    if client is None:
        return []
    arguments = ["--cert-file", str(client.cert_file), "--key-file", str(client.key_file)]
    if client.trusted_ca_file is not None:
        arguments += ["--trusted-ca-file", str(client.trusted_ca_file)]
    ca = outbound_ca_file(client, peer)
    if ca is not None:
        arguments += ["--outbound-ca-file", str(ca)]
    return arguments


def node_http_context(client: ClientTls | None, peer: PeerTls | None) -> ssl.SSLContext | None:
    """How a node (``kvnode --join``, ``repair``) verifies another node's HTTPS port:
    with the CA of ``outbound_ca_file``, presenting its own certificate when the cluster
    demands client certificates. None when HTTPS is off."""
    if client is None:
        return None
    demands_certificates = client.trusted_ca_file is not None
    return client_context(
        outbound_ca_file(client, peer),
        client.cert_file if demands_certificates else None,
        client.key_file if demands_certificates else None,
    )
