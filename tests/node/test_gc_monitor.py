"""The Raft process's frozen heap: what a snapshot replaced is collected when the heap is
frozen again, cycles included (frozen, nothing would ever free them)."""

from __future__ import annotations

import gc
import weakref

from raftkv.node.gc_monitor import freeze_heap, refreeze_heap


class _State:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector can free it


def test_refreezing_collects_frozen_cycles_that_became_garbage() -> None:
    old = _State()
    gone = weakref.ref(old)
    try:
        freeze_heap()
        assert gc.get_freeze_count() > 0
        del old
        gc.collect()
        assert gone() is not None  # frozen: no collection looks at it
        refreeze_heap()
        assert gone() is None
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
