"""The queue the dispatcher takes tasks from, behind one protocol.

- :class:`LocalQueue` (one gateway): every accepted task waits here, in fair order between
  owners (:mod:`.fairshare`: deficit round robin on megapixels, weighted by class; arrival
  order within an owner), or oldest first with ``access.fair_share`` off; a task backing off
  after a failure waits in a second heap, by ready time, under one timer.
- :class:`SharedQueue` (several gateways on Redis): accepted tasks wait in the store's
  shared queue; before each placement pass this gateway claims what its free node slots can
  start now, and no more, so it never sits on tasks another gateway could run. The fair order
  is decided where the shared queue is claimed (the claim script runs the same deficit round
  robin, in Redis), so it holds across gateways. What it claimed, and its own retries, wait
  locally, oldest first.

The queue reports its own depth; the dispatcher never asks which kind it has.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from ..access_config import AccessConfig
from ..models import TaskRecord, TaskStatus
from ..storage.protocols import SharedQueueStore, TaskStore
from .fairshare import FairShare, Weights

log = structlog.get_logger("photogate.dispatcher")

#: How far past the head of the queue the dispatcher looks for a task it can place
#: (a task that must avoid the node that just failed it should not block the rest).
SCAN_LIMIT = 64
#: A backing-off task this close to its ready time counts as ready: a timer may fire up to
#: a millisecond early (uvloop's resolution), and such a task must not wait for another.
TIMER_SLACK = 0.002
#: Seconds between two looks for claims held nowhere (a claim whose reply was lost).
RECONCILE_INTERVAL = 2.0


def fair_weights(access: AccessConfig) -> Weights | None:
    """How the queue shares the fleet under ``access``; ``None``: first come, first served."""
    return Weights(dict(access.classes), access.default_class) if access.fair_share else None


@dataclass(order=True)
class Queued:
    """A task waiting for a node, with the nodes that already failed it."""

    created_at: float
    seq: int
    task: TaskRecord = field(compare=False)
    tried: set[str] = field(default_factory=set, compare=False)
    #: Loop time before which the task waits: a retry's backoff.
    ready_at: float = field(default=0.0, compare=False)

    @property
    def owner(self) -> str | None:
        return self.task.owner

    @property
    def priority_class(self) -> str | None:
        return self.task.priority_class

    @property
    def cost(self) -> float:
        return self.task.megapixels


class _Fifo:
    """The ready tasks oldest first (``access.fair_share`` off, and a shared queue's local part)."""

    def __init__(self) -> None:
        self._heap: list[Queued] = []

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Queued]:
        return iter(self._heap)

    def push(self, item: Queued) -> None:
        heapq.heappush(self._heap, item)

    def pop(self) -> Queued | None:
        return heapq.heappop(self._heap) if self._heap else None

    def refund(self, items: list[Queued]) -> None:
        for item in items:
            heapq.heappush(self._heap, item)

    def order(self) -> list[Queued]:
        return sorted(self._heap)


class TaskQueue(Protocol):
    """What the dispatcher asks of its queue."""

    #: How often a waiter looks in the store for a task another gateway may finish
    #: (``None``: only this gateway runs tasks, so its own completion wakes the waiter).
    poll_interval: float | None

    @property
    def depth(self) -> int:
        """Every task waiting for a node: here, backing off, or (shared) not claimed yet."""

    def on_ready(self, callback: Callable[[], None]) -> None:
        """``callback`` runs when a task may be ready for placement."""

    def accept(self, task: TaskRecord) -> None:
        """A task the API has just stored."""

    def submit(self, task: TaskRecord, tried: set[str] | None = None, delay: float = 0.0) -> None:
        """Queue ``task`` again (a retry), after ``delay`` seconds."""

    async def fill(self, free_slots: int) -> None:
        """Before a placement pass: take in what is ready (backoffs over, shared claims)."""

    def pop(self) -> Queued | None:
        """The next ready task (in fair order between owners, or oldest first), or ``None``."""

    def push_back(self, items: list[Queued]) -> None:
        """Tasks a pass looked at and could not place."""

    def waiting(self) -> list[tuple[str, float, float]]:
        """(task id, megapixels, seconds until it may start) in dispatch order."""

    def settled(self, task_id: str) -> None:
        """``task_id`` completed or failed here."""

    async def recover(self) -> int:
        """At start: queue again what a previous run left; returns how many."""

    def close(self) -> None:
        """Stop the backoff timer."""


