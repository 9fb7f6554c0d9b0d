"""The shape every built-in load generator shares: ``concurrency`` requests always in
flight, each replaced by the next as soon as it is answered (a closed loop, no think
time), until a deadline; the latency of every answered request is kept.

Requests are chosen by a ``Chooser`` so a run and its preload differ only in the keys
they pick. Subclasses (one per protocol) do the I/O.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from .key_space import bench_value, raftkv_key
from .workloads import Workload


@dataclass(slots=True)
class Request:
    read: bool
    key: bytes
    value: bytes


Chooser = Callable[[], Request | None]


def random_chooser(workload: Workload, seed: int) -> Chooser:
    """Random keys out of the workload's key space, reads with its read fraction."""
    rng = random.Random(seed)
    keys = [raftkv_key(i).encode() for i in range(workload.keys)]
    value = bench_value(workload.value_size)
    read_fraction = workload.read_fraction

    def choose() -> Request:
        read = read_fraction > 0 and rng.random() < read_fraction
        return Request(read, keys[rng.randrange(len(keys))], value)

    return choose


def sequential_chooser(first: int, stop: int, value_size: int) -> Chooser:
    """Writes keys ``first``..``stop - 1`` once each, then nothing: a preload."""
    position = first
    value = b"p" * value_size

    def choose() -> Request | None:
        nonlocal position
        if position >= stop:
            return None
        key = raftkv_key(position).encode()
        position += 1
        return Request(False, key, value)

    return choose
