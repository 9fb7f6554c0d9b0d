"""A benchmark plan (what kvbench runs: every combination of workload, value size and
concurrency, per target) and the progress reports while it runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .workloads import Workload, baseline_workload
from .wrk import find_wrk


@dataclass(slots=True)
class Plan:
    workloads: list[str] = field(default_factory=lambda: ["write"])
    value_sizes: list[int] = field(default_factory=lambda: [100])
    concurrency: list[int] = field(default_factory=lambda: [64])
    protocols: list[str] = field(default_factory=lambda: ["http"])
    compare: list[str] = field(default_factory=list)
    nodes: int = 3
    duration_s: float = 10.0
    warmup_s: float = 2.0
    keys: int = 100_000
    driver: str = "auto"  # wrk when installed, else the built-in generator
    generator_processes: int = 1
    native_depth: int = 16
    seed: int = 1
    endpoints: list[str] = field(default_factory=list)
    native_endpoints: list[str] = field(default_factory=list)
    node_args: list[str] = field(default_factory=list)

    def workload_list(self) -> list[Workload]:
        return [
            Workload(name, size, self.keys) for size in self.value_sizes for name in self.workloads
        ]

    def run_count(self) -> int:
        workloads = self.workload_list()
        # Native runs skip the HTTP-only workloads; etcd runs each workload it has once.
        native = [w for w in workloads if not w.http_only]
        etcd = {(baseline_workload(w.name), w.value_size) for w in workloads}
        runs = len(workloads) * self.protocols.count("http")
        runs += len(native) * self.protocols.count("native")
        runs += len(etcd) * self.compare.count("etcd")
        return runs * len(self.concurrency) + self.compare.count("pysyncobj") * len(
            self.concurrency
        )

    def http_driver(self) -> str:
        if self.driver == "auto":
            return "wrk" if find_wrk() else "python"
        return self.driver


class Progress:
    """Calls ``tick(label, fraction)`` about every half second while a run is going."""

    def __init__(self, tick: Callable[[str, float], None] | None = None) -> None:
        self._tick = tick

    @contextmanager
    def run(self, label: str, seconds: float) -> Iterator[None]:
        if self._tick is None:
            yield
            return
        tick = self._tick
        stop = threading.Event()
        started = time.monotonic()

        def loop() -> None:
            while not stop.wait(0.5):
                # Below 1.0 until the run really ends: 1.0 marks it done.
                tick(label, min(0.99, (time.monotonic() - started) / max(seconds, 0.1)))

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            tick(label, 1.0)
