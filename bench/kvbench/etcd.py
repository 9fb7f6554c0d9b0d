"""The etcd baseline: a local etcd cluster, the bodies of its JSON gateway, and a wrk script
that sends kvbench's workload through that gateway.

The cluster is bootstrapped statically on 127.0.0.1 with etcd's defaults left alone: fsync
on, no tuning of heartbeats or snapshots. Only addresses, data directories and logging are
set, so the comparison is against etcd as its users run it.

The gateway (etcd 3.4's ``/v3/...`` paths, also served by 3.5) speaks the proto3 JSON
mapping: keys and values are base64 strings, 64-bit numbers are strings.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from raftkv.testing.cluster import free_ports

from .key_space import KEY_FORMAT, WRK_DONE_LUA, bench_value, lua_string

ENV_BINARY = "KVBENCH_ETCD"

PUT_PATH = "/v3/kv/put"
RANGE_PATH = "/v3/kv/range"
STATUS_PATH = "/v3/maintenance/status"

INSTALL_HINT = f"""\
etcd is needed for `--compare etcd` but was not found.
Install it:
  Debian/Ubuntu:  apt-get install etcd-server
  elsewhere:      download a release tarball (etcd 3.4 or later) from
                  https://github.com/etcd-io/etcd/releases and unpack it
Then either put `etcd` on PATH, or pass --etcd-binary PATH, or set {ENV_BINARY}=PATH."""


class EtcdError(RuntimeError):
    """etcd answered badly, or not at all."""


class EtcdNotInstalledError(EtcdError):
    pass


class EtcdStartError(EtcdError):
    pass


def find_etcd(binary: str | None = None) -> str:
    """The etcd binary to run: ``binary`` if given, else ``$KVBENCH_ETCD``, else ``etcd``
    on PATH. Raises ``EtcdNotInstalledError`` with install instructions."""
    wanted = binary or os.environ.get(ENV_BINARY)
    if wanted:
        # An explicit choice must exist: falling back to another etcd would measure
        # something the user did not ask for.
        found = shutil.which(wanted)
        if found is None:
            raise EtcdNotInstalledError(f"{wanted}: no such executable.\n{INSTALL_HINT}")
        return found
    found = shutil.which("etcd")
    if found is None:
        raise EtcdNotInstalledError(INSTALL_HINT)
    return found


# -- gateway bodies ------------------------------------------------------------------------

# Not in the base64 alphabet, so it cannot occur in an encoded key.
_KEY_MARK = "@KEY@"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _compact(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


def _put_json(key_b64: str, value_b64: str) -> bytes:
    return _compact({"key": key_b64, "value": value_b64})


def _range_json(key_b64: str, serializable: bool) -> bytes:
    doc: dict[str, Any] = {"key": key_b64}
    if serializable:
        # Linearizable is the proto3 default (false), so it is simply left out.
        doc["serializable"] = True
    return _compact(doc)


def put_body(key: bytes, value: bytes) -> bytes:
    """The body of ``POST /v3/kv/put`` that writes ``value`` at ``key``."""
    return _put_json(_b64(key), _b64(value))


def range_body(key: bytes, *, serializable: bool) -> bytes:
    """The body of ``POST /v3/kv/range`` that reads ``key``: serializable (served by the
    member from its own state) or linearizable (through a ReadIndex round)."""
    return _range_json(_b64(key), serializable)


def _split(body: bytes) -> tuple[str, str]:
    prefix, mark, suffix = body.decode("ascii").partition(_KEY_MARK)
    if not mark:
        raise AssertionError("body template lost its key mark")
    return prefix, suffix


def put_template(value: bytes) -> tuple[str, str]:
    """``(prefix, suffix)`` with ``prefix + base64(key) + suffix == put_body(key, value)``:
    what the wrk script wraps around each key, so its bodies are the Python ones."""
    return _split(_put_json(_KEY_MARK, _b64(value)))


def range_template(*, serializable: bool) -> tuple[str, str]:
    """Like ``put_template``, for ``range_body(key, serializable=serializable)``."""
    return _split(_range_json(_KEY_MARK, serializable))


def post_json(url: str, path: str, body: bytes, *, timeout: float = 5.0) -> dict[str, Any]:
    """POST ``body`` to ``url + path`` and return the decoded JSON object.

    http.client rather than a higher-level client: it never routes through a proxy from
    the environment, and a loopback benchmark must talk to the member directly."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"not a client URL with host and port: {url}")
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise EtcdError(f"POST {url}{path}: HTTP {response.status}: {data[:300]!r}")
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise EtcdError(f"POST {url}{path}: not a JSON object: {data[:300]!r}")
    return doc


