"""The Raft process's Prometheus metrics (docs/metrics.md lists them all).

Two kinds live in one registry:
- state read from the node when scraped (term, indexes, leader, replication lag, the
  proposal counters): nothing is spent on them between scrapes;
- histograms the driver feeds as things happen: the log's fsync per batch, the apply
  of each committed batch, snapshots, and round trips to each follower.

The HTTP worker that serves ``/metrics`` asks for this text with ``Op.METRICS`` and puts
the workers' own metrics after it; every family here is named ``raftkv_...`` but never
``raftkv_http_...``, which is the workers' prefix, so no family can appear twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from raftkv.node.lease_clock import LeaseStats
from raftkv.node.peer_round_trips import PeerRoundTrips
from raftkv.node.requests import PendingRequest
from raftkv.node.view import NodeView
from raftkv.node.watch_hub import WatchStats
from raftkv.raft.core import Role

__all__ = ["SLOW_FSYNC_S", "RaftMetrics"]

# Like etcd's "slow fdatasync" warning: a sync this long holds up every write of the
# batch, and a disk that is often this slow will cost the node its heartbeats.
SLOW_FSYNC_S = 0.1

# No `<name>_created` series: the workers' metrics (multiprocess mode) have none, and
# the timestamps of objects made at start say nothing the process start time does not.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

# Bucket bounds double from one to the next, from well below the usual value to well
# above the worst one worth telling apart.
_FSYNC_BUCKETS = tuple(0.0005 * 2**i for i in range(14))  # 0.5 ms to 4 s
_APPLY_BUCKETS = tuple(0.00005 * 2**i for i in range(16))  # 50 us to 1.6 s
_ROUND_TRIP_BUCKETS = tuple(0.0001 * 2**i for i in range(16))  # 0.1 ms to 3.3 s
_SNAPSHOT_BUCKETS = tuple(0.01 * 2**i for i in range(15))  # 10 ms to 164 s


class RaftMetrics:
    """Every metric of one Raft process, and the text of them all for a scrape."""

    def __init__(
        self,
        node: NodeView,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._logger = logger or logging.getLogger("raftkv.metrics")
        self._clock = clock
        self.registry = CollectorRegistry(auto_describe=False)
        registry = self.registry
        self.lease_expiry_lateness = Histogram(
            "raftkv_lease_expiry_lateness_seconds",
            "On the leader: from a lease's deadline to the apply of the Expire that ended it.",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.leader_changes = Counter(
            "raftkv_leader_changes_seen",
            "Times this node learned of a new leader (elections it saw end).",
            registry=registry,
        )
        self.fsync_duration = Histogram(
            "raftkv_log_fsync_duration_seconds",
            "Time to make one batch of log writes durable (one fsync per batch).",
            buckets=_FSYNC_BUCKETS,
            registry=registry,
        )
        self.apply_duration = Histogram(
            "raftkv_apply_duration_seconds",
            "Time to apply one batch of committed entries to the state machine.",
            buckets=_APPLY_BUCKETS,
            registry=registry,
        )
        snapshot_duration = Histogram(
            "raftkv_snapshot_duration_seconds",
            "Snapshots and their duration: taken here (origin=local: fork to checked "
            "file) or received from the leader (origin=leader: save and load).",
            ["origin"],
            buckets=_SNAPSHOT_BUCKETS,
            registry=registry,
        )
        self.local_snapshot_duration = snapshot_duration.labels(origin="local")
        self.leader_snapshot_duration = snapshot_duration.labels(origin="leader")
        self._round_trip = Histogram(
            "raftkv_peer_round_trip_seconds",
            "Time from sending an AppendEntries (or heartbeat) to a follower to its "
            "response, sampled one message at a time per follower.",
            ["peer"],
            buckets=_ROUND_TRIP_BUCKETS,
            registry=registry,
        )
        self._round_trip_by_peer: dict[int, Histogram] = {}
        self.round_trips = PeerRoundTrips(self._observe_round_trip)
        self._state = NodeStateCollector(node)
        registry.register(self._state)
        ProcessCollector(namespace="raftkv_raft", registry=registry)

    def count_from_here(self) -> None:
        """Start the committed/applied counters at the node's current indexes: called
        once the node has opened its storage, so they count what this process did."""
        self._state.count_from_here()

    def _observe_round_trip(self, peer: int, seconds: float) -> None:
        child = self._round_trip_by_peer.get(peer)
        if child is None:
            child = self._round_trip_by_peer[peer] = self._round_trip.labels(peer=str(peer))
        child.observe(seconds)

    def timed_fsync(self, sync: Callable[[], None]) -> None:
        """Run the log's ``sync``, timing it."""
        started = self._clock()
        sync()
        self.fsync_done(self._clock() - started)

    def fsync_done(self, seconds: float) -> None:
        """A sync of the log took ``seconds`` (timed by whoever ran it)."""
        self.fsync_duration.observe(seconds)
        if seconds > SLOW_FSYNC_S:
            self._logger.warning("slow fsync: %.0f ms", seconds * 1000)

    def exposition(self) -> bytes:
        """The Prometheus text format (version 0.0.4) of every metric here."""
        return prometheus_client.generate_latest(self.registry)


