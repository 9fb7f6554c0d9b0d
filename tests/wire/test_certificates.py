"""The CA and node certificates of raftkv.wire.certificates: chain, names, usages, file modes."""

from __future__ import annotations

import ipaddress
import os
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from raftkv.wire.certificates import CertsError, create_cluster_certs, issue_node, load_authority
from raftkv.wire.tls_contexts import client_context, server_context


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str) -> None:
    """A complete TLS handshake in memory; raises what either side raises."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client_side = client.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for name, side in (("client", client_side), ("server", server_side)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # TLS 1.3: the server checks the client's certificate after the client is
            # done; one more read on the server side surfaces its verdict.
            server_side.write(b"x")
            c_in.write(s_out.read())
            client_side.read(1)
            return
    raise AssertionError("the handshake did not finish")


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    directory = tmp_path / "certs"
    create_cluster_certs(directory, 3, ["127.0.0.1", "localhost", "node.example"])
    return directory


def test_files_and_modes(certs: Path) -> None:
    names = sorted(p.name for p in certs.iterdir())
    assert names == sorted(
        ["ca.pem", "ca-key.pem", "client.pem", "client-key.pem"]
        + [f"node-{n}{suffix}" for n in (1, 2, 3) for suffix in (".pem", "-key.pem")]
    )
    assert mode(certs) == 0o700
    for path in certs.iterdir():
        assert mode(path) == (0o600 if path.name.endswith("-key.pem") else 0o644), path


def test_every_certificate_is_signed_by_the_ca(certs: Path) -> None:
    ca = load(certs / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca.verify_directly_issued_by(ca)
    for name in ("node-1", "node-2", "node-3", "client"):
        leaf = load(certs / f"{name}.pem")
        leaf.verify_directly_issued_by(ca)
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == name
        assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)


def test_node_certificates_name_the_hosts_and_serve_both_ways(certs: Path) -> None:
    node = load(certs / "node-2.pem")
    names = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "node.example"]
    usages = node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    client = load(certs / "client.pem")
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]


def test_openssl_accepts_the_chain_for_each_host_and_mutual_tls(certs: Path) -> None:
    server = server_context(certs / "node-1.pem", certs / "node-1-key.pem", certs / "ca.pem")
    # A peer: verifies node 1's certificate and presents its own.
    peer = client_context(certs / "ca.pem", certs / "node-2.pem", certs / "node-2-key.pem")
    for host in ("127.0.0.1", "localhost", "node.example"):
        handshake(server, peer, host)
    # kvctl's client certificate is good for a server that demands one.
    handshake(server, client_context(certs / "ca.pem", *client_files(certs)), "localhost")


def client_files(certs: Path) -> tuple[Path, Path]:
    return certs / "client.pem", certs / "client-key.pem"


def test_a_host_not_named_fails_verification(certs: Path) -> None:
    server = server_context(certs / "node-1.pem", certs / "node-1-key.pem")
    with pytest.raises(ssl.SSLCertVerificationError, match=r"127\.0\.0\.2|match"):
        handshake(server, client_context(certs / "ca.pem"), "127.0.0.2")


def test_client_certificate_cannot_serve(certs: Path) -> None:
    # Its usage is client authentication only: a client refuses it as a server's.
    server = server_context(*client_files(certs))
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server, client_context(certs / "ca.pem"), "localhost")


def test_existing_files_are_kept_unless_forced(certs: Path) -> None:
    before = (certs / "ca.pem").read_bytes()
    with pytest.raises(CertsError, match="exists"):
        create_cluster_certs(certs, 3)
    assert (certs / "ca.pem").read_bytes() == before
    create_cluster_certs(certs, 3, force=True)
    assert (certs / "ca.pem").read_bytes() != before


def test_more_nodes_can_be_issued_by_the_same_ca(certs: Path) -> None:
    cert, key = issue_node(load_authority(certs), certs, 4, ["10.0.0.4"])
    assert mode(key) == 0o600
    leaf = load(cert)
    leaf.verify_directly_issued_by(load(certs / "ca.pem"))
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.4")]


@pytest.mark.parametrize(
    ("nodes", "hosts", "problem"),
    [
        (0, ["127.0.0.1"], "--nodes"),
        (1, [], "--host"),
        (1, ["bad host"], "neither an IP address nor a DNS name"),
        (1, [" "], "empty --host"),
    ],
)
def test_bad_requests_write_nothing(
    tmp_path: Path, nodes: int, hosts: list[str], problem: str
) -> None:
    with pytest.raises(CertsError, match=problem):
        create_cluster_certs(tmp_path / "out", nodes, hosts)
    assert not (tmp_path / "out").exists()


def test_load_authority_from_an_empty_directory_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(CertsError, match=r"ca\.pem does not exist"):
        load_authority(tmp_path)
