"""Make the in-tree packages importable when the project is not installed.

The compiled modules are built in place (``setup.py build_ext --inplace``), next to
their sources.
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
try:
    import raftkv_ext  # noqa: F401
except ImportError:  # pragma: no cover - depends on how the suite is run
    sys.path.insert(0, _ROOT)
