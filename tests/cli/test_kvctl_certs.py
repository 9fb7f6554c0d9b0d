"""`kvctl certs create`: the files a TLS cluster needs, from the command line."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from raftkv.cli import errors, kvctl


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = kvctl.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_create_writes_the_ca_nodes_and_client(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "tls"
    code, out, err = run(
        capsys, "certs", "create", "--dir", str(out_dir), "--nodes", "2", "--host", "10.1.2.3",
        "--host", "db.internal", "--json",
    )  # fmt: skip
    assert code == 0, err
    files = json.loads(out)
    assert files["ca"] == str(out_dir / "ca.pem")
    assert set(files["nodes"]) == {"1", "2"}
    assert files["client"]["key"] == str(out_dir / "client-key.pem")
    node = x509.load_pem_x509_certificate((out_dir / "node-2.pem").read_bytes())
    names = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n) for n in names.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    assert names.get_values_for_type(x509.DNSName) == ["db.internal"]
    for key in ("ca-key.pem", "node-1-key.pem", "node-2-key.pem", "client-key.pem"):
        assert stat.S_IMODE(os.stat(out_dir / key).st_mode) == 0o600


def test_default_hosts_and_text_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "certs", "create", "--dir", str(tmp_path / "c"))
    assert code == 0, err
    assert "node 3:" in out and "keep it off the nodes" in out
    node = x509.load_pem_x509_certificate((tmp_path / "c" / "node-1.pem").read_bytes())
    names = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(n) for n in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_refuses_to_overwrite_and_bad_hosts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "certs", "create", "--dir", str(tmp_path), "--nodes", "1")[0] == 0
    code, _, err = run(capsys, "certs", "create", "--dir", str(tmp_path), "--nodes", "1")
    assert code == errors.EXIT_USAGE
    assert "exists; remove it or give --force" in err and "Traceback" not in err
    code, _, err = run(capsys, "certs", "create", "--dir", str(tmp_path / "x"), "--host", "a b")
    assert code == errors.EXIT_USAGE
    assert "neither an IP address nor a DNS name" in err


def test_an_unusable_cacert_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys,
        "--endpoints",
        "https://127.0.0.1:1",
        "--cacert",
        str(tmp_path / "missing.pem"),
        "get",
        "k",
    )
    assert code == errors.EXIT_USAGE
    assert "TLS: CA file" in err and "does not exist" in err
