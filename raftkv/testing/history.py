"""Client histories of key-value operations, for the linearizability checker.

A history is the list of operations clients issued against the store, each with the
time it was invoked, the time its answer came back and what that answer was. Times only
need to be comparable with one another: either a logical counter the recorder keeps (one
tick per event, which is exact when every event is recorded from one thread or event
loop) or times the caller passes, such as ``time.monotonic()`` taken just before the
request is sent and just after the reply is read.

Every operation ends in one of four ways:

* ``complete(op_id, result)``: the store answered; the answer is a definite outcome.
* ``fail(op_id)``: the store guarantees the operation had no effect (a validation error,
  a refused request); the checker leaves it out.
* ``unknown(op_id)``: the outcome cannot be known (a timeout, a dropped connection); a
  write may have taken effect at any moment after its invocation, or never.
* never finished (still pending when the history is checked): treated as unknown.

The model is one register per key: the register holds a string or is absent (``None``).

============  =====================================  ======================================
operation     meaning                                result when completed
============  =====================================  ======================================
get(k)        read the value                         the value, or ``None`` if absent
put(k, v)     set the value                          ``Status.OK``
cas(k, e, n)  if the value equals ``e`` (``None``:   ``Status.OK`` if it matched,
              must be absent) set it to ``n``        ``Status.CONFLICT`` if it did not
              (``None``: delete it)
delete(k)     remove the key                         ``Status.OK`` if it existed,
                                                     ``Status.NOT_FOUND`` if it did not
============  =====================================  ======================================
"""

from __future__ import annotations

import enum
import json
import math
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeAlias

__all__ = [
    "History",
    "OpKind",
    "OpRecord",
    "Operation",
    "Outcome",
    "Result",
    "Status",
    "cas",
    "delete",
    "get",
    "put",
]

JSON_FORMAT = "raftkv-history"
JSON_VERSION = 1


class OpKind(enum.Enum):
    """The kind of a key-value operation."""

    GET = "get"
    PUT = "put"
    CAS = "cas"
    DELETE = "delete"


class Status(enum.Enum):
    """The answer of a write: put, cas or delete."""

    OK = "ok"
    CONFLICT = "conflict"
    NOT_FOUND = "not_found"


class Outcome(enum.Enum):
    """How an operation ended, as far as the client knows."""

    COMPLETED = "completed"
    FAILED = "failed"
    UNKNOWN = "unknown"
    PENDING = "pending"


#: What a completed operation returned: the value read (``None``: absent) for a get, a
#: ``Status`` for a write.
Result: TypeAlias = str | Status | None