@dataclass(frozen=True, slots=True)
class MemberStatus:
    member_id: int
    leader: int  # 0 while the member knows no leader
    raft_term: int
    raft_index: int


def parse_status(doc: dict[str, Any]) -> MemberStatus:
    """Read a ``/v3/maintenance/status`` answer (uint64 fields arrive as JSON strings;
    a field at its zero value is left out)."""
    header = doc.get("header", {})
    return MemberStatus(
        member_id=int(header.get("member_id", 0)),
        leader=int(doc.get("leader", 0)),
        raft_term=int(doc.get("raftTerm", 0)),
        raft_index=int(doc.get("raftIndex", 0)),
    )


def member_status(url: str, *, timeout: float = 2.0) -> MemberStatus:
    return parse_status(post_json(url, STATUS_PATH, b"{}", timeout=timeout))


# -- the cluster ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


def plan_members(
    run_dir: Path, client_ports: Sequence[int], peer_ports: Sequence[int]
) -> list[EtcdMember]:
    """Members ``m1``..``mN`` with their ports, data directories and logs in ``run_dir``."""
    if len(client_ports) != len(peer_ports) or not client_ports:
        raise ValueError("one client port and one peer port per member, at least one member")
    return [
        EtcdMember(
            name=f"m{i + 1}",
            client_port=client,
            peer_port=peer,
            data_dir=run_dir / f"m{i + 1}.etcd",
            log_path=run_dir / f"m{i + 1}.log",
        )
        for i, (client, peer) in enumerate(zip(client_ports, peer_ports, strict=True))
    ]


def member_argv(
    binary: str, member: EtcdMember, members: Sequence[EtcdMember], *, token: str
) -> list[str]:
    """The command line of one member of a statically bootstrapped cluster.

    Nothing that changes durability or timing is passed: fsync stays on (no
    ``--unsafe-no-fsync``), heartbeat, election timeout and snapshot count keep etcd's
    defaults. The JSON gateway is on by default in 3.4 and 3.5."""
    return [
        binary,
        "--name", member.name,
        "--data-dir", str(member.data_dir),
        "--listen-client-urls", member.client_url,
        "--advertise-client-urls", member.client_url,
        "--listen-peer-urls", member.peer_url,
        "--initial-advertise-peer-urls", member.peer_url,
        "--initial-cluster", ",".join(f"{m.name}={m.peer_url}" for m in members),
        "--initial-cluster-state", "new",
        # A token of its own per cluster: a member of another cluster on this host that
        # happens to reach one of our peer ports is refused instead of joining.
        "--initial-cluster-token", token,
        # Logs go to our file whatever the service manager (the default is journald
        # when etcd runs under systemd).
        "--logger", "zap",
        "--log-outputs", "stderr",
    ]  # fmt: skip


def _member_env() -> dict[str, str]:
    # etcd reads every flag from ETCD_* variables too; one left in the environment (say
    # ETCD_DATA_DIR) would change or break the members, so none is passed on.
    return {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 8192))
            text = handle.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


