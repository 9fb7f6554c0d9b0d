"""A certificate authority and per-node certificates for a test or small cluster.

``kvctl certs create`` calls ``create_cluster_certs``: one self-signed CA, then one
certificate per node and one for the client (kvctl, applications), all signed by it.
Node certificates are good for both TLS server and client use, because a node both
accepts and dials peer connections; they name every given host as a subject alternative
name, so a peer or client that dials any of them can verify the address. Keys are
ECDSA P-256 (small, fast to handshake, accepted everywhere) and are written readable by
the owner only.

A production cluster with its own PKI does not need this: any CA works, as long as node
certificates carry the right names and both usages.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CLIENT_NAME",
    "DEFAULT_HOSTS",
    "CertificateAuthority",
    "CertsError",
    "IssuedFiles",
    "create_cluster_certs",
    "load_authority",
    "new_authority",
]

DEFAULT_HOSTS: Final = ("127.0.0.1", "localhost")
CLIENT_NAME: Final = "client"
_CA_DAYS: Final = 3650
_LEAF_DAYS: Final = 825  # the longest validity browsers and most tools still accept
# Issued certificates are valid from a little in the past: clocks of a cluster's
# machines are never exactly in step.
_BACKDATE: Final = datetime.timedelta(hours=1)


class CertsError(ValueError):
    """Certificates that cannot be created as asked, with a message saying why."""


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True, slots=True)
class IssuedFiles:
    """The files ``create_cluster_certs`` wrote."""

    ca_cert: Path
    ca_key: Path
    nodes: dict[int, tuple[Path, Path]]
    client: tuple[Path, Path]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "raftkv"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san_entries(hosts: Sequence[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        text = host.strip().strip("[]")
        if not text:
            raise CertsError("an empty --host was given")
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(text)))
        except ValueError:
            if any(c.isspace() or c in "/:@" for c in text):
                raise CertsError(
                    f"--host {host!r} is neither an IP address nor a DNS name"
                ) from None
            entries.append(x509.DNSName(text))
    return entries


def new_authority(
    common_name: str = "raftkv cluster CA", days: int = _CA_DAYS
) -> CertificateAuthority:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    now = _now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(certificate, key)


def issue(
    authority: CertificateAuthority,
    common_name: str,
    hosts: Sequence[str],
    *,
    server: bool,
    client: bool,
    days: int = _LEAF_DAYS,
    not_before: datetime.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate signed by ``authority`` (``not_before`` and ``days`` let tests
    make an expired one)."""
    if not (server or client):
        raise CertsError("a certificate needs server or client usage")
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before if not_before is not None else _now() - _BACKDATE
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
    )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(_san_entries(hosts)), critical=False
        )
    return builder.sign(authority.key, hashes.SHA256()), key


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    if path.exists() and not force:
        raise CertsError(f"{path} exists; remove it or give --force to overwrite")
    # Create with the final mode, so a key is never readable by others, not even for the
    # moment between writing and a chmod.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as file:
            fd = -1
            file.write(data)
    finally:
        if fd >= 0:
            os.close(fd)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_pair(
    cert_path: Path,
    key_path: Path,
    certificate: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    *,
    force: bool = False,
) -> None:
    for path in (cert_path, key_path):
        if path.exists() and not force:
            raise CertsError(f"{path} exists; remove it or give --force to overwrite")
    _write(key_path, _key_pem(key), 0o600, force)
    _write(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644, force)


def load_authority(directory: Path) -> CertificateAuthority:
    """The CA that ``create_cluster_certs`` wrote into ``directory``, to issue more."""
    cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise CertsError(f"no CA in {directory}: {exc.filename} does not exist") from None
    except ValueError as exc:
        raise CertsError(f"the CA in {directory} cannot be read: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertsError(f"{key_path} is not an elliptic-curve key")
    return CertificateAuthority(certificate, key)


def node_file_names(directory: Path, node_id: int) -> tuple[Path, Path]:
    return directory / f"node-{node_id}.pem", directory / f"node-{node_id}-key.pem"


def issue_node(
    authority: CertificateAuthority,
    directory: Path,
    node_id: int,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    force: bool = False,
) -> tuple[Path, Path]:
    """Write node ``node_id``'s certificate and key into ``directory``."""
    certificate, key = issue(authority, f"node-{node_id}", hosts, server=True, client=True)
    cert_path, key_path = node_file_names(directory, node_id)
    write_pair(cert_path, key_path, certificate, key, force=force)
    return cert_path, key_path


def create_cluster_certs(
    directory: Path,
    nodes: int,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    *,
    force: bool = False,
) -> IssuedFiles:
    """Write ca.pem, ca-key.pem, node-N.pem and node-N-key.pem for N in 1..nodes, and
    client.pem and client-key.pem, into ``directory`` (created 0700 if missing)."""
    if nodes < 1:
        raise CertsError("--nodes must be at least 1")
    if not hosts:
        raise CertsError("at least one --host is needed")
    _san_entries(hosts)  # refuse a bad host before anything is written
    if not force:
        # All or nothing: do not leave a new CA next to certificates of an old one.
        planned = [directory / "ca.pem", directory / "ca-key.pem"]
        planned += [p for n in range(1, nodes + 1) for p in node_file_names(directory, n)]
        planned += [directory / f"{CLIENT_NAME}.pem", directory / f"{CLIENT_NAME}-key.pem"]
        for path in planned:
            if path.exists():
                raise CertsError(f"{path} exists; remove it or give --force to overwrite")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    authority = new_authority()
    ca_cert, ca_key = directory / "ca.pem", directory / "ca-key.pem"
    write_pair(ca_cert, ca_key, authority.certificate, authority.key, force=force)
    issued = {
        n: issue_node(authority, directory, n, hosts, force=force) for n in range(1, nodes + 1)
    }
    client_cert, client_key = issue(authority, CLIENT_NAME, (), server=False, client=True)
    client_paths = (directory / f"{CLIENT_NAME}.pem", directory / f"{CLIENT_NAME}-key.pem")
    write_pair(*client_paths, client_cert, client_key, force=force)
    return IssuedFiles(ca_cert, ca_key, issued, client_paths)
