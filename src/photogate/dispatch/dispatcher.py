"""The dispatcher: hands queued tasks, oldest first, to nodes with a free slot, and runs each job.

Where the tasks wait is the queue's business (:mod:`.queue`); talking to the node is the node
client's (:mod:`.nodeclient`). Here: which node (the strategy, read from the runtime settings
at each pass), and what each outcome means. A node failure puts the task back for another
node, up to ``max_attempts``; a node's 4xx fails the task at once; a node's "busy" (503, 429)
puts it back without spending an attempt and holds that node until it has a free slot. A
store that cannot write (a full disk, Redis away) runs the task again later. In-flight
counters are released in ``finally``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from ..access import OPEN_ACCESS, AccessPolicy
from ..balancing import JobView, Strategy
from ..blobs import BlobStore, BlobWriter
from ..config import DispatchConfig
from ..errors import PhotogateError, ServiceUnavailable, StoreUnavailable
from ..estimates import Estimator, Running
from ..imagecheck import ImageInfo
from ..models import TaskRecord, TaskStatus
from ..registry import NodeState, Registry
from ..resultcheck import ResultSpec
from ..storage.protocols import TaskStore
from .nodeclient import JobRejected, NodeBusy, NodeClient, NodeFailure, StorageFailure, not_stored
from .queue import SCAN_LIMIT, Queued, TaskQueue

if TYPE_CHECKING:
    from ..imagechecker import ImageChecker

log = structlog.get_logger("photogate.dispatcher")


class PlacementSettings(Protocol):
    """What the dispatcher reads at each placement: the runtime settings in use."""

    @property
    def strategy(self) -> Strategy: ...
    @property
    def multi_backend(self) -> bool: ...
    def on_change(self, callback: Callable[[], None]) -> None: ...


class DispatchEvents(Protocol):
    """The counters the dispatcher moves (the gateway's metrics)."""

    def task_started(self, task: TaskRecord) -> None: ...
    def task_completed(self, task: TaskRecord, server_id: str, node_seconds: float) -> None: ...
    def task_failed(self) -> None: ...
    def dispatch_failed(self, server_id: str, reason: str) -> None: ...
    def task_retried(self) -> None: ...


class _NodeSlot:
    """One job's hold on a node slot: released once (the node is free once its answer is in:
    checking and storing the result must not keep the next photo off it)."""

    def __init__(self, dispatcher: Dispatcher, state: NodeState, job: JobView) -> None:
        self.dispatcher = dispatcher
        self.state = state
        self.job = job
        self.started = time.monotonic()
        #: Sent beyond the node's slots (pipelined): it waits in the node's queue first.
        self.waits = state.inflight > state.slots
        self.released = False

    async def release(self, answered: bool, hold: float = 0.0) -> None:
        """Give the slot back; a busy answer holds the node until it has a free slot."""
        if self.released:
            return
        self.released = True
        d, server_id, job = self.dispatcher, self.state.server_id, self.job
        now = time.monotonic()
        seconds = now - self.started
        if answered:
            # A job that waited in the node's queue ran from the answer before it.
            began = max(self.started, self.state.last_answer) if self.waits else self.started
            self.state.last_answer = now
            d.estimator.speeds.learn(server_id, job.megapixels, now - began)
            d.running[job.task_id] = Running(server_id, job.megapixels, self.started, answered=True)
            # If the next placement pass sends this node a job, the time until then is the
            # gateway's per-job gap (what ``pipeline_depth`` weighs against the job time).
            self.state.freed_at = now
        await d.registry.release(self.state, hold=hold)
        d.strategy.on_completed(server_id, job, seconds, answered)


class Dispatcher:
    #: Seconds before a task whose store update failed (a full disk) is run again.
    STORE_RETRY_DELAY = 10.0

    def __init__(
        self,
        store: TaskStore,
        queue: TaskQueue,
        blobs: BlobStore,
        registry: Registry,
        nodes: NodeClient,
        settings: PlacementSettings,
        *,
        config: DispatchConfig,
        max_queue: int,
        max_pixels: int,
        store_errors: tuple[type[BaseException], ...],
        metrics: DispatchEvents,
        images: ImageChecker,
    ) -> None:
        self.store = store
        #: What the store raises when it cannot write (its disk is full, Redis is away).
        self.store_errors = store_errors
        self.queue = queue
        #: Checks each node's result under the gateway's image-check memory budget.
        self.images = images
        self.blobs = blobs
        self.registry = registry
        self.nodes = nodes
        self.settings = settings
        self.config = config
        self.max_queue = max_queue
        self.max_pixels = max_pixels
        self._wake = asyncio.Event()
        #: When the placement pass under way began (the gaps it measures start before it).
        self._pass_began = 0.0
        self._workers: set[asyncio.Task[None]] = set()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        #: Refunds a failed task's charge; photogate.wechat installs its policy at start.
        self.access: AccessPolicy = OPEN_ACCESS
        self.metrics = metrics
        #: The jobs this gateway runs (task id -> node, size, start), and a count of the
        #: changes to the queue, the jobs and the fleet: what the status estimates read.
        self.running: dict[str, Running] = {}
        self.changes = 0
        self.estimator = Estimator(self)
        registry.subscribe(self.wake)
        queue.on_ready(self.wake)
        settings.on_change(self.wake)

    # -- what others read ------------------------------------------------------------------

    @property
    def strategy(self) -> Strategy:
        return self.settings.strategy

    @property
    def multi_backend(self) -> bool:
        return self.settings.multi_backend

    @property
    def queued(self) -> int:
        return self.queue.depth

    @property
    def in_flight(self) -> int:
        return len(self._workers)

    def wake(self) -> None:
        self.changes += 1
        self._wake.set()

    def waiting(self) -> list[tuple[str, float, float]]:
        """The tasks queued here in dispatch order: (task id, megapixels, seconds until
        it may start); those backing off after a failure last, by ready time."""
        return self.queue.waiting()

    def check_capacity(self) -> None:
        if self.queued >= self.max_queue:
            raise ServiceUnavailable("队列已满，请稍后重试 (the queue is full; try again later)",
                                     headers={"Retry-After": "30"})

    def accept(self, task: TaskRecord) -> None:
        """A task the API has just stored."""
        self.queue.accept(task)

    def submit(self, task: TaskRecord, tried: set[str] | None = None, delay: float = 0.0) -> None:
        self.queue.submit(task, tried, delay)

    def _backoff(self, task: TaskRecord, tried: set[str]) -> float:
        """No wait while a node that has not failed this task could take it; else 1, 2, 4 ...
        times ``retry_backoff`` s, so a restarting node's few seconds do not use up every attempt."""
        if any(s.server_id not in tried for s in self.registry.serving(self.multi_backend)):
            return 0.0
        return min(self.config.retry_backoff * 2.0 ** max(task.attempts - 1, 0), 30.0)

    async def recover(self) -> int:
        """At start: run again what a previous run left queued or processing."""
        return await self.queue.recover()

    async def wait_finished(self, task_id: str, timeout: float) -> None:
        """Wait until ``task_id`` completes or fails, at most ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.setdefault(task_id, []).append(future)
        deadline = loop.time() + timeout
        poll = self.queue.poll_interval  # another gateway may finish it: look in the store now and then
        try:
            while (left := deadline - loop.time()) > 0:
                try:
                    await asyncio.wait_for(asyncio.shield(future), left if poll is None else min(left, poll))
                    return
                except asyncio.TimeoutError:
                    if poll is None:
                        continue
                try:
                    task = await self.store.get_task(task_id)
                except StoreUnavailable:
                    continue
                if task is None or task.status in (TaskStatus.COMPLETED, TaskStatus.FAILED):
                    return
        finally:
            waiters = self._waiters.get(task_id, [])
            if future in waiters:
                waiters.remove(future)
            if not waiters:
                self._waiters.pop(task_id, None)

    def _finished(self, task_id: str) -> None:
        self.blobs.forget_input(task_id)
        self.queue.settled(task_id)
        for future in self._waiters.pop(task_id, []):
            if not future.done():
                future.set_result(None)

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                try:
                    await self._place_ready()
                except StoreUnavailable:
                    # Redis is away: the shared registry's heartbeat logs it and wakes us again.
                    log.debug("placement_deferred", reason="the state store is unreachable")
        finally:
            self.queue.close()
            for worker in list(self._workers):
                worker.cancel()
            if self._workers:
                await asyncio.gather(*self._workers, return_exceptions=True)

    async def _place_ready(self) -> None:
        self._pass_began = began = time.monotonic()
        depth = self.strategy.pipeline_depth
        free = sum(v.openings for v in self.registry.candidates(self.multi_backend, depth=depth))
        await self.queue.fill(free)
        skipped: list[Queued] = []
        try:
            await self._place(skipped)
        finally:
            self.queue.push_back(skipped)
            # A node freed before this pass that got no job in it: its wait until the next is
            # no gap of ours (no work, or work held for another node).
            for state in self.registry.all():
                if state.freed_at is not None and state.freed_at <= began:
                    state.freed_at = None

    async def _place(self, skipped: list[Queued]) -> None:
        strategy = self.strategy
        # A strategy that plans ahead (``fastest``) also sees the busy nodes, and may hold a
        # job back for one of them (late binding: nothing is committed to a node's queue).
        # A strategy with a pipeline depth for a node is offered it beyond its free slots.
        strategy.begin_pass()
        depth = strategy.pipeline_depth
        for _ in range(SCAN_LIMIT):
            if not self.registry.candidates(self.multi_backend, depth=depth):
                break  # no free slot anywhere: wait for a release or a node
            item = self.queue.pop()
            if item is None:
                break
            exclude = frozenset(item.tried)
            candidates = self.registry.candidates(self.multi_backend, exclude=exclude, depth=depth)
            if not candidates:
                skipped.append(item)
                continue
            job = JobView(item.task.task_id, item.task.megapixels, item.task.input_bytes)
            offered = (self.registry.views(self.multi_backend, exclude=exclude, depth=depth)
                       if strategy.plans_ahead else candidates)
            chosen = strategy.choose(offered, job)
            granted = {c.server_id: c.depth for c in candidates}
            if chosen is None or chosen.server_id not in granted:
                if strategy.plans_ahead:
                    skipped.append(item)  # held for a node that is busy now
                    continue
                log.error("strategy_chose_non_candidate", strategy=strategy.name or "?",
                          server_id=chosen.server_id if chosen is not None else None)
                chosen = candidates[0]
            try:
                state = await self.registry.acquire(chosen.server_id, granted[chosen.server_id])
            except BaseException:
                skipped.append(item)
                raise
            if state is None:
                skipped.append(item)  # another gateway took the last slot first
                continue
            self._start(item, state, job, strategy)

    def _start(self, item: Queued, state: NodeState, job: JobView, strategy: Strategy) -> None:
        state.last_used = time.time()
        if state.freed_at is not None and state.freed_at <= self._pass_began:
            state.note_gap(time.monotonic() - state.freed_at)
            state.freed_at = None
        strategy.on_dispatched(state.server_id, job)
        self.running[job.task_id] = Running(state.server_id, job.megapixels, time.monotonic())
        self.changes += 1
        worker = asyncio.create_task(self._run_job(item, _NodeSlot(self, state, job)), name=f"job-{job.task_id}")
        self._workers.add(worker)
        worker.add_done_callback(self._workers.discard)

    # -- one job -------------------------------------------------------------------------

    async def _run_job(self, item: Queued, slot: _NodeSlot) -> None:
        task = item.task
        ok = False
        attempts_before = task.attempts
        try:
            ok = await self._attempt(item, slot, attempts_before)
        except self.store_errors as exc:
            # The store itself failed (its disk is full, Redis is away): no node is to blame and
            # the task must not be left "processing" until a restart; it runs again once the
            # store can write.
            task.attempts = attempts_before
            log.error("task_store_failed", task_id=task.task_id, error=str(exc), retry_in=self.STORE_RETRY_DELAY)
            self.submit(task, item.tried, self.STORE_RETRY_DELAY)
        finally:
            try:
                await slot.release(ok)
            finally:
                self.running.pop(task.task_id, None)
                self.changes += 1

    async def _attempt(self, item: Queued, slot: _NodeSlot, attempts_before: int) -> bool:
        """Run the job once on ``slot``'s node and record the outcome; True when it completed."""
        task, server_id = item.task, slot.state.server_id
        task.attempts += 1
        # Recorded while the photo travels; the outcome is written only once this write
        # is done, so the two never cross (on either backend).
        processing = asyncio.ensure_future(self.store.update_task(
            task.task_id, status=TaskStatus.PROCESSING, server_id=server_id,
            attempts=task.attempts, started_at=time.time(), error=None,
        ))
        log.info("task_dispatched", task_id=task.task_id, server_id=server_id, attempt=task.attempts)
        self.metrics.task_started(task)
        try:
            try:
                writer = await self.nodes.send(task, slot.state, slot.release)
                checked = await self._verify_result(writer, self.nodes.result_spec(task, slot.state,
                                                                                   self.max_pixels * 64))
            finally:
                await processing
            # The result's file is durable before the record that points at it.
            columns = await self._publish_result(writer, checked)
            await self.store.update_task(
                task.task_id, status=TaskStatus.COMPLETED, finished_at=time.time(), error=None, **columns,
            )
            self.blobs.keep_result(task.task_id, writer.content)
        except StorageFailure as exc:
            await self._fail(task, str(exc))
        except JobRejected as exc:
            self.metrics.dispatch_failed(server_id, "rejected")
            await self._fail(task, str(exc))
        except NodeBusy as exc:
            await self._node_busy(item, slot, exc, attempts_before)
        except NodeFailure as exc:
            await self._node_failed(item, server_id, exc)
        else:
            await self._completed(task, server_id, slot.started)
            return True
        return False

    async def _node_busy(self, item: Queued, slot: _NodeSlot, exc: NodeBusy, attempts_before: int) -> None:
        # Not a failure: no attempt spent, no health counted; the node is held (no work
        # offered) until one of its jobs ends, a probe finds a slot free, or its
        # Retry-After (0.5 to 30 s) passes.
        task, server_id = item.task, slot.state.server_id
        self.metrics.dispatch_failed(server_id, "node_busy")
        await slot.release(False, hold=exc.hold)
        log.info("node_busy", task_id=task.task_id, server_id=server_id, error=str(exc))
        task.attempts = attempts_before
        await self.store.update_task(task.task_id, status=TaskStatus.QUEUED, server_id=None,
                                     attempts=attempts_before)
        task.status = TaskStatus.QUEUED
        self.submit(task, item.tried)

    async def _node_failed(self, item: Queued, server_id: str, exc: NodeFailure) -> None:
        task = item.task
        self.metrics.dispatch_failed(server_id, "node_error" if exc.counts else "node_busy")
        if exc.counts:
            await self.registry.record_dispatch_failure(server_id, str(exc))
        log.warning("dispatch_failed", task_id=task.task_id, server_id=server_id, error=str(exc),
                    attempt=task.attempts)
        if task.attempts >= self.config.max_attempts:
            await self._fail(task, f"enhancement failed after {task.attempts} attempts; last error: {exc}")
        else:
            await self.store.update_task(task.task_id, status=TaskStatus.QUEUED, server_id=None, error=str(exc))
            task.status = TaskStatus.QUEUED
            item.tried.add(server_id)
            self.submit(task, item.tried, self._backoff(task, item.tried))
            self.metrics.task_retried()

    async def _completed(self, task: TaskRecord, server_id: str, started: float) -> None:
        await self.registry.record_dispatch_success(server_id)
        log.info("task_completed", task_id=task.task_id, server_id=server_id,
                 seconds=round(time.monotonic() - started, 3))
        self.metrics.task_completed(task, server_id, time.monotonic() - started)
        self._finished(task.task_id)

    async def _fail(self, task: TaskRecord, error: str) -> None:
        await self.store.update_task(task.task_id, status=TaskStatus.FAILED, error=error, finished_at=time.time())
        log.warning("task_failed", task_id=task.task_id, error=error)
        self.queue.settled(task.task_id)
        self.metrics.task_failed()
        try:
            await self.access.refund(task.owner, task.task_id)
        except Exception:
            log.exception("task_refund_failed", task_id=task.task_id)
        self._finished(task.task_id)

    # -- the result ------------------------------------------------------------------------

    async def _publish_result(self, writer: BlobWriter, checked: ImageInfo | PhotogateError) -> dict[str, Any]:
        """The result's columns, after publishing its (checked) file durably when the node
        client left that to be done here (off the store's thread, its directory fsync shared).
        Raises :class:`StorageFailure` or :class:`NodeFailure`."""
        if isinstance(checked, PhotogateError):
            raise NodeFailure(f"node returned an unreadable image: {checked}") from checked
        if writer.small:
            try:
                await writer.commit()
            except OSError as exc:
                await writer.abort()
                raise not_stored(exc) from exc
        # The bytes decide the type, not the node's label (a PNG labelled JPEG downloads as .png).
        return {"result_mime": checked.mime, "result_bytes": writer.size}

    async def _verify_result(self, writer: BlobWriter, spec: ResultSpec) -> ImageInfo | PhotogateError:
        """Never call a task completed with a result that is not the image asked for: its
        container checked (from memory while it is all there) on the image checker's threads
        (:mod:`photogate.resultcheck`). A bad one already published is removed; its reason is returned."""
        source = writer.buffered
        try:
            return await self.images.check_result(writer.final if source is None else source, spec)
        except PhotogateError as exc:
            if source is None:
                await asyncio.get_running_loop().run_in_executor(None, writer.final.unlink, True)
            return exc
