"""Progress and ETA of every task, from the nodes' measured speed and the photos' sizes.

Each node's speed (input megapixels per second, per slot) is learned from the jobs this
gateway ran on it (an EWMA of megapixels over the time from dispatch to the node's answer),
with the ``throughput`` its ``/health`` reports as the prior until it has finished one.

A running task's expected duration is its megapixels over its node's speed; its progress is
the time it has run over that. A queued task's start is found by playing the queue forward
over the serving nodes' slots (each slot free when its running job is expected to end; the
queue in dispatch order, each task to the slot the strategy would give it). That play is a
:class:`QueuePlan`, built at most every :data:`MIN_REBUILD` seconds and only when the queue or
the fleet changed (else every :data:`MAX_AGE` s); between builds its times count down with
the clock. So a status request costs a dictionary lookup and some arithmetic, never a trip
to the store and never a pass over the queue.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .models import TaskRecord, TaskStatus

if TYPE_CHECKING:
    from .registry import NodeState

#: Weight of the newest job in a node's learned speed.
ALPHA = 0.3
#: The queue plan is rebuilt at most this often (seconds), however fast the queue changes ...
MIN_REBUILD = 0.25
#: ... and at least this often, to follow what the nodes learned meanwhile.
MAX_AGE = 5.0
#: Tasks played slot by slot; those behind them are placed by the fleet's total speed.
PLAYED = 2000
#: A running task past its expected duration: it is said to need this share of it still.
OVERDUE_SHARE = 0.1


class SpeedBook:
    """Each node's speed in megapixels per second per slot: learned, else reported."""

    def __init__(self, alpha: float = ALPHA) -> None:
        self.alpha = alpha
        self._learned: dict[str, float] = {}

    def learn(self, server_id: str, megapixels: float, seconds: float) -> None:
        """A job of ``megapixels`` took ``seconds`` from dispatch to the node's answer. The
        first one replaces the node's report (which counts inference alone, not the trip)."""
        if megapixels <= 0 or seconds <= 0:
            return
        sample = megapixels / seconds
        old = self._learned.get(server_id)
        self._learned[server_id] = sample if old is None else self.alpha * sample + (1 - self.alpha) * old

    def speed(self, state: NodeState | None) -> float | None:
        if state is None:
            return None
        learned = self._learned.get(state.server_id)
        return learned if learned is not None else _speed(state.health.get("throughput"))


def _speed(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


@dataclass(frozen=True)
class Running:
    """A job on a node, as the dispatcher tracks it (``started``: monotonic)."""

    server_id: str
    megapixels: float
    started: float
    answered: bool = False


@dataclass(frozen=True)
class Estimate:
    progress: float
    eta_seconds: float | None
    queue_position: int | None = None
    estimated_start_seconds: float | None = None

    def fields(self) -> dict[str, Any]:
        return {
            "progress": round(self.progress, 4),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 2),
            "queue_position": self.queue_position,
            "estimated_start_seconds": (None if self.estimated_start_seconds is None
                                        else round(self.estimated_start_seconds, 2)),
        }


DONE = Estimate(1.0, 0.0)
UNKNOWN_QUEUED = Estimate(0.0, None)


def finished(task: TaskRecord) -> Estimate | None:
    """The estimate of a finished task (it never changes), else ``None``."""
    return DONE if task.status in (TaskStatus.COMPLETED, TaskStatus.FAILED) else None


def running_estimate(elapsed: float, expected: float | None) -> Estimate:
    """Progress and ETA of a job that has run ``elapsed`` of an ``expected`` seconds."""
    if expected is None or expected <= 0:
        return Estimate(0.0, None)
    elapsed = max(elapsed, 0.0)
    # Past its expected time it is said to need a tenth of it still: the bar keeps moving
    # towards 1 and never reaches it before the task completes.
    left = max(expected - elapsed, OVERDUE_SHARE * expected)
    return Estimate(min(elapsed / (elapsed + left), 0.99), left)


@dataclass(frozen=True)
class _Slot:
    server_id: str
    speed: float


class QueuePlan:
    """Where each queued task stands, as of ``built`` (monotonic)."""

    def __init__(self, built: float, places: dict[str, tuple[int, float | None, float | None]]) -> None:
        self.built = built
        #: task id -> (1-based position, seconds until it starts, its own duration), at ``built``.
        self.places = places

    def estimate(self, task_id: str, now: float) -> Estimate | None:
        place = self.places.get(task_id)
        if place is None:
            return None
        position, start, duration = place
        if start is None or duration is None:
            return Estimate(0.0, None, position, None)
        start = max(start - (now - self.built), 0.0)
        return Estimate(0.0, start + duration, position, start)

    @classmethod
    def play(cls, now: float, queue: Sequence[tuple[str, float, float]], nodes: Sequence[NodeState],
             speeds: dict[str, float | None], running: Iterable[Running], plans_ahead: bool) -> QueuePlan:
        """``queue``: (task id, megapixels, seconds until it may start) in dispatch order."""
        known = [s for s in speeds.values() if s is not None]
        fallback = sum(known) / len(known) if known else None
        rate = {n.server_id: speeds.get(n.server_id) or fallback for n in nodes}
        places: dict[str, tuple[int, float | None, float | None]] = {}
        if fallback is None or not nodes:
            for i, (task_id, _, _) in enumerate(queue):
                places[task_id] = (i + 1, None, None)
            return cls(now, places)
        # Each slot's free time: when its running job is expected to end, else now.
        busy: dict[str, list[float]] = {n.server_id: [] for n in nodes}
        for job in running:
            if job.answered or job.server_id not in busy:
                continue
            speed = rate[job.server_id]
            assert speed is not None
            busy[job.server_id].append(max(job.megapixels / speed - (now - job.started), 0.0))
        free: dict[str, list[float]] = {}
        for node in nodes:
            times = sorted(busy[node.server_id])
            free[node.server_id] = times + [0.0] * max(node.slots - len(times), 0)
        every = [(t, n.server_id) for n in nodes for t in free[n.server_id]]
        heapq.heapify(every)
        capacity = sum(rate[n.server_id] * n.slots for n in nodes)  # type: ignore[operator]
        tail_start = 0.0
        for i, (task_id, megapixels, ready) in enumerate(queue):
            if i < PLAYED:
                if plans_ahead:
                    # As ``fastest`` does: the node on which the task would finish first.
                    server_id = min(free, key=lambda s: max(free[s][0], ready) + megapixels / rate[s])  # type: ignore[operator]
                    start = max(heapq.heappop(free[server_id]), ready)
                    duration = megapixels / rate[server_id]  # type: ignore[operator]
                    heapq.heappush(free[server_id], start + duration)
                else:
                    # The first slot to be free takes it.
                    at, server_id = heapq.heappop(every)
                    start = max(at, ready)
                    duration = megapixels / rate[server_id]  # type: ignore[operator]
                    heapq.heappush(every, (start + duration, server_id))
                places[task_id] = (i + 1, start, duration)
                tail_start = start
            else:
                # Far back in a long queue: the fleet's total speed is precise enough.
                tail_start += megapixels / capacity
                places[task_id] = (i + 1, max(tail_start, ready), megapixels / fallback)
        return cls(now, places)


class Estimator:
    """Estimates for the status answers; ``dispatcher`` is the gateway's dispatcher."""

    def __init__(self, dispatcher: Any, clock: Any = time.monotonic, wall: Any = time.time) -> None:
        self.dispatcher = dispatcher
        self.speeds = SpeedBook()
        self._clock = clock
        self._wall = wall
        self._plan: QueuePlan | None = None
        self._plan_version = -1

    def estimate(self, task: TaskRecord) -> Estimate:
        done = finished(task)
        if done is not None:
            return done
        now = self._clock()
        job: Running | None = self.dispatcher.running.get(task.task_id)
        if job is not None:
            if job.answered:  # the result is being checked and stored
                return Estimate(0.99, 0.0)
            return running_estimate(now - job.started, self._expected(job.server_id, job.megapixels))
        if task.status is TaskStatus.PROCESSING:
            # Run by another gateway (shared queue): from the record alone.
            started = task.started_at if task.started_at is not None else task.updated_at
            return running_estimate(self._wall() - started, self._expected(task.server_id, task.megapixels))
        return self.plan(now).estimate(task.task_id, now) or UNKNOWN_QUEUED

    def _expected(self, server_id: str | None, megapixels: float) -> float | None:
        registry = self.dispatcher.registry
        speed = self.speeds.speed(registry.get(server_id)) if server_id else None
        if speed is None:
            known = [v for v in (self.speeds.speed(s) for s in registry.all()) if v is not None]
            speed = sum(known) / len(known) if known else None
        return megapixels / speed if speed else None

    def plan(self, now: float) -> QueuePlan:
        plan = self._plan
        version = self.dispatcher.changes
        if plan is not None and now - plan.built < MAX_AGE and (
                version == self._plan_version or now - plan.built < MIN_REBUILD):
            return plan
        d = self.dispatcher
        nodes = d.registry.serving(d.multi_backend)
        plan = QueuePlan.play(now, d.waiting(), nodes, {n.server_id: self.speeds.speed(n) for n in nodes},
                              list(d.running.values()), bool(getattr(d.strategy, "plans_ahead", False)))
        self._plan, self._plan_version = plan, version
        return plan
