"""Where the HTTP workers of a node keep their metrics, so that any one of them can
serve the sum over all of them.

prometheus-client's multiprocess mode: each worker writes its counters and histograms
to memory-mapped files named by its pid in one directory, given to it in the
environment variable below, and the worker serving ``/metrics`` reads and adds up every
file there. Files of a worker that died stay, so its counts still add in after a
restart. The directory is emptied when the node starts: counters restart with the node,
as they do when any process restarts.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Final

__all__ = ["MULTIPROCESS_DIR_ENV", "prepare_worker_metrics_dir"]

MULTIPROCESS_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
_DIRECTORY_NAME: Final = "worker-metrics"


def prepare_worker_metrics_dir(data_dir: Path) -> Path:
    """An empty metrics directory inside the node's data directory."""
    directory = Path(data_dir) / _DIRECTORY_NAME
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700, parents=True)
    return directory
