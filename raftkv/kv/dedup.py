"""The client table: apply each tagged command at most once (Raft thesis §6.3).

A client tags each request with its ``client_id`` (non-zero), a ``seq`` number (the
first request of a client is seq 1, each new request takes the next number) and
``first_incomplete``: the lowest seq for which the client has not yet received a reply.
A client may pipeline many requests and retry any of them; a retry reuses the seq of
the original. Raft may commit the same request more than once (a client retries through
another leader, a leader re-proposes), so every replica must recognise the repeats.

Per client the table keeps a *session*:

* ``floor``: every seq below it is settled: either the client acknowledged its reply or
  its result was evicted. It only grows: it is raised to the largest ``first_incomplete``
  the client has sent, and past any result evicted for space.
* ``results``: the result of every applied seq that is ``>= floor``, by seq.
* ``last_index``: the Raft index of the last entry from this client, for eviction.

For a tagged entry at index ``i`` the table first raises the floor (dropping results
below it), then:

1. ``seq`` has a retained result: return it; the command is not applied again.
2. ``seq < floor``: return a STALE result; the command is not applied.
3. otherwise the command is applied and its result is retained.

Why this is correct (no command applies twice, a retry gets its original answer):

* Invariant: for a live session, every applied seq ``>= floor`` has its result retained.
  Results are only dropped together with a floor raise that puts them below the floor:
  step 0 drops exactly the results under the new floor, and overflow eviction (below)
  drops the lowest retained seq ``s`` and raises the floor to ``s + 1``.
* So a seq that was applied is either retained (case 1, same answer) or below the floor
  (case 2, not applied). Case 3 only applies seqs that were never applied.
* A result dropped because ``first_incomplete`` passed it belongs to a request whose
  reply the client has already received, so the client will not ask again; if a stale
  copy of it is still in the log it is answered STALE and ignored.
* Everything is a function of the committed entries and the two limits alone, so every
  replica holds the same table and makes the same decisions, and the table is part of
  the snapshot.

Bounded memory. At most ``max_results`` results are kept per client: when one more is
added, the lowest seq is evicted and the floor raised past it (a later retry of it is
STALE: the outcome is no longer known, and it is not applied again). At most
``max_clients`` sessions are kept: a new session evicts the least recently used one, by
Raft index of its last entry (indexes are unique, so the order is total; ties, which
cannot occur, would go to the lower client id). A client whose session was evicted
loses its exactly-once guarantee, so a request from an unknown client whose
``first_incomplete`` is above 1 (it has had replies, so it had a session) is answered
STALE ("session expired") and opens no session: the client must start over under a
new client id. The one case this cannot see is a client evicted before it received
any reply (``first_incomplete <= 1``) that then retries: ``max_clients`` must exceed
the number of clients active within one client's retry window, as in the thesis.

Results below a client's ``first_incomplete`` are dropped as soon as the client says
so, so a well-behaved client holds about as many results as it has requests in flight.
A retained result is what the client is answered with, so it includes the previous
key-value of a Put or Delete: the bound is on counts, and bytes scale with value size.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from raftkv.kv.results import ApplyResult, Status
from raftkv.kv.snapshot_format import CLIENT, U64, Reader, SnapshotFormatError, result_record

__all__ = ["DEFAULT_MAX_CLIENTS", "DEFAULT_MAX_RESULTS", "ClientTable"]

DEFAULT_MAX_CLIENTS = 10_000
DEFAULT_MAX_RESULTS = 1_024


class _ClientRecord:
    """What the table keeps for one client: its session (floor, retained results, last
    Raft index), as the module docstring describes."""

    __slots__ = ("floor", "last_index", "results", "seqs")

    def __init__(self, floor: int, last_index: int) -> None:
        self.floor = floor
        self.last_index = last_index
        self.results: dict[int, ApplyResult] = {}
        self.seqs: list[int] = []
        """A min-heap of the keys of ``results``."""

    def raise_floor(self, floor: int) -> None:
        self.floor = floor
        seqs = self.seqs
        results = self.results
        while seqs and seqs[0] < floor:
            del results[heapq.heappop(seqs)]


class ClientTable:
    """Per-client sessions deciding whether a tagged command is applied."""

    __slots__ = ("_max_clients", "_max_results", "_sessions")

    def __init__(
        self, max_clients: int = DEFAULT_MAX_CLIENTS, max_results: int = DEFAULT_MAX_RESULTS
    ) -> None:
        if max_clients < 1 or max_results < 1:
            raise ValueError("max_clients and max_results must be at least 1")
        self._max_clients = max_clients
        self._max_results = max_results
        # Insertion order is least recently used first: a touched session is moved to
        # the end, and indexes increase, so the order is by last_index.
        self._sessions: dict[int, _ClientRecord] = {}

    @property
    def max_clients(self) -> int:
        return self._max_clients

    @property
    def max_results(self) -> int:
        return self._max_results

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._sessions

    def check(
        self, client_id: int, seq: int, first_incomplete: int, index: int
    ) -> ApplyResult | None:
        """Register a tagged entry at ``index``.

        Returns the result to answer with if the command must not be applied (a retained
        result or a STALE one), or None if it must be applied, after which the caller
        passes the result to :meth:`record`.
        """
        sessions = self._sessions
        session = sessions.pop(client_id, None)
        if session is None:
            if first_incomplete > 1:
                return ApplyResult(
                    Status.STALE, index, error=f"client {client_id}: session expired"
                )
            if len(sessions) >= self._max_clients:
                del sessions[next(iter(sessions))]
            session = _ClientRecord(first_incomplete, index)
        else:
            session.last_index = index
            if first_incomplete > session.floor:
                session.raise_floor(first_incomplete)
        sessions[client_id] = session
        result = session.results.get(seq)
        if result is not None:
            return result
        if seq < session.floor:
            return ApplyResult(
                Status.STALE,
                index,
                error=f"client {client_id}: seq {seq} is settled "
                f"(below {session.floor}); not applied again",
            )
        return None

    def record(self, client_id: int, seq: int, result: ApplyResult) -> None:
        """Retain ``result`` of the command that :meth:`check` just let through."""
        session = self._sessions[client_id]
        session.results[seq] = result
        heapq.heappush(session.seqs, seq)
        if len(session.results) > self._max_results:
            lowest = heapq.heappop(session.seqs)
            del session.results[lowest]
            session.floor = lowest + 1

    def floor(self, client_id: int) -> int | None:
        """The client's floor (seqs below it are settled), or None without a session."""
        session = self._sessions.get(client_id)
        return None if session is None else session.floor

    def retained(self, client_id: int) -> list[int]:
        """The seqs whose results are retained for ``client_id``, ascending."""
        session = self._sessions.get(client_id)
        return [] if session is None else sorted(session.results)

    def clients(self) -> list[int]:
        """Client ids, least recently used first (the eviction order)."""
        return list(self._sessions)

    # -- snapshot ------------------------------------------------------------------

    def holds_format_3_results(self) -> bool:
        """Whether any retained result is a transaction's or a lease's (they need
        snapshot version 3)."""
        return any(
            result.txn is not None or result.lease is not None
            for session in self._sessions.values()
            for result in session.results.values()
        )

    def chunks(self) -> Iterator[bytes]:
        """The client part of the snapshot body (see snapshot_format)."""
        yield U64.pack(len(self._sessions))
        for client_id, session in self._sessions.items():
            results = session.results
            parts = [CLIENT.pack(client_id, session.floor, session.last_index, len(results))]
            parts += (result_record(seq, results[seq]) for seq in sorted(results))
            yield b"".join(parts)

    @classmethod
    def load(
        cls, reader: Reader, applied_index: int, max_clients: int, max_results: int
    ) -> ClientTable:
        """Read the client part of a snapshot body; raise SnapshotFormatError if bad."""
        table = cls(max_clients, max_results)
        sessions = table._sessions
        (count,) = reader.struct(U64)
        if count > max_clients:
            raise SnapshotFormatError(
                f"snapshot has {count} client sessions, more than the limit of {max_clients}"
            )
        previous = (0, 0)
        for _ in range(count):
            client_id, floor, last_index, n_results = reader.struct(CLIENT)
            order = (last_index, client_id)
            if client_id == 0 or order <= previous or last_index > applied_index:
                raise SnapshotFormatError("client sessions out of order or invalid")
            previous = order
            if n_results > max_results:
                raise SnapshotFormatError(
                    f"client {client_id} has {n_results} results, "
                    f"more than the limit of {max_results}"
                )
            session = _ClientRecord(floor, last_index)
            last_seq = -1
            for _ in range(n_results):
                seq, result = reader.result()
                if seq <= last_seq or seq < floor:
                    raise SnapshotFormatError(f"client {client_id}: results out of order")
                last_seq = seq
                session.results[seq] = result
                session.seqs.append(seq)  # ascending, hence a valid heap
            sessions[client_id] = session
        return table