class LocalQueue:
    """Every ready task of this gateway in fair order (``weights`` given) or oldest first;
    retries in a heap by ready time."""

    poll_interval: float | None = None

    def __init__(self, store: TaskStore, weights: Weights | None = None) -> None:
        self.store = store
        self._ready: FairShare[Queued] | _Fifo = _Fifo() if weights is None else FairShare(weights)
        #: Tasks backing off after a failure, by ready time (loop time); moved to the ready tasks
        #: by the pass that finds them ready, under one timer armed for the earliest.
        self._delayed: list[tuple[float, int, Queued]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._seq = itertools.count()
        self._listeners: list[Callable[[], None]] = []

    @property
    def depth(self) -> int:
        return len(self._ready) + len(self._delayed)

    def on_ready(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def _wake(self) -> None:
        for callback in self._listeners:
            callback()

    def accept(self, task: TaskRecord) -> None:
        self.submit(task)

    def submit(self, task: TaskRecord, tried: set[str] | None = None, delay: float = 0.0) -> None:
        item = Queued(task.created_at, next(self._seq), task, tried or set())
        if delay > 0:
            item.ready_at = asyncio.get_running_loop().time() + delay
            heapq.heappush(self._delayed, (item.ready_at, item.seq, item))
        else:
            self._ready.push(item)
        self._wake()

    def _hold(self, task: TaskRecord) -> None:
        self._ready.push(Queued(task.created_at, next(self._seq), task))

    async def fill(self, free_slots: int) -> None:
        self._promote_ready()

    def _promote_ready(self) -> None:
        """Move the tasks whose backoff is over to the queue; arm the timer for the next.
        Every pass does this, so a timer that fires a little early (uvloop rounds to the
        millisecond) only re-arms itself, and no backing-off task is ever left without one."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._delayed and self._delayed[0][0] <= now + TIMER_SLACK:
            self._ready.push(heapq.heappop(self._delayed)[2])
        if self._timer is not None and (not self._delayed or self._timer.when() != self._delayed[0][0]):
            self._timer.cancel()
            self._timer = None
        if self._delayed and self._timer is None:
            self._timer = loop.call_at(self._delayed[0][0], self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self._wake()

    def pop(self) -> Queued | None:
        return self._ready.pop()

    def push_back(self, items: list[Queued]) -> None:
        """Tasks a pass popped (in this order) and could not place: back to their places, and
        their owners get back what the pops charged them."""
        self._ready.refund(items)

    def waiting(self) -> list[tuple[str, float, float]]:
        now = asyncio.get_running_loop().time()
        ready = [(q.task.task_id, q.task.megapixels, 0.0) for q in self._ready.order()]
        return ready + [(q.task.task_id, q.task.megapixels, max(at - now, 0.0)) for at, _, q in sorted(self._delayed)]

    def settled(self, task_id: str) -> None:
        pass

    async def recover(self) -> int:
        """Queue what the store holds as queued or processing (a restart runs them again)."""
        tasks = await self.store.list_tasks([TaskStatus.QUEUED, TaskStatus.PROCESSING])
        for task in tasks:
            if task.status is TaskStatus.PROCESSING:
                await self.store.update_task(task.task_id, status=TaskStatus.QUEUED, server_id=None)
                task.status = TaskStatus.QUEUED
            self.submit(task)
        if tasks:
            log.info("tasks_recovered", count=len(tasks))
        return len(tasks)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class SharedQueue(LocalQueue):
    """Claims from the store's shared queue what this gateway's free slots can start now."""

    poll_interval: float | None = 0.25

    def __init__(self, store: SharedQueueStore, local: TaskStore, *,
                 recover: Callable[[], Awaitable[int]], weights: Weights | None = None) -> None:
        super().__init__(local)  # what this gateway claimed waits oldest first: Redis chose it fairly
        self.shared = store
        #: The fair order of the claims (``None``: the shared queue is claimed oldest first).
        self.weights = weights
        #: Hands the tasks of gateways that died back to the shared queue (the registry's heartbeat).
        self._recover = recover
        #: The claimed tasks this gateway holds (queued here or running).
        self._held: set[str] = set()
        #: Tasks in the shared queue that no gateway has claimed yet (at the last look).
        self.unclaimed = 0
        self._next_reconcile = 0.0

    @property
    def depth(self) -> int:
        return super().depth + self.unclaimed

    def accept(self, task: TaskRecord) -> None:
        self.unclaimed += 1  # the API put it in the shared queue; a pass claims it
        self._wake()

    async def fill(self, free_slots: int) -> None:
        self._promote_ready()
        store = self.shared
        if time.monotonic() >= self._next_reconcile:
            # A claim whose reply was lost with the connection (Redis went away mid-call) is
            # claimed in Redis but held nowhere: hand it back to the queue.
            orphans = await store.claimed_ids() - self._held
            if orphans and await store.unclaim(sorted(orphans)):
                log.warning("claims_returned", count=len(orphans))
            self._next_reconcile = time.monotonic() + RECONCILE_INTERVAL
        want = min(free_slots - super().depth, SCAN_LIMIT)
        if want > 0:
            for task in await store.claim(want, self.weights):
                task.status = TaskStatus.QUEUED
                self._held.add(task.task_id)
                self._hold(task)
        self.unclaimed = await store.queue_length()

    def settled(self, task_id: str) -> None:
        self._held.discard(task_id)

    async def recover(self) -> int:
        return await self._recover()

