"""Progress and ETA of every task, from the nodes' measured speed and the photos' sizes.

Each node's pace (seconds per photo: an overhead plus seconds per input megapixel, per
slot) is fitted to the jobs this gateway ran on it (the time from dispatch to the node's
answer), with the ``throughput`` its ``/health`` reports (MP/s) until it has finished one.

A running task's expected duration is its node's pace for its megapixels; its progress is
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
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .models import TaskRecord, TaskStatus

if TYPE_CHECKING:
    from .balancing import Strategy
    from .registry import NodeState

#: The jobs a node's pace is fitted to, and the weight of each older one against the next.
WINDOW = 16
DECAY = 0.7
#: The queue plan is rebuilt at most this often (seconds), however fast the queue changes ...
MIN_REBUILD = 0.25
#: ... and at least this often, to follow what the nodes learned meanwhile.
MAX_AGE = 5.0
#: Tasks played slot by slot; those behind them are placed by the fleet's total speed.
PLAYED = 2000
#: A running task past its expected duration: it is said to need this share of it still.
OVERDUE_SHARE = 0.1


@dataclass(frozen=True)
class Pace:
    """How long a node takes for a photo: ``overhead + megapixels * per_mp`` seconds."""

    overhead: float
    per_mp: float

    def seconds(self, megapixels: float) -> float:
        return self.overhead + megapixels * self.per_mp


class SpeedBook:
    """Each node's pace per slot: fitted to the jobs it finished here, else from the speed
    it reports. A fit needs photos of different sizes (else the time is taken as
    proportional to the megapixels); recent jobs weigh more (``decay`` per job)."""

    def __init__(self, window: int = WINDOW, decay: float = DECAY) -> None:
        self.window = window
        self.decay = decay
        self._samples: dict[str, deque[tuple[float, float]]] = {}
        self._paces: dict[str, Pace] = {}

    def learn(self, server_id: str, megapixels: float, seconds: float) -> None:
        """A job of ``megapixels`` took ``seconds`` from dispatch to the node's answer."""
        if megapixels <= 0 or seconds <= 0:
            return
        samples = self._samples.setdefault(server_id, deque(maxlen=self.window))
        samples.append((megapixels, seconds))
        self._paces[server_id] = fit(samples, self.decay)

    def pace(self, state: NodeState | None) -> Pace | None:
        if state is None:
            return None
        learned = self._paces.get(state.server_id)
        if learned is not None:
            return learned
        reported = _speed(state.health.get("throughput"))
        return None if reported is None else Pace(0.0, 1.0 / reported)


def fit(samples: Sequence[tuple[float, float]], decay: float) -> Pace:
    """Weighted least squares of seconds on megapixels (newest weighs 1, the one before
    ``decay``, ...), kept only when it makes sense (sizes that differ by half or more, a
    positive slope and overhead); else seconds proportional to megapixels."""
    weights = [decay ** (len(samples) - 1 - i) for i in range(len(samples))]
    total = sum(weights)
    sum_x = sum(w * x for w, (x, _) in zip(weights, samples))
    sum_y = sum(w * y for w, (_, y) in zip(weights, samples))
    sizes = [x for x, _ in samples]
    if max(sizes) >= 1.5 * min(sizes):
        mean_x, mean_y = sum_x / total, sum_y / total
        sxx = sum(w * (x - mean_x) ** 2 for w, (x, _) in zip(weights, samples))
        sxy = sum(w * (x - mean_x) * (y - mean_y) for w, (x, y) in zip(weights, samples))
        slope = sxy / sxx if sxx > 0 else 0.0
        overhead = mean_y - slope * mean_x
        if slope > 0 and overhead >= 0:
            return Pace(overhead, slope)
    return Pace(0.0, sum_y / sum_x)


