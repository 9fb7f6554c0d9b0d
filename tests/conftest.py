"""Hypothesis profiles: the fuzz tests run a modest number of examples by default (CI),
and many more when ``RAFTKV_FUZZ=long`` is set (see docs/testing.md).

The fuzz tests take their example count from the active profile rather than fixing it,
so one environment variable lengthens every one of them.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

_LONG_EXAMPLES = int(os.environ.get("RAFTKV_FUZZ_EXAMPLES", "20000"))

settings.register_profile(
    "fuzz-long",
    max_examples=_LONG_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def pytest_configure(config: pytest.Config) -> None:
    # Before collection: test modules read the active profile when they are imported.
    profile = os.environ.get("RAFTKV_FUZZ", "")
    if profile == "long":
        settings.load_profile("fuzz-long")
    elif profile:
        # A typo here would silently run the short profile; refuse it instead.
        raise pytest.UsageError(f"RAFTKV_FUZZ must be 'long' or unset, got {profile!r}")