class EtcdCluster:
    """``size`` etcd members on loopback, started by ``start()`` (or ``with``) and stopped
    by ``stop()``. Each start makes a fresh run directory under ``base_dir`` holding the
    members' data directories and logs (``m1.log``...); nothing is deleted on stop, so
    the logs stay for a look after a bad run."""

    def __init__(self, base_dir: Path, size: int = 3, *, binary: str | None = None) -> None:
        if size < 1:
            raise ValueError(f"a cluster needs at least one member, not {size}")
        # Resolved now, so a missing etcd is reported before anything else happens.
        self.binary = find_etcd(binary)
        self.base_dir = Path(base_dir)
        self.size = size
        self.run_dir: Path | None = None
        self._members: list[EtcdMember] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []
        self._start_term = 0

    @property
    def members(self) -> tuple[EtcdMember, ...]:
        return tuple(self._members)

    def start(self, timeout: float = 30.0) -> None:
        """Launch the members and wait until every one answers its gateway and they all
        name the same leader. On failure the members are stopped and ``EtcdStartError``
        carries the tail of each member's log."""
        if self._processes:
            raise RuntimeError("the cluster is already running")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = Path(tempfile.mkdtemp(prefix="etcd-", dir=self.base_dir))
        ports = free_ports(2 * self.size)
        self._members = plan_members(self.run_dir, ports[: self.size], ports[self.size :])
        token = f"kvbench-{self.run_dir.name}"
        env = _member_env()
        try:
            for member in self._members:
                log = member.log_path.open("wb")
                self._logs.append(log)
                self._processes.append(
                    subprocess.Popen(
                        member_argv(self.binary, member, self._members, token=token),
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        # Its own session: a Ctrl-C at the terminal reaches kvbench only,
                        # which then stops the members in order.
                        start_new_session=True,
                    )
                )
            self._start_term = self._wait_ready(timeout)
        except Exception as exc:
            self.stop()
            raise EtcdStartError(f"etcd cluster did not start: {exc}\n{self._tails()}") from exc
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        last_problem = "no member answered yet"
        while time.monotonic() < deadline:
            for member, process in zip(self._members, self._processes, strict=True):
                if process.poll() is not None:
                    raise EtcdStartError(f"member {member.name} exited with {process.returncode}")
            try:
                statuses = [member_status(m.client_url, timeout=1.0) for m in self._members]
                ids = {s.member_id for s in statuses}
                leaders = {s.leader for s in statuses}
                if len(leaders) == 1 and leaders <= ids:
                    # A linearizable read needs the leader's ReadIndex round: the cluster
                    # can serve requests, not only elect.
                    probe = range_body(b"kvbench-ready", serializable=False)
                    post_json(self._members[0].client_url, RANGE_PATH, probe, timeout=2.0)
                    return max(s.raft_term for s in statuses)
                last_problem = f"no agreed leader yet: {sorted(leaders)}"
            except (OSError, EtcdError, ValueError) as exc:
                last_problem = f"not every member answers: {exc}"
            time.sleep(0.1)
        raise TimeoutError(f"not ready after {timeout}s: {last_problem}")

    def _tails(self) -> str:
        return "\n".join(
            f"--- {m.name} ({m.log_path}):\n{_log_tail(m.log_path)}" for m in self._members
        )

    def _require_members(self) -> list[EtcdMember]:
        if not self._members:
            raise RuntimeError("the cluster was never started")
        return self._members

    def pids(self) -> list[int]:
        """The process ids of the members still running (for CPU accounting)."""
        return [p.pid for p in self._processes if p.poll() is None]

    def member_pids(self) -> dict[str, int]:
        """Member name -> process id, for the members still running (CPU accounting)."""
        # Processes start in member order; after a failed start there may be fewer.
        return {
            m.name: p.pid
            for m, p in zip(self._members, self._processes, strict=False)
            if p.poll() is None
        }

    def member_name(self, client_url: str) -> str:
        """The name of the member serving ``client_url`` (say, ``leader_url()``)."""
        for member in self._require_members():
            if member.client_url == client_url:
                return member.name
        raise EtcdError(f"{client_url} is no member's client URL")

    def client_urls(self) -> list[str]:
        return [m.client_url for m in self._require_members()]

    def statuses(self) -> dict[str, MemberStatus]:
        """The status of every member that answers, by client URL."""
        found: dict[str, MemberStatus] = {}
        for url in self.client_urls():
            try:
                found[url] = member_status(url)
            except (OSError, EtcdError, ValueError):
                continue
        return found

    def leader_url(self) -> str:
        """The client URL of the member the others name leader."""
        statuses = self.statuses()
        url_of = {s.member_id: url for url, s in statuses.items()}
        for status in statuses.values():
            if status.leader in url_of:
                return url_of[status.leader]
        raise EtcdError(f"no leader among the members that answer: {statuses}")

    def raft_term(self) -> int:
        """The highest Raft term any member reports."""
        statuses = self.statuses()
        if not statuses:
            raise EtcdError("no member answers")
        return max(s.raft_term for s in statuses.values())

    def leader_changes_since_start(self) -> int:
        """Terms begun since the cluster became ready. Every change of leader begins a
        term, and so does an election nobody wins: 0 means the leader never changed."""
        return self.raft_term() - self._start_term

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every member, SIGKILL those still running after ``grace`` seconds.
        Safe to call more than once."""
        for process in self._processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in self._processes:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self._logs:
            log.close()
        self._processes = []
        self._logs = []

    def __enter__(self) -> Self:
        if not self._processes:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- the wrk script ------------------------------------------------------------------------


# A base64 encoder: wrk's Lua (LuaJIT, Lua 5.1 language) has none built in. Plain
# arithmetic rather than LuaJIT's bit module, so any Lua 5.1 runs it.
_LUA_BASE64 = r"""
local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function b64char(n)
  return string.sub(B64, n + 1, n + 1)
