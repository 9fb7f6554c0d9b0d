"""The bank workload: money moved between accounts by transactions, and a total that
must never change.

Accounts are keys ``bank/NN`` holding a balance in decimal, all written by one
transaction at the start. *Transferers* read two accounts and move an amount from one to
the other with a transaction that holds only if neither account changed since it was
read (compares on both ``mod_revision``s), so a transfer is all or nothing, whatever
the faults. *Readers* list every account with a linearizable read (a list is served
from one applied state). The check (``check_bank``): every successful read sees every
account and the initial total, and so does the final read once the faults are healed.

``split_transfers`` is a bug put in on purpose, to show the check can fail: the debit
and the credit go as two separate writes, so a read between them sees money missing.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from raftkv.testing.cluster import LocalCluster

__all__ = ["BankOptions", "BankRead", "BankResult", "BankWorkload", "check_bank"]

PREFIX = "bank/"


@dataclass(frozen=True, slots=True)
class BankOptions:
    accounts: int = 5
    initial_balance: int = 100
    transferers: int = 3
    readers: int = 2
    op_timeout_s: float = 2.5
    seed: int = 0
    split_transfers: bool = False
    """The injected bug: debit and credit as two separate writes."""


@dataclass(frozen=True, slots=True)
class BankRead:
    """One successful read of every account: when it ended, what it saw."""

    at: float
    balances: dict[str, int]


@dataclass(slots=True)
class BankResult:
    reads: list[BankRead]
    final: BankRead | None
    transfers: dict[str, int]
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def account(number: int) -> str:
    return f"{PREFIX}{number:02d}"


def _unchanged(key: str, mod_revision: int) -> dict[str, Any]:
    return {"key": key, "target": "mod_revision", "op": "==", "value": mod_revision}


def check_bank(reads: list[BankRead], final: BankRead | None, options: BankOptions) -> list[str]:
    """What is wrong with the reads: a read missing an account or seeing one it should
    not, a total other than the initial one, a negative balance, no final read."""
    expected_accounts = {account(n) for n in range(options.accounts)}
    expected_total = options.accounts * options.initial_balance
    violations: list[str] = []
    for what, read in [*(("read", r) for r in reads), ("final read", final)]:
        if read is None:
            violations.append("no final read: the accounts could not be read after healing")
            continue
        seen = set(read.balances)
        if seen != expected_accounts:
            violations.append(
                f"{what} at {read.at:.3f}s saw accounts {sorted(seen)}, "
                f"not {sorted(expected_accounts)}"
            )
            continue
        total = sum(read.balances.values())
        if total != expected_total:
            violations.append(
                f"{what} at {read.at:.3f}s: total {total}, not {expected_total} ({read.balances})"
            )
        negative = sorted(k for k, v in read.balances.items() if v < 0)
        if negative:
            violations.append(f"{what} at {read.at:.3f}s: negative balances in {negative}")
    return violations


class BankWorkload:
    """The transferers and readers, on the nodes ``pick_node`` chooses."""

    def __init__(
        self,
        cluster: LocalCluster,
        options: BankOptions,
        pick_node: Callable[[random.Random], int | None],
    ) -> None:
        self.cluster = cluster
        self.options = options
        self._pick_node = pick_node
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._started = 0.0
        self.reads: list[BankRead] = []
        self.transfers: dict[str, int] = {"ok": 0, "refused": 0, "unknown": 0, "skipped": 0}

    # -- running -------------------------------------------------------------------------

    def start(self) -> None:
        """Open the accounts (one transaction, retried until it is answered), then start
        the transferers and the readers."""
        self._started = time.monotonic()
        options = self.options
        doc = {
            "compare": [{"key": account(0), "target": "exists", "value": False}],
            "success": [
                {"put": {"key": account(n), "value": str(options.initial_balance)}}
                for n in range(options.accounts)
            ],
        }
        # Tagged, so that a retry of an answer that was lost cannot open them twice.
        headers = {
            "X-Raftkv-Client-Id": str(1_000_000 + options.seed),
            "X-Raftkv-Seq": "1",
            "X-Raftkv-First-Incomplete": "1",
        }
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=options.op_timeout_s) as client:
            while True:
                leader = self.cluster.wait_ready(timeout=30)
                try:
                    response = client.post(
                        f"{self.cluster.url(leader)}/txn", json=doc, headers=headers
                    )
                    if response.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("the bank's accounts could not be opened")
                time.sleep(0.2)
        for n in range(options.transferers):
            self._spawn(self._transferer, random.Random(f"{options.seed}-transfer-{n}"))
        for n in range(options.readers):
            self._spawn(self._reader, random.Random(f"{options.seed}-read-{n}"))

    def _spawn(self, target: Callable[[random.Random], None], rng: random.Random) -> None:
        thread = threading.Thread(target=target, args=(rng,), daemon=True)
        self._threads.append(thread)
        thread.start()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=timeout)

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.transfers[outcome] += 1

    def _read_all(self, client: httpx.Client, node: int) -> dict[str, int] | None:
        response = client.get(
            f"{self.cluster.url(node)}/kv",
            params={"prefix": PREFIX, "limit": str(self.options.accounts + 10)},
        )
        if response.status_code != 200:
            return None
        return {item["key"]: int(item["value"]) for item in response.json()["items"]}

    def _reader(self, rng: random.Random) -> None:
        with httpx.Client(timeout=self.options.op_timeout_s) as client:
            while not self._stop.is_set():
                node = self._pick_node(rng)
                if node is None:
                    time.sleep(0.1)
                    continue
                try:
                    balances = self._read_all(client, node)
                except (httpx.HTTPError, ValueError, KeyError):
                    balances = None
                if balances is not None:
                    read = BankRead(time.monotonic() - self._started, balances)
                    with self._lock:
                        self.reads.append(read)
                time.sleep(rng.uniform(0.0, 0.02))

    def _transferer(self, rng: random.Random) -> None:
        with httpx.Client(timeout=self.options.op_timeout_s) as client:
            while not self._stop.is_set():
                node = self._pick_node(rng)
                if node is None:
                    time.sleep(0.1)
                    continue
                try:
                    self._transfer(client, node, rng)
                except (httpx.HTTPError, ValueError, KeyError):
                    self._count("unknown")

    def _transfer(self, client: httpx.Client, node: int, rng: random.Random) -> None:
        source, target = rng.sample(range(self.options.accounts), 2)
        url = self.cluster.url(node)
        read = client.post(
            f"{url}/txn",
            json={
                "success": [{"get": {"key": account(source)}}, {"get": {"key": account(target)}}]
            },
        )
        if read.status_code != 200:
            self._count("unknown")
            return
        source_kv, target_kv = (r["get"]["kv"] for r in read.json()["results"])
        balance = int(source_kv["value"])
        if balance == 0:
            self._count("skipped")
            return
        amount = rng.randint(1, balance)
        debit = {"key": account(source), "value": str(balance - amount)}
        credit = {"key": account(target), "value": str(int(target_kv["value"]) + amount)}
        if self.options.split_transfers:
            self._split_transfer(client, url, debit, credit)
            return
        answer = client.post(
            f"{url}/txn",
            json={
                "compare": [
                    {
                        "key": debit["key"],
                        "target": "mod_revision",
                        "value": source_kv["mod_revision"],
                    },
                    {
                        "key": credit["key"],
                        "target": "mod_revision",
                        "value": target_kv["mod_revision"],
                    },
                ],
                "success": [{"put": debit}, {"put": credit}],
            },
        )
        if answer.status_code != 200:
            self._count("unknown")
        else:
            self._count("ok" if answer.json()["succeeded"] else "refused")

    def _split_transfer(
        self, client: httpx.Client, url: str, debit: dict[str, Any], credit: dict[str, Any]
    ) -> None:
        for write in (debit, credit):
            response = client.post(f"{url}/kv/{write['key']}", json={"value": write["value"]})
            if response.status_code != 200:
                self._count("unknown")
                return
            time.sleep(0.005)  # a debit that is visible for a moment
        self._count("ok")

    # -- the end -------------------------------------------------------------------------

    def finish(self) -> BankResult:
        """The final read (linearizable, retried while the healed cluster settles) and
        the check of every read."""
        final: BankRead | None = None
        deadline = time.monotonic() + 60
        with httpx.Client(timeout=10) as client:
            while final is None and time.monotonic() < deadline:
                try:
                    leader = self.cluster.wait_ready(timeout=30)
                    balances = self._read_all(client, leader)
                except (httpx.HTTPError, ValueError, KeyError, TimeoutError):
                    balances = None
                if balances is not None:
                    final = BankRead(time.monotonic() - self._started, balances)
                else:
                    time.sleep(0.5)
        with self._lock:
            reads = list(self.reads)
            transfers = dict(self.transfers)
        result = BankResult(reads, final, transfers)
        result.violations = check_bank(reads, final, self.options)
        return result