class NodeStateCollector(Collector):
    """Reads the node's state at scrape time."""

    def __init__(self, node: NodeView) -> None:
        self._node = node
        self._committed_at_start = 0
        self._applied_at_start = 0
        self._started = time.monotonic()

    def count_from_here(self) -> None:
        node = self._node
        self._committed_at_start = node.raft_state.committed
        self._applied_at_start = node.applied_index

    def collect(self) -> Iterator[Metric]:
        node = self._node
        core = node.raft_state
        is_leader = core.role is Role.LEADER
        yield _gauge(
            "raftkv_has_leader", "1 if this node knows a leader, else 0.", bool(core.leader_id)
        )
        yield _gauge("raftkv_is_leader", "1 if this node is the leader, else 0.", is_leader)
        yield _gauge("raftkv_current_term", "The Raft term this node is in.", core.term)
        yield _gauge(
            "raftkv_commit_index", "The highest log index known committed.", core.committed
        )
        yield _gauge(
            "raftkv_applied_index",
            "The highest log index applied to the state machine.",
            node.applied_index,
        )
        yield _gauge("raftkv_last_log_index", "The last index in this node's log.", core.last_index)
        yield CounterMetricFamily(
            "raftkv_proposals_committed",
            "Log entries this node learned were committed, since it started.",
            value=max(0, core.committed - self._committed_at_start),
        )
        yield CounterMetricFamily(
            "raftkv_proposals_applied",
            "Log entries applied to the state machine (or covered by an installed "
            "snapshot), since this node started.",
            value=max(0, node.applied_index - self._applied_at_start),
        )
        yield CounterMetricFamily(
            "raftkv_proposals_failed",
            "Client writes answered without a result: no leader, proposal dropped, "
            "leadership changed, timed out (outcome unknown) or node stopping.",
            value=PendingRequest.failed_writes,
        )
        yield _gauge(
            "raftkv_proposals_pending",
            "Client writes waiting in this node: queued, proposed or forwarded to the "
            "leader, not yet answered.",
            node.pending_writes(),
        )
        yield from self._replication(node, is_leader)
        yield from _watch_metrics(node.watch_stats())
        yield from _lease_metrics(node.lease_stats())

    def _replication(self, node: NodeView, is_leader: bool) -> Iterator[Metric]:
        """Per-follower lag, known to the leader only (other nodes give no samples)."""
        lag_entries = GaugeMetricFamily(
            "raftkv_replication_lag_entries",
            "Leader only: entries the follower is behind the leader's last index.",
            labels=["peer"],
        )
        lag_seconds = GaugeMetricFamily(
            "raftkv_replication_lag_seconds",
            "Leader only: seconds since the leader last heard from the follower (since "
            "this process started, if never).",
            labels=["peer"],
        )
        if is_leader:
            core = node.raft_state
            now = time.monotonic()
            for peer, progress in sorted(core.progress.items()):
                label = [str(peer)]
                lag_entries.add_metric(label, max(0, core.last_index - progress.match))
                heard_at = node.last_heard.get(peer, self._started)
                lag_seconds.add_metric(label, max(0.0, now - heard_at))
        yield lag_entries
        yield lag_seconds


def _watch_metrics(stats: WatchStats) -> Iterator[Metric]:
    yield _gauge(
        "raftkv_watches",
        "Watch streams served by the Raft process: one feed per HTTP worker, HTTP "
        "watchers catching up from further back than their worker's ring, native watches.",
        stats.watches,
    )
    yield _gauge(
        "raftkv_watches_held",
        "Watch streams held back because their connection has more than 1 MiB unsent.",
        stats.held,
    )
    yield CounterMetricFamily(
        "raftkv_watch_events_sent",
        "Change events the Raft process sent on watch streams.",
        value=stats.events_sent,
    )
    yield CounterMetricFamily(
        "raftkv_watch_resyncs",
        "Watch streams that asked for changes older than the history: sent the range's "
        "image (or told of the gap, for a worker's feed).",
        value=stats.resyncs,
    )
    yield _gauge(
        "raftkv_watch_history_changes",
        "Changes kept in the watch history (at most --watch-history).",
        stats.history_changes,
    )
    yield _gauge(
        "raftkv_watch_history_floor",
        "The revision after which the watch history has every change; a watch from "
        "before it is resynced.",
        stats.history_floor,
    )


def _lease_metrics(stats: LeaseStats) -> Iterator[Metric]:
    yield _gauge("raftkv_leases", "Live leases (a key's own TTL counts as one).", stats.leases)
    yield _gauge("raftkv_lease_keys", "Keys attached to a lease.", stats.attached_keys)
    yield CounterMetricFamily(
        "raftkv_lease_expiries",
        "Leases that expired (Expire entries applied), since this node started.",
        value=stats.expired,
    )
    yield CounterMetricFamily(
        "raftkv_lease_expiries_proposed",
        "Expire entries this node proposed as leader, since it started.",
        value=stats.expiries_proposed,
    )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=float(value))
