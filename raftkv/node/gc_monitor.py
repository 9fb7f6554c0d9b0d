"""Report the garbage collector's pauses: a full collection walks every tracked object,
so with a large state it can hold the event loop long enough to miss heartbeats."""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

__all__ = ["GcPauseMonitor"]


class GcPauseMonitor:
    """Times every collection and logs one at least ``warn_after_s`` long. The longest
    pause is kept for status and metrics."""

    def __init__(self, logger: logging.Logger, warn_after_s: float = 0.05) -> None:
        self._logger = logger
        self._warn_after_s = warn_after_s
        self._started = 0.0
        self.collections = 0
        self.total_s = 0.0
        self.longest_s = 0.0

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        pause = time.perf_counter() - self._started
        self.collections += 1
        self.total_s += pause
        self.longest_s = max(self.longest_s, pause)
        if pause >= self._warn_after_s:
            self._logger.warning(
                "garbage collection of generation %d took %.0f ms (%d objects collected)",
                info.get("generation", -1),
                pause * 1000,
                info.get("collected", 0),
            )
