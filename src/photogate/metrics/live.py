"""The gateway's live state as Prometheus gauges, read at scrape time.

Queue depth, tasks by state, node health, in-flight, slots and throughput are read when
``/metrics`` is scraped, so they can never drift from what the gateway really holds. The
collector sees the gateway only through :class:`SnapshotSource`: one call that returns a
:class:`LiveSnapshot`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from .. import __version__
from .events import THROUGHPUT_WINDOW_S, GatewayMetrics

if TYPE_CHECKING:
    from ..registry import NodeState


@dataclass(frozen=True)
class FleetReading:
    """What a started gateway holds: its queue, its jobs, its store's tasks, its nodes."""

    queued: int
    in_flight: int
    #: Stored tasks by state.
    task_counts: Mapping[str, int]
    #: Every registered node, in id order.
    nodes: Sequence[NodeState]
    #: The nodes that get new work now.
    serving: Sequence[NodeState]


@dataclass(frozen=True)
class LiveSnapshot:
    strategy: str
    multi_backend: bool
    #: ``None`` until the gateway has started (only the info metric then).
    fleet: FleetReading | None = None


class SnapshotSource(Protocol):
    """The running gateway, as the collector reads it."""

    async def live_snapshot(self) -> LiveSnapshot: ...


class LiveCollector(Collector):
    """Gauges read from the gateway's snapshot, taken just before each scrape."""

    def __init__(self, metrics: GatewayMetrics, source: SnapshotSource) -> None:
        self.metrics = metrics
        self.source = source
        self.snapshot: LiveSnapshot | None = None

    async def exposition(self) -> bytes:
        """The text ``/metrics`` answers: the events and the live state, read now."""
        self.snapshot = await self.source.live_snapshot()
        return generate_latest(self.metrics.registry)

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: its families depend on what the gateway holds

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        if snap is None:
            return
        info = InfoMetricFamily("photogate", "Gateway version and balancing")
        info.add_metric([], {"version": __version__, "strategy": snap.strategy,
                             "multi_backend": str(snap.multi_backend).lower()})
        yield info
        fleet = snap.fleet
        if fleet is None:  # not started yet
            return
        yield GaugeMetricFamily("photogate_queue_depth", "Tasks waiting for a free slot", value=fleet.queued)
        yield GaugeMetricFamily("photogate_in_flight", "Photos being enhanced on nodes now", value=fleet.in_flight)
        tasks = GaugeMetricFamily("photogate_tasks", "Stored tasks by state (until they expire)", labels=["state"])
        for state, count in sorted(fleet.task_counts.items()):
            tasks.add_metric([state], count)
        yield tasks
        yield GaugeMetricFamily("photogate_nodes", "Registered GPU nodes", value=len(fleet.nodes))
        yield GaugeMetricFamily("photogate_nodes_serving", "Healthy, non-draining nodes that get new work",
                                value=len(fleet.serving))
        yield GaugeMetricFamily("photogate_slots", "Slots of the nodes that get new work",
                                value=sum(s.slots for s in fleet.serving))
        fleet_mps, node_mps = self.metrics.throughput.rates()
        yield GaugeMetricFamily(
            "photogate_throughput_megapixels_per_second",
            f"Input megapixels completed per second over the last {THROUGHPUT_WINDOW_S:g} s", value=fleet_mps)
        yield from _node_families(fleet.nodes, node_mps)


def _node_families(nodes: Sequence[NodeState], node_mps: Mapping[str, float]) -> Iterator[Metric]:
    """One gauge family per node property, a sample per node."""
    up = GaugeMetricFamily("photogate_node_up", "1 if the node passes its health checks", labels=["server_id"])
    draining = GaugeMetricFamily("photogate_node_draining", "1 if the node is drained", labels=["server_id"])
    offline = GaugeMetricFamily("photogate_node_offline", "1 if the node unregistered (kept with its id)",
                                labels=["server_id"])
    inflight = GaugeMetricFamily("photogate_node_in_flight", "Photos on the node now", labels=["server_id"])
    slots = GaugeMetricFamily("photogate_node_slots", "Photos the node runs at once", labels=["server_id"])
    failures = GaugeMetricFamily("photogate_node_consecutive_failures", "Failed checks in a row",
                                 labels=["server_id"])
    last_check = GaugeMetricFamily("photogate_node_last_check_timestamp_seconds",
                                   "Unix time of the node's last health check", labels=["server_id"])
    mps = GaugeMetricFamily(
        "photogate_node_throughput_megapixels_per_second",
        f"Input megapixels the node completed per second over the last {THROUGHPUT_WINDOW_S:g} s",
        labels=["server_id"])
    reported = GaugeMetricFamily("photogate_node_reported_megapixels_per_second",
                                 "Speed the node reports in its health answer (MP/s per slot)",
                                 labels=["server_id"])
    node_info = InfoMetricFamily("photogate_node", "Node address and model", labels=["server_id"])
    for s in nodes:
        sid = [s.server_id]
        up.add_metric(sid, 1 if s.healthy else 0)
        draining.add_metric(sid, 1 if s.record.draining else 0)
        offline.add_metric(sid, 1 if s.record.offline else 0)
        inflight.add_metric(sid, s.inflight)
        slots.add_metric(sid, s.slots)
        failures.add_metric(sid, s.failures)
        if s.last_check is not None:
            last_check.add_metric(sid, s.last_check)
        mps.add_metric(sid, node_mps.get(s.server_id, 0.0))
        speed = s.health.get("throughput")
        if isinstance(speed, (int, float)) and not isinstance(speed, bool):
            reported.add_metric(sid, float(speed))
        node_info.add_metric(sid, {
            "address": s.record.address,
            "model": str(s.health.get("model") or s.record.info.get("model") or ""),
            "provider": str(s.health.get("provider") or s.record.info.get("provider") or ""),
        })
    yield from (up, draining, offline, inflight, slots, failures, last_check, mps, reported, node_info)
