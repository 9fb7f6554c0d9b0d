"""What a benchmark run asks of the store: the mix of reads and writes, their consistency,
the value size and the key space. The same description drives every target (raftkv over
HTTP or its native protocol, etcd through its JSON gateway) so that ratios compare like
with like."""

from __future__ import annotations

from dataclasses import dataclass

# name -> (fraction of reads, reads are stale/serializable)
WORKLOADS: dict[str, tuple[float, bool]] = {
    "write": (0.0, False),
    "read": (1.0, False),
    "read-stale": (1.0, True),
    "mixed-90-10": (0.9, False),
    "mixed-50-50": (0.5, False),
}
VALUE_SIZES = (100, 1024, 16384)


@dataclass(frozen=True, slots=True)
class Workload:
    """One kind of load: ``read_fraction`` of the requests read a random key (stale
    reads when ``stale``), the rest write ``value_size`` bytes to a random key out of
    ``keys``."""

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
        return WORKLOADS[self.name][0]

    @property
    def stale(self) -> bool:
        return WORKLOADS[self.name][1]

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
