"""Prometheus metrics: ``GET /metrics`` and the counters the gateway's modules bump.

Each gateway has its own :class:`~prometheus_client.CollectorRegistry` (never the
process-global default), so several apps in one process (tests) do not collide.
Events (requests, task latencies, dispatch failures, webhook auth failures) are
counters and histograms updated where they happen; live state (queue depth, tasks by
state, node health, in-flight, slots, throughput) is read by a collector at scrape
time, so it can never drift from what the gateway really holds.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from . import __version__
from .errors import Handler, Unauthorized
from .netutil import bearer, credential_refused, same_secret

if TYPE_CHECKING:
    from .gateway import Gateway
    from .models import TaskRecord

log = structlog.get_logger("photogate.metrics")

#: Photos take from well under a second (small photo, fast GPU) to minutes (large, CPU).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Completed jobs are averaged over this many seconds for the live MP/s figures.
THROUGHPUT_WINDOW_S = 60.0


class Throughput:
    """Input megapixels completed per second over a sliding window, overall and per node."""

    def __init__(self, window: float = THROUGHPUT_WINDOW_S, clock=time.monotonic) -> None:  # type: ignore[no-untyped-def]
        self.window = window
        self._clock = clock
        self._done: deque[tuple[float, str, float]] = deque(maxlen=100_000)

    def add(self, server_id: str, megapixels: float) -> None:
        self._done.append((self._clock(), server_id, megapixels))

    def rates(self) -> tuple[float, dict[str, float]]:
        """(fleet MP/s, {server_id: MP/s}) over the window."""
        cutoff = self._clock() - self.window
        while self._done and self._done[0][0] < cutoff:
            self._done.popleft()
        per_node: dict[str, float] = {}
        for _, sid, mp in self._done:
            per_node[sid] = per_node.get(sid, 0.0) + mp
        return sum(per_node.values()) / self.window, {k: v / self.window for k, v in per_node.items()}


class GatewayMetrics:
    """The gateway's metrics: event counters plus a live-state collector over ``gateway``."""

    def __init__(self, gateway: Gateway | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "photogate_http_requests", "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"], registry=r)
        self.tasks_submitted = Counter("photogate_tasks_submitted", "Photos accepted for enhancement", registry=r)
        self.tasks_finished = Counter(
            "photogate_tasks_finished", "Tasks that reached a final state", ["status"], registry=r)
        self.queue_wait = Histogram(
            "photogate_task_queue_wait_seconds", "Seconds from upload to the first dispatch",
            buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram(
            "photogate_task_inference_seconds",
            "Seconds a node took for one photo: dispatch to stored result, transfers included",
            ["server_id"], buckets=LATENCY_BUCKETS, registry=r)
        self.total = Histogram(
            "photogate_task_total_seconds", "Seconds from upload to the result, completed tasks",
            buckets=LATENCY_BUCKETS, registry=r)
        self.megapixels = Counter(
            "photogate_megapixels_processed", "Input megapixels of completed tasks (rate() gives MP/s)",
            ["server_id"], registry=r)
        self.dispatch_failures = Counter(
            "photogate_dispatch_failures",
            "Dispatches that failed, by node and reason (node_error, node_busy, rejected)",
            ["server_id", "reason"], registry=r)
        self.retries = Counter(
            "photogate_task_retries", "Tasks put back in the queue after a node failed them", registry=r)
        self.webhook_auth_failures = Counter(
            "photogate_webhook_auth_failures", "Webhook calls refused for a missing or wrong secret",
            ["action", "reason"], registry=r)
        self.throughput = Throughput()
        self._task_counts: dict[str, int] = {}
        self.gateway = gateway
        if gateway is not None:
            r.register(_LiveState(self, gateway))

    # -- events (called by the dispatcher, the API and the webhook) ----------------------------

    def task_accepted(self) -> None:
        self.tasks_submitted.inc()

    def task_started(self, task: TaskRecord) -> None:
        if task.attempts == 1:
            self.queue_wait.observe(max(time.time() - task.created_at, 0.0))

    def task_completed(self, task: TaskRecord, server_id: str, node_seconds: float) -> None:
        self.tasks_finished.labels("completed").inc()
        self.inference.labels(server_id).observe(node_seconds)
        self.total.observe(max(time.time() - task.created_at, 0.0))
        self.megapixels.labels(server_id).inc(task.megapixels)
        self.throughput.add(server_id, task.megapixels)

    def task_failed(self) -> None:
        self.tasks_finished.labels("failed").inc()

    def dispatch_failed(self, server_id: str, reason: str) -> None:
        self.dispatch_failures.labels(server_id, reason).inc()

    def task_retried(self) -> None:
        self.retries.inc()

    def webhook_auth_failed(self, action: str, reason: str) -> None:
        self.webhook_auth_failures.labels(action, reason).inc()

    # -- scraping ------------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read what only the store knows (tasks by state) just before a scrape."""
        if self.gateway is not None and hasattr(self.gateway, "store"):
            self._task_counts = await self.gateway.store.count_tasks()

    async def exposition(self) -> bytes:
        await self.refresh()
        return generate_latest(self.registry)


class _LiveState(Collector):
    """Gauges read from the registry and the dispatcher at scrape time."""

    def __init__(self, metrics: GatewayMetrics, gateway: Gateway) -> None:
        self.metrics = metrics
        self.gateway = gateway

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: its families depend on what the gateway holds

    def collect(self) -> Iterator[Metric]:
        gw = self.gateway
        info = InfoMetricFamily("photogate", "Gateway version and balancing")
        info.add_metric([], {"version": __version__, "strategy": gw.strategy_name,
                             "multi_backend": str(gw.multi_backend).lower()})
        yield info
        if not hasattr(gw, "dispatcher"):  # not started yet
            return
        disp, reg = gw.dispatcher, gw.registry
        yield GaugeMetricFamily("photogate_queue_depth", "Tasks waiting for a free slot", value=disp.queued)
        yield GaugeMetricFamily("photogate_in_flight", "Photos being enhanced on nodes now", value=disp.in_flight)
        tasks = GaugeMetricFamily("photogate_tasks", "Stored tasks by state (until they expire)", labels=["state"])
        for state, count in sorted(self.metrics._task_counts.items()):
            tasks.add_metric([state], count)
        yield tasks
        nodes = reg.all()
        serving = reg.serving(gw.multi_backend)
        yield GaugeMetricFamily("photogate_nodes", "Registered GPU nodes", value=len(nodes))
        yield GaugeMetricFamily("photogate_nodes_serving", "Healthy, non-draining nodes that get new work",
                                value=len(serving))
        yield GaugeMetricFamily("photogate_slots", "Slots of the nodes that get new work",
                                value=sum(s.slots for s in serving))
        fleet_mps, node_mps = self.metrics.throughput.rates()
        yield GaugeMetricFamily(
            "photogate_throughput_megapixels_per_second",
            f"Input megapixels completed per second over the last {THROUGHPUT_WINDOW_S:g} s", value=fleet_mps)
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


# -- aiohttp wiring -----------------------------------------------------------------------------

METRICS = web.AppKey("photogate.metrics", GatewayMetrics)


def _route(request: web.Request) -> str:
    # The route template, never the raw path: task ids and scanners' junk must not
    # become label values.
    resource = request.match_info.route.resource
    if resource is None:
        return "unmatched"
    return resource.canonical


def metrics_middleware(metrics: GatewayMetrics):  # type: ignore[no-untyped-def]
    """Count every answered request by route template, method and status."""

    # The labelled children, looked up once per (route, method, status): labels() is not free
    # and this runs on every request. Route templates and methods are few (unmatched paths
    # share one label), so the dict stays small.
    children: dict[tuple[str, str, int], Any] = {}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            key = (_route(request), request.method, status)
            child = children.get(key)
            if child is None:
                child = metrics.http_requests.labels(key[0], key[1], str(status))
                if len(children) < 1024:
                    children[key] = child
            child.inc()

    return middleware


async def metrics_handler(request: web.Request) -> web.Response:
    gw_metrics = request.app[METRICS]
    gateway = gw_metrics.gateway
    token = gateway.config.metrics.token if gateway is not None else ""
    if token and not same_secret(bearer(request), token):
        credential_refused(request)
        raise Unauthorized("metrics token required (Authorization: Bearer ...)", headers={"WWW-Authenticate": "Bearer"})
    body = await gw_metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"})


def setup_metrics(app: web.Application, metrics: GatewayMetrics) -> None:
    """``GET /metrics`` and the request-counting middleware (outermost, so it sees final statuses)."""
    app[METRICS] = metrics
    app.middlewares.insert(0, metrics_middleware(metrics))
    app.router.add_get("/metrics", metrics_handler)
