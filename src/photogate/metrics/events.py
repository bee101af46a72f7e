"""The gateway's event metrics: counters and histograms updated where things happen.

Each gateway has its own :class:`~prometheus_client.CollectorRegistry` (never the
process-global default), so several apps in one process (tests) do not collide. Live state
(queue depth, nodes, tasks by state) is not here: :mod:`.live` reads it at scrape time.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram

#: Photos take from well under a second (small photo, fast GPU) to minutes (large, CPU).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Completed jobs are averaged over this many seconds for the live MP/s figures.
THROUGHPUT_WINDOW_S = 60.0


class TimedTask(Protocol):
    """What the task events read of a task (a :class:`~photogate.models.TaskRecord`)."""

    @property
    def attempts(self) -> int: ...

    @property
    def created_at(self) -> float: ...

    @property
    def megapixels(self) -> float: ...

    @property
    def priority_class(self) -> str | None: ...


class Throughput:
    """Input megapixels completed per second over a sliding window, overall and per node."""

    def __init__(self, window: float = THROUGHPUT_WINDOW_S, clock: Callable[[], float] = time.monotonic) -> None:
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
    """The gateway's event counters and histograms, in a registry of their own."""

    def __init__(self, classes: Iterable[str] = ()) -> None:
        #: The configured priority classes: the only values of the ``class`` label (others
        #: count as ``other``), so its cardinality stays bounded; never an owner.
        self.classes = frozenset(classes)
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
        self.class_submitted = Counter(
            "photogate_class_tasks_submitted", "Photos accepted, by priority class", ["class"], registry=r)
        self.class_queue_wait = Histogram(
            "photogate_class_queue_wait_seconds", "Seconds from upload to the first dispatch, by priority class",
            ["class"], buckets=LATENCY_BUCKETS, registry=r)
        self.class_megapixels = Counter(
            "photogate_class_megapixels_processed", "Input megapixels of completed tasks, by priority class",
            ["class"], registry=r)
        self.throughput = Throughput()

    def _class(self, name: str | None) -> str:
        return name if name is not None and name in self.classes else "other"

    # -- events (called by the dispatcher, the API and the webhook) ----------------------------

    def task_accepted(self, priority_class: str | None = None) -> None:
        self.tasks_submitted.inc()
        self.class_submitted.labels(self._class(priority_class)).inc()

    def task_started(self, task: TimedTask) -> None:
        if task.attempts == 1:
            wait = max(time.time() - task.created_at, 0.0)
            self.queue_wait.observe(wait)
            self.class_queue_wait.labels(self._class(task.priority_class)).observe(wait)

    def task_completed(self, task: TimedTask, server_id: str, node_seconds: float) -> None:
        self.tasks_finished.labels("completed").inc()
        self.inference.labels(server_id).observe(node_seconds)
        self.total.observe(max(time.time() - task.created_at, 0.0))
        self.megapixels.labels(server_id).inc(task.megapixels)
        self.class_megapixels.labels(self._class(task.priority_class)).inc(task.megapixels)
        self.throughput.add(server_id, task.megapixels)

    def task_failed(self) -> None:
        self.tasks_finished.labels("failed").inc()

    def dispatch_failed(self, server_id: str, reason: str) -> None:
        self.dispatch_failures.labels(server_id, reason).inc()

    def task_retried(self) -> None:
        self.retries.inc()

    def webhook_auth_failed(self, action: str, reason: str) -> None:
        self.webhook_auth_failures.labels(action, reason).inc()
