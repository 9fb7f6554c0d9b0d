"""Log output of a node, the same in its Raft process and its HTTP workers.

Both kinds of process log to stderr in the format ``kvnode --log-format`` picks: ``text``
for people (the default) or ``json`` for log collectors, one object per line with
``time`` (ISO 8601, UTC), ``level``, ``node``, ``process`` (``raft`` or ``worker``),
``pid``, ``logger``, ``message`` and, when the record carries one, ``exception``.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import threading
from types import TracebackType
from typing import Final, Literal

LOG_FORMATS: Final = ("text", "json")

# Libraries that log every request they make at INFO (httpx: "HTTP Request: GET ..."): a
# follower's worker asks the leader for each status request, and a joining node asks
# until it is let in. Per-request lines are detail, shown only at debug.
_PER_REQUEST_LOGGERS: Final = ("httpx", "httpcore")

ProcessKind = Literal["raft", "worker"]


class JsonLineFormatter(logging.Formatter):
    """One JSON object per record. A message or a traceback may span lines; JSON escapes
    the newlines, so a collector reading line by line never splits a record."""

    def __init__(self, node_id: int | None, process_kind: ProcessKind) -> None:
        super().__init__()
        self._node_id = node_id
        self._process_kind = process_kind

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        document: dict[str, object] = {
            "time": created.isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "node": self._node_id,
            "process": self._process_kind,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return json.dumps(document, ensure_ascii=False, default=str)


def text_formatter(node_id: int | None, process_kind: ProcessKind) -> logging.Formatter:
    """``2026-01-02 10:00:00,123 INFO node2 raftkv.node: ...``; a worker's lines also
    carry ``worker[pid]``, since a node may run several."""
    who = f"node{node_id}" if node_id is not None else "node?"
    if process_kind == "worker":
        who += " worker[%(process)d]"
    return logging.Formatter(f"%(asctime)s %(levelname)s {who} %(name)s: %(message)s")


def formatter_for(
    log_format: str, node_id: int | None, process_kind: ProcessKind
) -> logging.Formatter:
    if log_format == "json":
        return JsonLineFormatter(node_id, process_kind)
    if log_format == "text":
        return text_formatter(node_id, process_kind)
    raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")


def setup_logging(
    level: str, log_format: str, *, node_id: int | None, process_kind: ProcessKind
) -> None:
    """Send every logger's records to stderr in ``log_format`` at ``level`` and above.

    Like ``logging.basicConfig`` this does nothing when the root logger already has a
    handler (a test capturing logs, an embedding program). In JSON, uncaught exceptions
    and Python warnings become records too, so that nothing else reaches stderr.
    """
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(log_format, node_id, process_kind))
    root.addHandler(handler)
    root.setLevel(level.upper())
    if root.level > logging.DEBUG:
        for name in _PER_REQUEST_LOGGERS:
            logging.getLogger(name).setLevel(max(root.level, logging.WARNING))
    if log_format == "json":
        logging.captureWarnings(True)
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(
    kind: type[BaseException], error: BaseException, traceback: TracebackType | None
) -> None:
    logging.getLogger("raftkv").critical("uncaught exception", exc_info=(kind, error, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None:
        return
    logging.getLogger("raftkv").critical(
        "uncaught exception in thread %s",
        args.thread.name if args.thread is not None else "?",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )
