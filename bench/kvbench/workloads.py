"""What a benchmark run asks of the store: the mix of reads and writes, their consistency,
the value size and the key space. The same description drives every target (raftkv over
HTTP or its native protocol, etcd through its JSON gateway) so that ratios compare like
with like."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class Mix(NamedTuple):
    read_fraction: float
    stale: bool  # reads are stale (raftkv) / serializable (etcd)
    # Writes over HTTP are raftkv's raw ``PUT /kv/{key}`` rather than the documented
    # ``POST /kv/{key}`` with a JSON body. Only raftkv's HTTP API has two forms of a
    # write: native-protocol runs skip such a workload, and a baseline runs the one
    # ``BASELINE_OF_WORKLOAD`` names for it.
    raw_put: bool = False


WORKLOADS: dict[str, Mix] = {
    "write": Mix(0.0, False),
    "write-raw": Mix(0.0, False, raw_put=True),
    "read": Mix(1.0, False),
    "read-stale": Mix(1.0, True),
    "mixed-90-10": Mix(0.9, False),
    "mixed-50-50": Mix(0.5, False),
}
# What a target with a single form of write runs for an HTTP-only workload: the etcd
# baseline's put stands against both of raftkv's HTTP writes.
BASELINE_OF_WORKLOAD = {"write-raw": "write"}
# Shown by --help beside the names.
WORKLOAD_HELP = (
    'write: POST /kv/{key} with {"value": ...} (the documented write); write-raw: '
    "PUT /kv/{key} with the raw value (HTTP only; the baselines run their write for it); "
    "read, read-stale: GET, linearizable or ?consistency=stale; mixed-90-10, "
    "mixed-50-50: that share of reads, the rest writes"
)


def baseline_workload(name: str) -> str:
    """The workload a target without raftkv's HTTP write forms runs for ``name``."""
    return BASELINE_OF_WORKLOAD.get(name, name)


VALUE_SIZES = (100, 1024, 16384)


@dataclass(frozen=True, slots=True)
class Workload:
    """One kind of load: ``read_fraction`` of the requests read a random key (stale
    reads when ``stale``), the rest write ``value_size`` bytes to a random key out of
    ``keys`` (over HTTP as a raw ``PUT`` when ``raw_put``, else the documented JSON
    ``POST``)."""

    name: str
    value_size: int = 100
    keys: int = 100_000

    def __post_init__(self) -> None:
        if self.name not in WORKLOADS:
            raise ValueError(f"unknown workload {self.name!r}; one of {', '.join(WORKLOADS)}")
        if self.value_size < 1 or self.keys < 1:
            raise ValueError("value_size and keys must be positive")

    @property
    def read_fraction(self) -> float:
        return WORKLOADS[self.name].read_fraction

    @property
    def stale(self) -> bool:
        return WORKLOADS[self.name].stale

    @property
    def raw_put(self) -> bool:
        return WORKLOADS[self.name].raw_put

    @property
    def http_only(self) -> bool:
        """Whether only raftkv's HTTP API has this workload (see ``Mix.raw_put``)."""
        return self.raw_put

    @property
    def reads(self) -> bool:
        """Whether the keys must exist before the run (reads of missing keys would
        measure the not-found path)."""
        return self.read_fraction > 0

    @property
    def label(self) -> str:
        return f"{self.name}/{format_size(self.value_size)}"


def format_size(size: int) -> str:
    if size % 1024 == 0:
        return f"{size // 1024}KiB"
    return f"{size}B"


def parse_size(text: str) -> int:
    """``100``, ``100B``, ``1KiB``/``1k``, ``16KiB`` → bytes."""
    cleaned = text.strip().lower().removesuffix("b").removesuffix("i")
    factor = 1
    if cleaned.endswith("k"):
        cleaned, factor = cleaned[:-1], 1024
    try:
        size = int(cleaned) * factor
    except ValueError:
        raise ValueError(f"bad size {text!r}: expected e.g. 100, 1KiB, 16KiB") from None
    if size < 1:
        raise ValueError(f"bad size {text!r}: must be positive")
    return size
