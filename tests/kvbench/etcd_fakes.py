"""A stand-in for the etcd binary, so ``EtcdCluster`` runs real member processes where etcd
is not installed. Run as a script with the flags ``member_argv`` builds, it serves the two
gateway calls the cluster makes (``/v3/maintenance/status`` and ``/v3/kv/range``) on its
client URL and names ``m1`` leader.

Environment knobs (read by each fake member):
  KVBENCH_FAKE_MODE       ``serve`` (default), ``exit`` (fail at once, as a bad flag
                          would), ``mute`` (run but never answer)
  KVBENCH_FAKE_TERM_FILE  a file holding the Raft term to report (default 2)
  KVBENCH_FAKE_ARGV_DIR   a directory where each member writes its argv as JSON
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def install(directory: Path) -> Path:
    """An executable named ``etcd`` in ``directory`` that runs this fake."""
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / "etcd"
    binary.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" "$@"\n')
    binary.chmod(0o755)
    return binary


def _flags(argv: list[str]) -> dict[str, str]:
    return dict(zip(argv[0::2], argv[1::2], strict=False))


def _member_id(name: str) -> int:
    return 1000 + int(name.lstrip("m"))


def main() -> None:
    flags = _flags(sys.argv[1:])
    name = flags["--name"]
    mode = os.environ.get("KVBENCH_FAKE_MODE", "serve")
    argv_dir = os.environ.get("KVBENCH_FAKE_ARGV_DIR")
    if argv_dir:
        Path(argv_dir, f"{name}.json").write_text(json.dumps(sys.argv[1:]))
    print(f"fake etcd {name} starting", flush=True)
    if mode == "exit":
        print(f"fake etcd {name}: flag provided but not defined: -bogus", flush=True)
        raise SystemExit(1)
    if mode == "mute":
        while True:
            time.sleep(60)

    first = flags["--initial-cluster"].split(",")[0].split("=")[0]
    term_file = os.environ.get("KVBENCH_FAKE_TERM_FILE")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            term = Path(term_file).read_text().strip() if term_file else "2"
            header = {"cluster_id": "7", "member_id": str(_member_id(name)), "raft_term": term}
            if self.path == "/v3/maintenance/status":
                doc = {
                    "header": header,
                    "version": "3.4.23",
                    "leader": str(_member_id(first)),
                    "raftIndex": "9",
                    "raftTerm": term,
                }
            elif self.path == "/v3/kv/range":
                doc = {"header": header}
            else:
                self.send_error(404)
                return
            body = json.dumps(doc).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    url = urllib.parse.urlsplit(flags["--listen-client-urls"])
    assert url.hostname is not None and url.port is not None
    ThreadingHTTPServer((url.hostname, url.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