_ALLOWED_STATUS: dict[OpKind, frozenset[Status]] = {
    OpKind.PUT: frozenset({Status.OK}),
    OpKind.CAS: frozenset({Status.OK, Status.CONFLICT}),
    OpKind.DELETE: frozenset({Status.OK, Status.NOT_FOUND}),
}


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation on one key.

    ``value`` is the value a put writes, or the new value of a cas (``None``: delete the
    key). ``expected`` is the value a cas compares with (``None``: the key must be
    absent). Use the constructors ``get``, ``put``, ``cas`` and ``delete``.
    """

    kind: OpKind
    key: str
    value: str | None = None
    expected: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.key, str):
            raise TypeError(f"key must be a str, not {type(self.key).__name__}")
        for name in ("value", "expected"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise TypeError(f"{name} must be a str or None, not {type(v).__name__}")
        if self.kind is OpKind.PUT and self.value is None:
            raise ValueError("put needs a value (use delete to remove a key)")
        if self.kind in (OpKind.GET, OpKind.DELETE) and self.value is not None:
            raise ValueError(f"{self.kind.value} takes no value")
        if self.kind is not OpKind.CAS and self.expected is not None:
            raise ValueError(f"{self.kind.value} takes no expected value")

    @classmethod
    def get(cls, key: str) -> Operation:
        return cls(OpKind.GET, key)

    @classmethod
    def put(cls, key: str, value: str) -> Operation:
        return cls(OpKind.PUT, key, value)

    @classmethod
    def cas(cls, key: str, expected: str | None, new: str | None) -> Operation:
        return cls(OpKind.CAS, key, new, expected)

    @classmethod
    def delete(cls, key: str) -> Operation:
        return cls(OpKind.DELETE, key)

    @property
    def is_read(self) -> bool:
        return self.kind is OpKind.GET

    def validate_result(self, result: Result) -> None:
        """Raise ``ValueError`` if ``result`` is not a possible answer to this operation."""
        if self.kind is OpKind.GET:
            if result is not None and not isinstance(result, str):
                raise ValueError(f"get returns a str or None, not {result!r}")
            return
        if not isinstance(result, Status) or result not in _ALLOWED_STATUS[self.kind]:
            allowed = sorted(s.value for s in _ALLOWED_STATUS[self.kind])
            raise ValueError(f"{self.kind.value} returns one of {allowed}, not {result!r}")

    def __str__(self) -> str:
        if self.kind is OpKind.GET:
            return f"get({self.key!r})"
        if self.kind is OpKind.PUT:
            return f"put({self.key!r}, {self.value!r})"
        if self.kind is OpKind.CAS:
            return f"cas({self.key!r}, {self.expected!r} -> {self.value!r})"
        return f"delete({self.key!r})"


def get(key: str) -> Operation:
    """Read ``key``."""
    return Operation.get(key)


def put(key: str, value: str) -> Operation:
    """Set ``key`` to ``value``."""
    return Operation.put(key, value)


def cas(key: str, expected: str | None, new: str | None) -> Operation:
    """Set ``key`` to ``new`` if it holds ``expected`` (``None`` on either side: absent)."""
    return Operation.cas(key, expected, new)


def delete(key: str) -> Operation:
    """Remove ``key``."""
    return Operation.delete(key)


def format_result(result: Result) -> str:
    if isinstance(result, Status):
        return result.value
    return repr(result)


@dataclass(frozen=True, slots=True)
class OpRecord:
    """One operation of a history.

    ``ret`` is ``math.inf`` when the outcome is unknown or the operation is pending.
    ``result`` is meaningful only when ``outcome`` is ``Outcome.COMPLETED``.
    """

    id: int
    client: int
    op: Operation
    call: float
    ret: float
    outcome: Outcome
    result: Result = None

    @property
    def key(self) -> str:
        return self.op.key

    def __str__(self) -> str:
        if self.outcome is Outcome.COMPLETED:
            answer = format_result(self.result)
        else:
            answer = self.outcome.value
        end = "inf" if math.isinf(self.ret) else _fmt_time(self.ret)
        return (
            f"#{self.id} client {self.client}: {self.op} -> {answer}"
            f" [{_fmt_time(self.call)}, {end}]"
        )


def _fmt_time(t: float) -> str:
    if float(t).is_integer():
        return str(int(t))
    return f"{t:.6f}"


ClockMode: TypeAlias = Literal["logical", "explicit"]


class History:
    """A recorder of client operations; safe to use from several threads.

    Either let the recorder time events with its logical counter (pass no times) or pass
    every time yourself; mixing the two in one history raises ``ValueError``.
    """

    def __init__(self, records: Iterable[OpRecord] = ()) -> None:
        self._lock = threading.Lock()
        self._records: list[OpRecord] = []
        self._index: dict[int, int] = {}
        self._clock: ClockMode | None = None
        self._tick = 0
        self._next_id = 0
        for rec in records:
            self._append(rec)
        if self._records:
            self._clock = "explicit"

    # -- recording ---------------------------------------------------------------------

    def invoke(self, client: int, op: Operation, at: float | None = None) -> int:
        """Record that ``client`` sent ``op``; returns the id to finish it with."""
        with self._lock:
            call = self._time(at)
            op_id = self._next_id
            self._append(OpRecord(op_id, client, op, call, math.inf, Outcome.PENDING))
            return op_id

    def complete(self, op_id: int, result: Result, at: float | None = None) -> None:
        """Record the definite answer of a pending operation."""
        with self._lock:
            rec = self._pending(op_id)
            rec.op.validate_result(result)
            ret = self._time(at)
            self._finish(rec, ret, Outcome.COMPLETED, result)

    def fail(self, op_id: int, at: float | None = None) -> None:
        """Record that a pending operation certainly had no effect."""
        with self._lock:
            rec = self._pending(op_id)
            self._finish(rec, self._time(at), Outcome.FAILED, None)

    def unknown(self, op_id: int) -> None:
        """Record that the outcome of a pending operation cannot be known (a timeout)."""
        with self._lock:
            rec = self._pending(op_id)
            self._finish(rec, math.inf, Outcome.UNKNOWN, None)

    def record(
        self,
        client: int,
        op: Operation,
        call: float,
        ret: float | None,
        result: Result = None,
        *,
        outcome: Outcome = Outcome.COMPLETED,
    ) -> int:
        """Add a finished operation with explicit times (``ret=None``: never returned)."""
        with self._lock:
            if self._clock == "logical":
                raise ValueError("this history uses the logical clock; times cannot be given")
            self._clock = "explicit"
            if outcome in (Outcome.UNKNOWN, Outcome.PENDING):
                ret = math.inf
            elif ret is None:
                raise ValueError(f"an operation with outcome {outcome.value} needs a return time")
            op_id = self._next_id
            self._append(OpRecord(op_id, client, op, call, ret, outcome, result))
            return op_id

    # -- reading -----------------------------------------------------------------------

    @property
    def records(self) -> list[OpRecord]:
        """A snapshot of the records, in the order they were invoked or added."""
        with self._lock:
            return list(self._records)

    def __getitem__(self, op_id: int) -> OpRecord:
        with self._lock:
            return self._records[self._index[op_id]]

    def __iter__(self) -> Iterator[OpRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def __repr__(self) -> str:
        return f"History({len(self)} operations)"

    def replaced(self, op_id: int, **changes: Any) -> History:
        """A copy of this history with fields of one record changed (for tests)."""
        recs = [replace(r, **changes) if r.id == op_id else r for r in self.records]
        if not any(r.id == op_id for r in recs):
            raise KeyError(op_id)
        return History(recs)

    # -- JSON --------------------------------------------------------------------------

    def to_json(self, indent: int | None = None) -> str:
        """Serialise to JSON; ``History.from_json`` reads it back exactly."""
        with self._lock:
            doc = {
                "format": JSON_FORMAT,
                "version": JSON_VERSION,
                "clock": self._clock,
                "tick": self._tick,
                "ops": [_record_to_json(r) for r in self._records],
            }
        return json.dumps(doc, indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> History:
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("format") != JSON_FORMAT:
            raise ValueError("not a raftkv history document")
        if doc.get("version") != JSON_VERSION:
            raise ValueError(f"unsupported history version {doc.get('version')!r}")
        hist = cls(_record_from_json(item) for item in doc["ops"])
        clock = doc.get("clock")
        if clock not in (None, "logical", "explicit"):
            raise ValueError(f"unknown clock mode {clock!r}")
        hist._clock = clock
        hist._tick = int(doc.get("tick", 0))
        return hist

    # -- internals ---------------------------------------------------------------------

    def _append(self, rec: OpRecord) -> None:
        if rec.id in self._index:
            raise ValueError(f"duplicate operation id {rec.id}")
        if not rec.ret >= rec.call:
            raise ValueError(f"operation #{rec.id} returns ({rec.ret}) before its call")
        if rec.outcome is Outcome.COMPLETED:
            rec.op.validate_result(rec.result)
            if math.isinf(rec.ret):
                raise ValueError(f"completed operation #{rec.id} has no return time")
        elif rec.result is not None:
            raise ValueError(f"operation #{rec.id} ({rec.outcome.value}) has a result")
        self._index[rec.id] = len(self._records)
        self._records.append(rec)
        self._next_id = max(self._next_id, rec.id + 1)

    def _time(self, at: float | None) -> float:
        if at is None:
            if self._clock == "explicit":
                raise ValueError("this history uses explicit times; pass at=")
            self._clock = "logical"
            self._tick += 1
            return self._tick
        if self._clock == "logical":
            raise ValueError("this history uses the logical clock; do not pass at=")
        self._clock = "explicit"
        return at

    def _pending(self, op_id: int) -> OpRecord:
        try:
            rec = self._records[self._index[op_id]]
        except KeyError:
            raise KeyError(f"no operation with id {op_id}") from None
        if rec.outcome is not Outcome.PENDING:
            raise ValueError(f"operation #{op_id} already ended ({rec.outcome.value})")
        return rec

    def _finish(self, rec: OpRecord, ret: float, outcome: Outcome, result: Result) -> None:
        if not ret >= rec.call:
            raise ValueError(f"operation #{rec.id} returns ({ret}) before its call")
        self._records[self._index[rec.id]] = replace(rec, ret=ret, outcome=outcome, result=result)


def _record_to_json(rec: OpRecord) -> dict[str, Any]:
    result: str | None
    if isinstance(rec.result, Status):
        result = rec.result.value
    else:
        result = rec.result
    return {
        "id": rec.id,
        "client": rec.client,
        "kind": rec.op.kind.value,
        "key": rec.op.key,
        "value": rec.op.value,
        "expected": rec.op.expected,
        "call": rec.call,
        "return": None if math.isinf(rec.ret) else rec.ret,
        "outcome": rec.outcome.value,
        "result": result,
    }


def _record_from_json(item: dict[str, Any]) -> OpRecord:
    kind = OpKind(item["kind"])
    op = Operation(kind, item["key"], item.get("value"), item.get("expected"))
    outcome = Outcome(item["outcome"])
    raw = item.get("result")
    result: Result
    if outcome is not Outcome.COMPLETED:
        result = None
    elif kind is OpKind.GET:
        result = raw
    else:
        result = Status(raw)
    ret_raw = item.get("return")
    ret = math.inf if ret_raw is None else ret_raw
    return OpRecord(int(item["id"]), int(item["client"]), op, item["call"], ret, outcome, result)