end

local function base64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = string.byte(s, i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    out[#out + 1] = b64char(math.floor(n / 262144))
      .. b64char(math.floor(n / 4096) % 64)
      .. (b and b64char(math.floor(n / 64) % 64) or "=")
      .. (c and b64char(n % 64) or "=")
  end
  return table.concat(out)
end
"""


def etcd_wrk_script(
    *, keys: int, value_size: int, read_fraction: float, serializable: bool, seed: int
) -> str:
    """A wrk script that sends random-key puts and ranges to etcd's JSON gateway.

    Each request picks key ``i`` uniformly out of ``keys`` (named as ``raftkv_key(i)``),
    then a range with probability ``read_fraction`` (serializable or linearizable), else
    a put of ``bench_value(value_size)``. Bodies are built from the same templates as
    ``put_body``/``range_body``; each thread seeds its generator with ``seed`` plus its
    thread number. It reports through ``WRK_DONE_LUA``."""
    if keys < 1:
        raise ValueError(f"keys must be at least 1, not {keys}")
    if value_size < 0:
        raise ValueError(f"value_size cannot be negative: {value_size}")
    if not 0.0 <= read_fraction <= 1.0:
        raise ValueError(f"read_fraction must be within [0, 1], not {read_fraction}")
    put_prefix, put_suffix = put_template(bench_value(value_size))
    range_prefix, range_suffix = range_template(serializable=serializable)
    return f"""-- kvbench: etcd JSON gateway workload. Generated by kvbench; edit the generator.
local KEYS = {keys}
local READ_FRACTION = {float(read_fraction)!r}
local SEED = {seed}
local KEY_FORMAT = {lua_string(KEY_FORMAT)}
local PUT_PATH = {lua_string(PUT_PATH)}
local RANGE_PATH = {lua_string(RANGE_PATH)}
local PUT_PREFIX = {lua_string(put_prefix)}
local PUT_SUFFIX = {lua_string(put_suffix)}
local RANGE_PREFIX = {lua_string(range_prefix)}
local RANGE_SUFFIX = {lua_string(range_suffix)}
local HEADERS = {{["Content-Type"] = "application/json"}}
{_LUA_BASE64}
-- Encoded keys are cached: each is encoded once per thread, not once per request.
local encoded = {{}}

local function encoded_key(i)
  local k = encoded[i]
  if k == nil then
    k = base64(string.format(KEY_FORMAT, i))
    encoded[i] = k
  end
  return k
end

function init(args)
  -- kvbench_id is set by setup() in the reporting code below, before init runs.
  math.randomseed(SEED + (kvbench_id or 0))
end

function request()
  local i = math.random(0, KEYS - 1)
  if math.random() < READ_FRACTION then
    return wrk.format("POST", RANGE_PATH, HEADERS, RANGE_PREFIX .. encoded_key(i) .. RANGE_SUFFIX)
  end
  return wrk.format("POST", PUT_PATH, HEADERS, PUT_PREFIX .. encoded_key(i) .. PUT_SUFFIX)
end
{WRK_DONE_LUA}"""
