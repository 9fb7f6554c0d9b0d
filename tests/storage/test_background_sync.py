"""The segment log's syncs on a thread of their own (BackgroundSync): one at a time, done
when its eventfd says so, the same refusals as SegmentLog.sync, and a thread that ends."""

from __future__ import annotations

import select
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftkv_ext.entry import ENTRY_NORMAL, Entry
from raftkv_ext.segment_log import BackgroundSync, SegmentLog

# A guard against a hang, not a measurement: an fdatasync takes milliseconds.
GUARD_S = 30.0


@pytest.fixture
def log(tmp_path: Path) -> Iterator[SegmentLog]:
    opened = SegmentLog(str(tmp_path / "log"))
    yield opened
    opened.close()


def started(log: SegmentLog) -> tuple[BackgroundSync, threading.Thread]:
    background = BackgroundSync(log)
    thread = threading.Thread(target=background.run, daemon=True)
    thread.start()
    return background, thread


def wait_done(background: BackgroundSync) -> float:
    readable, _, _ = select.select([background.fileno()], [], [], GUARD_S)
    assert readable, "the sync thread never signalled"
    seconds = background.finish()
    assert seconds is not None
    return seconds


def test_syncs_run_one_at_a_time_and_report_their_duration(log: SegmentLog) -> None:
    background, thread = started(log)
    for index in range(1, 4):
        log.append([Entry(index, 1, ENTRY_NORMAL, b"x" * 100)])
        background.start()
        assert background.running
        with pytest.raises(RuntimeError, match="already running"):
            background.start()
        assert wait_done(background) >= 0.0
        assert not background.running
    background.stop()
    thread.join(GUARD_S)
    assert not thread.is_alive()


def test_finish_before_the_sync_is_done_reports_nothing(log: SegmentLog) -> None:
    # No thread runs the sync: it stays under way, and its eventfd unreadable.
    background = BackgroundSync(log)
    assert background.finish() is None  # nothing started
    background.start()
    assert background.finish() is None
    assert background.running


def test_a_closed_log_is_refused_as_sync_refuses_it(log: SegmentLog) -> None:
    background = BackgroundSync(log)
    log.close()
    with pytest.raises(ValueError, match="closed SegmentLog"):
        log.sync()
    with pytest.raises(ValueError, match="closed SegmentLog"):
        background.start()
    assert not background.running


def test_a_sync_under_way_survives_the_log_closing(log: SegmentLog) -> None:
    """The sync works on descriptors of its own, so the node may close the log while
    one runs (it stops the thread after that sync, then closes)."""
    log.append([Entry(1, 1, ENTRY_NORMAL, b"x")])
    background, thread = started(log)
    background.start()
    log.close()
    assert wait_done(background) >= 0.0
    background.stop()
    thread.join(GUARD_S)
    assert not thread.is_alive()


def test_stop_ends_an_idle_thread(log: SegmentLog) -> None:
    background, thread = started(log)
    background.stop()
    thread.join(GUARD_S)
    assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="stopped"):
        background.start()
