"""Everything a node writes is private to the user that runs it.

The data directory holds every key and value, the node's votes, and the Unix socket
through which the workers submit requests without credentials: another local user who
can read it reads the whole store, and one who can connect to the socket can write to
it. The stores create their own files 0600 and directories 0700 explicitly, but some
files are created by code that takes no mode: SQLite's journal files, the workers'
metrics files (prometheus-client), missing parents of a new data directory, and the Unix
socket in the moment between its bind and its chmod. A umask that strips every group
and other bit, set once when ``kvnode`` starts and inherited by the worker processes,
covers all of them, including files added later by code that forgets to ask.
"""

from __future__ import annotations

import os
from typing import Final

__all__ = ["PRIVATE_BITS", "restrict_umask"]

PRIVATE_BITS: Final = 0o077
"""The group and other permission bits: none of them is ever set on what a node writes."""


def restrict_umask() -> int:
    """Add the group and other bits to the process umask; return the previous umask.

    A stricter umask the operator chose (say 0o277) is kept, only widened to cover
    group and other.
    """
    previous = os.umask(PRIVATE_BITS)
    os.umask(previous | PRIVATE_BITS)
    return previous
