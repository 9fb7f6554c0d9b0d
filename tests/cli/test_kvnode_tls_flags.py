"""kvnode's TLS flags: the peer trio all or none, HTTPS cert and key together, files
checked at start, and what reaches the node's configuration and its workers."""

from __future__ import annotations

from pathlib import Path

import pytest
from kvnode_configs import cluster_file, config_for
from raftkv.cli import kvnode

from raftkv.node.main import worker_arguments
from raftkv.node.node_config import ConfigError
from raftkv.wire.certificates import create_cluster_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    create_cluster_certs(directory, 2)
    return directory


def peer_flags(certs: Path, node: int = 1) -> list[str]:
    return [
        "--peer-cert-file",
        str(certs / f"node-{node}.pem"),
        "--peer-key-file",
        str(certs / f"node-{node}-key.pem"),
        "--peer-trusted-ca-file",
        str(certs / "ca.pem"),
    ]


def https_flags(certs: Path, node: int = 1) -> list[str]:
    return [
        "--cert-file",
        str(certs / f"node-{node}.pem"),
        "--key-file",
        str(certs / f"node-{node}-key.pem"),
    ]


def test_tls_is_off_without_flags(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    assert config.peer_tls is None and config.client_tls is None
    assert "--cert-file" not in worker_arguments(config)


def test_all_three_peer_flags_turn_mutual_tls_on(tmp_path: Path, certs: Path) -> None:
    config = config_for(tmp_path, *peer_flags(certs))
    assert config.peer_tls is not None
    assert config.peer_tls.cert_file == certs / "node-1.pem"
    assert config.peer_tls.trusted_ca_file == certs / "ca.pem"
    assert config.client_tls is None


@pytest.mark.parametrize("left_out", [0, 2, 4])
def test_a_missing_peer_flag_is_a_clear_error(tmp_path: Path, certs: Path, left_out: int) -> None:
    flags = peer_flags(certs)
    missing = flags[left_out]
    del flags[left_out : left_out + 2]
    with pytest.raises(ConfigError, match=rf"peer TLS needs all of .* without {missing}"):
        config_for(tmp_path, *flags)


def test_https_flags_reach_the_workers(tmp_path: Path, certs: Path) -> None:
    config = config_for(tmp_path, *peer_flags(certs), *https_flags(certs))
    assert config.client_tls is not None and config.client_tls.trusted_ca_file is None
    arguments = worker_arguments(config)
    assert arguments[arguments.index("--cert-file") + 1] == str(certs / "node-1.pem")
    assert arguments[arguments.index("--key-file") + 1] == str(certs / "node-1-key.pem")
    # Other nodes' HTTPS is verified with the cluster's CA; no client certificate needed.
    assert arguments[arguments.index("--outbound-ca-file") + 1] == str(certs / "ca.pem")
    assert "--trusted-ca-file" not in arguments


def test_trusted_ca_file_requires_client_certificates(tmp_path: Path, certs: Path) -> None:
    ca = str(certs / "ca.pem")
    config = config_for(tmp_path, *https_flags(certs), "--trusted-ca-file", ca)
    assert config.client_tls is not None and config.client_tls.trusted_ca_file == certs / "ca.pem"
    arguments = worker_arguments(config)
    assert arguments[arguments.index("--trusted-ca-file") + 1] == ca
    assert arguments[arguments.index("--outbound-ca-file") + 1] == ca


def test_cert_without_key_is_a_clear_error(tmp_path: Path, certs: Path) -> None:
    with pytest.raises(ConfigError, match="--cert-file given without --key-file"):
        config_for(tmp_path, "--cert-file", str(certs / "node-1.pem"))
    with pytest.raises(ConfigError, match="--key-file given without --cert-file"):
        config_for(tmp_path, "--key-file", str(certs / "node-1-key.pem"))


def test_trusted_ca_without_https_is_a_clear_error(tmp_path: Path, certs: Path) -> None:
    with pytest.raises(ConfigError, match=r"--trusted-ca-file .* needs --cert-file"):
        config_for(tmp_path, "--trusted-ca-file", str(certs / "ca.pem"))


def test_a_missing_file_is_named(tmp_path: Path, certs: Path) -> None:
    flags = peer_flags(certs)
    flags[1] = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match=r"certificate file .*nope\.pem.* does not exist"):
        config_for(tmp_path, *flags)


def test_a_key_of_another_certificate_is_refused(tmp_path: Path, certs: Path) -> None:
    flags = https_flags(certs)
    flags[3] = str(certs / "node-2-key.pem")
    with pytest.raises(ConfigError, match="the key does not belong to the certificate"):
        config_for(tmp_path, *flags)


def test_a_file_that_is_not_pem_is_refused(tmp_path: Path, certs: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    flags = peer_flags(certs)
    flags[5] = str(garbage)
    with pytest.raises(ConfigError, match=r"cannot use CA file .*garbage\.pem"):
        config_for(tmp_path, *flags)


def test_kvnode_exits_2_with_one_line(
    tmp_path: Path, certs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = kvnode.main(
        [
            "--cluster",
            str(cluster_file(tmp_path)),
            "--data-dir",
            str(tmp_path / "d"),
            "--peer-cert-file",
            str(certs / "node-1.pem"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kvnode: peer TLS needs all of")
    assert "Traceback" not in err
    assert not (tmp_path / "d").exists()
