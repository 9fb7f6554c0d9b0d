"""The etcd self-check's plumbing, with stand-ins for wrk and etcd (the real run is
``python -m raftkv.kvbench.selfcheck_etcd`` on a machine that has both)."""

from __future__ import annotations

import json
from pathlib import Path

import etcd_fakes
import pytest
from raftkv.kvbench import selfcheck_etcd

RESULT = {
    "requests": 30, "ok": 30, "non2xx": 0, "errors": 0, "errors_connect": 0,
    "errors_read": 0, "errors_write": 0, "errors_timeout": 0, "errors_status": 0,
    "duration_us": 1000000, "bytes": 900, "p50_us": 100, "p90_us": 200, "p99_us": 300,
    "p999_us": 400, "max_us": 500, "mean_us": 120.0, "first_error": None,
}  # fmt: skip


def fake_wrk(directory: Path, output: str) -> Path:
    """A ``wrk`` that prints ``output`` and records its arguments and script."""
    directory.mkdir(parents=True, exist_ok=True)
    wrk = directory / "wrk"
    wrk.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> "{directory}/args"\n'
        'while [ "$1" != "-s" ]; do shift; done\n'
        f'cat "$2" > "{directory}/script.lua"\n'
        f"cat <<'EOF'\nRunning 1s test\n{output}\nEOF\n"
    )
    wrk.chmod(0o755)
    return wrk


def test_run_wrk_returns_the_result_line(tmp_path: Path) -> None:
    wrk = fake_wrk(tmp_path, "KVBENCH_RESULT " + json.dumps(RESULT))
    got = selfcheck_etcd.run_wrk(str(wrk), "http://127.0.0.1:1", "-- s", seconds=2, connections=4)
    assert got == RESULT
    assert (tmp_path / "args").read_text().split()[:3] == ["-t1", "-c4", "-d2s"]
    assert (tmp_path / "script.lua").read_text() == "-- s"


def test_run_wrk_without_a_result_line_fails(tmp_path: Path) -> None:
    wrk = fake_wrk(tmp_path, "unable to connect to 127.0.0.1:1")
    with pytest.raises(RuntimeError, match="without a result line"):
        selfcheck_etcd.run_wrk(str(wrk), "http://127.0.0.1:1", "", seconds=1, connections=1)


def test_missing_tools_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert selfcheck_etcd.main(["--wrk-binary", str(tmp_path / "no-wrk")]) == 2
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("KVBENCH_ETCD", raising=False)
    wrk = fake_wrk(tmp_path / "bin", "")
    assert selfcheck_etcd.main(["--wrk-binary", str(wrk)]) == 2


def test_a_cluster_where_nothing_landed_fails_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("KVBENCH_FAKE_MODE", raising=False)
    etcd = etcd_fakes.install(tmp_path / "etcd-bin")
    wrk = fake_wrk(tmp_path / "wrk-bin", "KVBENCH_RESULT " + json.dumps(RESULT))
    code = selfcheck_etcd.main(
        ["--seconds", "1", "--etcd-binary", str(etcd), "--wrk-binary", str(wrk)]
    )
    out, err = capsys.readouterr()
    # Every phase ran against the leader; the stand-in etcd stores nothing, which the
    # check must notice.
    assert len((tmp_path / "wrk-bin" / "args").read_text().splitlines()) == 3
    assert "writes: 30/s ok" in out
    assert "no key was written" in err
    assert code == 1 and "selfcheck: FAILED" in out