def _speed(value: object) -> float | None:
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
             paces: dict[str, Pace | None], running: Iterable[Running], plans_ahead: bool) -> QueuePlan:
        """``queue``: (task id, megapixels, seconds until it may start) in dispatch order."""
        fallback = average([p for p in paces.values() if p is not None])
        places: dict[str, tuple[int, float | None, float | None]] = {}
        if fallback is None or not nodes:
            for i, (task_id, _, _) in enumerate(queue):
                places[task_id] = (i + 1, None, None)
            return cls(now, places)
        pace: dict[str, Pace] = {n.server_id: paces.get(n.server_id) or fallback for n in nodes}
        # Each slot's free time: when its running job is expected to end, else now.
        busy: dict[str, list[float]] = {n.server_id: [] for n in nodes}
        for job in running:
            if not job.answered and job.server_id in busy:
                left = pace[job.server_id].seconds(job.megapixels) - (now - job.started)
                busy[job.server_id].append(max(left, 0.0))
        free = {n.server_id: sorted(busy[n.server_id]) + [0.0] * max(n.slots - len(busy[n.server_id]), 0)
                for n in nodes}
        every = [(t, n.server_id) for n in nodes for t in free[n.server_id]]
        heapq.heapify(every)
        # The fleet's megapixels per second, for the tail of a long queue.
        capacity = sum(n.slots / pace[n.server_id].per_mp for n in nodes)
        tail_start = 0.0
        for i, (task_id, megapixels, ready) in enumerate(queue):
            if i < PLAYED:
                if plans_ahead:
                    # As ``fastest`` does: the node on which the task would finish first.
                    server_id = min(free, key=lambda s: max(free[s][0], ready) + pace[s].seconds(megapixels))
                    start = max(heapq.heappop(free[server_id]), ready)
                    duration = pace[server_id].seconds(megapixels)
                    heapq.heappush(free[server_id], start + duration)
                else:
                    # The first slot to be free takes it.
                    at, server_id = heapq.heappop(every)
                    start = max(at, ready)
                    duration = pace[server_id].seconds(megapixels)
                    heapq.heappush(every, (start + duration, server_id))
                places[task_id] = (i + 1, start, duration)
                tail_start = start
            else:
                # Far back in a long queue: the fleet's total speed is precise enough.
                tail_start += megapixels / capacity
                places[task_id] = (i + 1, max(tail_start, ready), fallback.seconds(megapixels))
        return cls(now, places)


def average(paces: Sequence[Pace]) -> Pace | None:
    if not paces:
        return None
    return Pace(sum(p.overhead for p in paces) / len(paces), sum(p.per_mp for p in paces) / len(paces))


class Fleet(Protocol):
    """The nodes, as the estimates read them (the registry)."""

    def get(self, server_id: str) -> NodeState | None: ...
    def all(self) -> list[NodeState]: ...
    def serving(self, multi_backend: bool) -> list[NodeState]: ...


class DispatchState(Protocol):
    """What the estimates read of the dispatcher."""

    @property
    def registry(self) -> Fleet: ...
    @property
    def strategy(self) -> Strategy: ...
    @property
    def multi_backend(self) -> bool: ...
    @property
    def running(self) -> dict[str, Running]: ...
    @property
    def changes(self) -> int: ...
    def waiting(self) -> list[tuple[str, float, float]]: ...


class Estimator:
    """Estimates for the status answers; ``dispatcher`` is the gateway's dispatcher."""

    def __init__(self, dispatcher: DispatchState, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.dispatcher = dispatcher
        self.speeds = SpeedBook()
        self._clock = clock
        self._wall = wall
        self._plan: QueuePlan | None = None
        self._plan_version = -1
        self._min_rebuild = MIN_REBUILD

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
        pace = self.speeds.pace(registry.get(server_id)) if server_id else None
        if pace is None:  # a node with no report and no history yet: as the others
            pace = average([p for p in (self.speeds.pace(s) for s in registry.all()) if p is not None])
        return None if pace is None else pace.seconds(megapixels)

    def plan(self, now: float) -> QueuePlan:
        plan = self._plan
        version = self.dispatcher.changes
        if plan is not None and now - plan.built < MAX_AGE and (
                version == self._plan_version or now - plan.built < self._min_rebuild):
            return plan
        d = self.dispatcher
        began = time.perf_counter()
        nodes = d.registry.serving(d.multi_backend)
        plan = QueuePlan.play(now, d.waiting(), nodes, {n.server_id: self.speeds.pace(n) for n in nodes},
                              list(d.running.values()), d.strategy.plans_ahead)
        # A long queue (milliseconds a build) is played less often: at most a tenth of the loop.
        self._min_rebuild = max(MIN_REBUILD, 10 * (time.perf_counter() - began))
        self._plan, self._plan_version = plan, version
        return plan
