"""The dispatcher: a central queue of tasks handed, oldest first, to nodes with a free slot.

Each dispatch streams the stored input to the node's ``POST /v1/enhance`` and streams
the answer into the blob store, reading no more than :mod:`photogate.nodeio` allows. A
node failure (connection error, timeout, 5xx, a result over its bound) puts the task back
at the head of the queue for another node, up to ``max_attempts``; a node's 4xx fails
the task at once; a node's "busy" (503, 429) puts it back without spending an attempt and
holds that node until it has a free slot. A task backing off after a failure waits in a
second heap, by ready time, under one timer. In-flight counters are released in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import aiohttp
import structlog

from .access import OPEN_ACCESS, AccessPolicy
from .balancing import JobView, Strategy
from .blobs import BlobStore, BlobWriter
from .config import DispatchConfig
from .errors import PhotogateError, ServiceUnavailable, StoreUnavailable
from .estimates import Estimator, Running
from .imagecheck import MIME, ImageInfo
from .metrics import GatewayMetrics
from .models import TaskRecord, TaskStatus
from .nodeio import AnswerTooLarge, busy_hold, error_text, iter_capped, result_bound
from .registry import NodeState, Registry
from .storage.sqlite.store import SQLiteStore

if TYPE_CHECKING:
    from .imagechecker import ImageChecker
    from .storage.redis.store import RedisStore

log = structlog.get_logger("photogate.dispatcher")

#: How far past the head of the queue the dispatcher looks for a task it can place
#: (a task that must avoid the node that just failed it should not block the rest).
SCAN_LIMIT = 64
#: A backing-off task this close to its ready time counts as ready: a timer may fire up to
#: a millisecond early (uvloop's resolution), and such a task must not wait for another.
TIMER_SLACK = 0.002


class NodeFailure(Exception):
    """The node could not do the job; another node may. ``counts``: a health failure."""

    def __init__(self, message: str, *, counts: bool = True) -> None:
        super().__init__(message)
        self.counts = counts


class NodeBusy(NodeFailure):
    """The node has no free slot (503, 429): not a failure; the job waits for a free slot,
    and the node is held for up to ``hold`` seconds (its Retry-After)."""

    def __init__(self, message: str, hold: float) -> None:
        super().__init__(message, counts=False)
        self.hold = hold


class JobRejected(Exception):
    """The node refused the job itself (4xx): no other node will do better."""


class StorageFailure(Exception):
    """The gateway's own storage failed the job (a full disk, a missing input): no node is to blame."""


INPUT_MISSING = "the uploaded photo is no longer stored on the gateway (its file was removed); upload it again"


def _not_stored(exc: OSError) -> StorageFailure:
    return StorageFailure(f"the gateway could not store the result ({exc.strerror or exc}); try again later")


async def _stored(write: Any) -> Any:
    try:
        return await write
    except OSError as exc:
        raise _not_stored(exc) from exc


@dataclass(order=True)
class _Queued:
    created_at: float
    seq: int
    task: TaskRecord = field(compare=False)
    tried: set[str] = field(default_factory=set, compare=False)
    #: Monotonic time before which the task waits: a retry's backoff.
    ready_at: float = field(default=0.0, compare=False)


class Dispatcher:
    #: Seconds before a task whose store update failed (a full disk) is run again.
    STORE_RETRY_DELAY = 10.0

    def __init__(
        self,
        store: SQLiteStore | RedisStore,
        blobs: BlobStore,
        registry: Registry,
        session: aiohttp.ClientSession,
        strategy: Strategy,
        *,
        config: DispatchConfig,
        max_queue: int,
        max_pixels: int,
        max_result_bytes: int = 256 * 1024 * 1024,
        multi_backend: bool,
        metrics: GatewayMetrics | None = None,
        shared: bool = False,
        images: ImageChecker,
    ) -> None:
        self.store = store
        #: Checks each node's result under the gateway's image-check memory budget.
        self.images = images
        #: Several gateways on Redis: accepted tasks wait in Redis's shared queue and each
        #: gateway claims what its free node slots can start (``_feed``).
        self.shared = shared
        #: Shared: the claimed tasks this gateway holds (queued here or running).
        self._held: set[str] = set()
        self._next_reconcile = 0.0
        #: Shared: tasks in Redis's queue that no gateway has claimed yet (at the last pass).
        self._unclaimed = 0
        self.blobs = blobs
        self.registry = registry
        self.session = session
        self.strategy = strategy
        self.config = config
        self.max_queue = max_queue
        self.max_pixels = max_pixels
        self.max_result_bytes = max_result_bytes
        self.multi_backend = multi_backend
        self._heap: list[_Queued] = []
        #: Tasks backing off after a failure, by ready time (loop time); moved to ``_heap``
        #: by the pass that finds them ready, under one timer armed for the earliest.
        self._delayed: list[tuple[float, int, _Queued]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._workers: set[asyncio.Task[None]] = set()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        #: Refunds a failed task's charge; photogate.wechat installs its policy at start.
        self.access: AccessPolicy = OPEN_ACCESS
        self.metrics = metrics or GatewayMetrics()
        #: The jobs this gateway runs (task id -> node, size, start), and a count of the
        #: changes to the queue, the jobs and the fleet: what the status estimates read.
        self.running: dict[str, Running] = {}
        self.changes = 0
        self.estimator = Estimator(self)
        registry.subscribe(self.wake)

    # -- queue ---------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._heap) + len(self._delayed) + self._unclaimed

    @property
    def in_flight(self) -> int:
        return len(self._workers)

    def wake(self) -> None:
        self.changes += 1
        self._wake.set()

    def waiting(self) -> list[tuple[str, float, float]]:
        """The tasks queued here in dispatch order: (task id, megapixels, seconds until
        it may start); those backing off after a failure last, by ready time."""
        now = asyncio.get_running_loop().time()
        ready = [(q.task.task_id, q.task.megapixels, 0.0) for q in sorted(self._heap, key=_queue_order)]
        return ready + [(q.task.task_id, q.task.megapixels, max(at - now, 0.0)) for at, _, q in sorted(self._delayed)]

    def check_capacity(self) -> None:
        if self.queued >= self.max_queue:
            raise ServiceUnavailable("队列已满，请稍后重试 (the queue is full; try again later)",
                                     headers={"Retry-After": "30"})

    def submit(self, task: TaskRecord, tried: set[str] | None = None, delay: float = 0.0) -> None:
        item = _Queued(task.created_at, next(self._seq), task, tried or set())
        if delay > 0:
            item.ready_at = asyncio.get_running_loop().time() + delay
            heapq.heappush(self._delayed, (item.ready_at, item.seq, item))
        else:
            heapq.heappush(self._heap, item)
        self.wake()

    def _promote_ready(self) -> None:
        """Move the tasks whose backoff is over to the queue; arm the timer for the next.
        Every pass does this, so a timer that fires a little early (uvloop rounds to the
        millisecond) only re-arms itself, and no backing-off task is ever left without one."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._delayed and self._delayed[0][0] <= now + TIMER_SLACK:
            heapq.heappush(self._heap, heapq.heappop(self._delayed)[2])
        if self._timer is not None and (not self._delayed or self._timer.when() != self._delayed[0][0]):
            self._timer.cancel()
            self._timer = None
        if self._delayed and self._timer is None:
            self._timer = loop.call_at(self._delayed[0][0], self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self.wake()

    def accept(self, task: TaskRecord) -> None:
        """A task the API has just stored: queue it here, or (shared) claim it from Redis's queue."""
        if self.shared:
            self._unclaimed += 1
            self.wake()
        else:
            self.submit(task)

    async def _feed(self) -> None:
        """Claim from the shared queue what the free node slots can start now, and no more,
        so that a gateway never sits on tasks another one could run."""
        store: Any = self.store
        if time.monotonic() >= self._next_reconcile:
            # A claim whose reply was lost with the connection (Redis went away mid-call) is
            # claimed in Redis but held nowhere: hand it back to the queue.
            orphans = await store.claimed_ids() - self._held
            if orphans and await store.unclaim(sorted(orphans)):
                log.warning("claims_returned", count=len(orphans))
            self._next_reconcile = time.monotonic() + 2.0
        free = sum(v.slots - v.inflight for v in self.registry.candidates(self.multi_backend))
        want = min(free - len(self._heap) - len(self._delayed), SCAN_LIMIT)
        if want > 0:
            for task in await store.claim(want):
                task.status = TaskStatus.QUEUED
                self._held.add(task.task_id)
                heapq.heappush(self._heap, _Queued(task.created_at, next(self._seq), task))
        self._unclaimed = await store.queue_length()

    def _backoff(self, task: TaskRecord, tried: set[str]) -> float:
        """No wait while a node that has not failed this task could take it; else 1, 2, 4 ...
        times ``retry_backoff`` s, so a restarting node's few seconds do not use up every attempt."""
        if any(s.server_id not in tried for s in self.registry.serving(self.multi_backend)):
            return 0.0
        return min(self.config.retry_backoff * 2 ** max(task.attempts - 1, 0), 30.0)

    async def recover(self) -> int:
        """Queue what the store holds as queued or processing (a restart runs them again).
        Shared: hand the tasks of gateways that died back to the shared queue."""
        if self.shared:
            return await self.registry.beat()  # type: ignore[attr-defined, no-any-return]
        tasks = await self.store.list_tasks([TaskStatus.QUEUED, TaskStatus.PROCESSING])
        for task in tasks:
            if task.status is TaskStatus.PROCESSING:
                await self.store.update_task(task.task_id, status=TaskStatus.QUEUED, server_id=None)
                task.status = TaskStatus.QUEUED
            self.submit(task)
        if tasks:
            log.info("tasks_recovered", count=len(tasks))
        return len(tasks)

    async def wait_finished(self, task_id: str, timeout: float) -> None:
        """Wait until ``task_id`` completes or fails, at most ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.setdefault(task_id, []).append(future)
        deadline = loop.time() + timeout
        try:
            while (left := deadline - loop.time()) > 0:
                try:
                    # Shared: another gateway may finish it; look in the store now and then.
                    await asyncio.wait_for(asyncio.shield(future), min(left, 0.25) if self.shared else left)
                    return
                except asyncio.TimeoutError:
                    pass
                if self.shared:
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
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            for worker in list(self._workers):
                worker.cancel()
            if self._workers:
                await asyncio.gather(*self._workers, return_exceptions=True)

    async def _place_ready(self) -> None:
        self._promote_ready()
        if self.shared:
            await self._feed()
        skipped: list[_Queued] = []
        try:
            await self._place(skipped)
        finally:
            for item in skipped:
                heapq.heappush(self._heap, item)

    async def _place(self, skipped: list[_Queued]) -> None:
        scanned = 0
        # A strategy that plans ahead (``fastest``) also sees the busy nodes, and may hold a
        # job back for one of them (late binding: nothing is committed to a node's queue).
        plans_ahead = getattr(self.strategy, "plans_ahead", False)
        begin_pass = getattr(self.strategy, "begin_pass", None)
        if begin_pass is not None:
            begin_pass()
        while self._heap and scanned < SCAN_LIMIT:
            if not self.registry.candidates(self.multi_backend):
                break  # no free slot anywhere: wait for a release or a node
            item = heapq.heappop(self._heap)
            scanned += 1
            exclude = frozenset(item.tried)
            candidates = self.registry.candidates(self.multi_backend, exclude=exclude)
            if not candidates:
                skipped.append(item)
                continue
            job = JobView(item.task.task_id, item.task.megapixels, item.task.input_bytes)
            offered = self.registry.views(self.multi_backend, exclude=exclude) if plans_ahead else candidates
            chosen = self.strategy.choose(offered, job)
            if chosen is None or chosen.server_id not in {c.server_id for c in candidates}:
                if plans_ahead:
                    skipped.append(item)  # held for a node that is busy now
                    continue
                log.error("strategy_chose_non_candidate", strategy=getattr(self.strategy, "name", "?"),
                          server_id=getattr(chosen, "server_id", chosen))
                chosen = candidates[0]
            try:
                state = await self.registry.acquire(chosen.server_id)
            except BaseException:
                skipped.append(item)
                raise
            if state is None:
                skipped.append(item)  # another gateway took the last slot first
                continue
            state.last_used = time.time()
            hook = getattr(self.strategy, "on_dispatched", None)
            if hook is not None:
                hook(chosen.server_id, job)
            self.running[job.task_id] = Running(chosen.server_id, job.megapixels, time.monotonic())
            self.changes += 1
            worker = asyncio.create_task(self._run_job(item, state, job), name=f"job-{item.task.task_id}")
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)

    # -- one job -------------------------------------------------------------------------

    async def _run_job(self, item: _Queued, state: NodeState, job: JobView) -> None:
        task = item.task
        server_id = state.server_id
        started = time.monotonic()
        ok = False
        released = False
        attempts_before = task.attempts

        async def node_done(answered: bool, hold: float = 0.0) -> None:
            # The node is free once its answer is in: checking and storing the result must
            # not keep the next photo off it. A busy answer holds it until it has a free slot.
            nonlocal released
            if released:
                return
            released = True
            seconds = time.monotonic() - started
            if answered:
                self.estimator.speeds.learn(server_id, job.megapixels, seconds)
                self.running[task.task_id] = Running(server_id, job.megapixels, started, answered=True)
            await self.registry.release(state, hold=hold)
            hook = getattr(self.strategy, "on_completed", None)
            if hook is not None:
                hook(server_id, job, seconds, answered)

        try:
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
                    writer = await self._send(task, state, node_done)
                    checked = await self._verify_result(writer)
                finally:
                    await processing
                await self.store.update_task(
                    task.task_id, prepare=lambda: self._result_columns(writer, checked),
                    status=TaskStatus.COMPLETED, finished_at=time.time(), error=None,
                )
                self.blobs.keep_result(task.task_id, writer.content)
            except StorageFailure as exc:
                await self._fail(task, str(exc))
            except JobRejected as exc:
                self.metrics.dispatch_failed(server_id, "rejected")
                await self._fail(task, str(exc))
            except NodeBusy as exc:
                # Not a failure: no attempt spent, no health counted; the node is held (no
                # work offered) until one of its jobs ends, a probe finds a slot free, or
                # its Retry-After (0.5 to 30 s) passes.
                self.metrics.dispatch_failed(server_id, "node_busy")
                await node_done(False, hold=exc.hold)
                log.info("node_busy", task_id=task.task_id, server_id=server_id, error=str(exc))
                task.attempts = attempts_before
                await self.store.update_task(task.task_id, status=TaskStatus.QUEUED, server_id=None,
                                             attempts=attempts_before)
                task.status = TaskStatus.QUEUED
                self.submit(task, item.tried)
            except NodeFailure as exc:
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
            else:
                ok = True
                await self.registry.record_dispatch_success(server_id)
                log.info("task_completed", task_id=task.task_id, server_id=server_id,
                         seconds=round(time.monotonic() - started, 3))
                self.metrics.task_completed(task, server_id, time.monotonic() - started)
                self._finished(task.task_id)
                self._held.discard(task.task_id)
        except self.store.ERRORS as exc:
            # The store itself failed (its disk is full, Redis is away): no node is to blame and
            # the task must not be left "processing" until a restart; it runs again once the
            # store can write.
            task.attempts = attempts_before
            log.error("task_store_failed", task_id=task.task_id, error=str(exc), retry_in=self.STORE_RETRY_DELAY)
            self.submit(task, item.tried, self.STORE_RETRY_DELAY)
        finally:
            try:
                await node_done(ok)
            finally:
                self.running.pop(task.task_id, None)
                self.changes += 1

    async def _fail(self, task: TaskRecord, error: str) -> None:
        await self.store.update_task(task.task_id, status=TaskStatus.FAILED, error=error, finished_at=time.time())
        log.warning("task_failed", task_id=task.task_id, error=error)
        self._held.discard(task.task_id)
        self.metrics.task_failed()
        try:
            await self.access.refund(task.owner, task.task_id)
        except Exception:
            log.exception("task_refund_failed", task_id=task.task_id)
        self._finished(task.task_id)

    async def _send(self, task: TaskRecord, state: NodeState,
                    node_done: Callable[[bool], Awaitable[None]] | None = None
                    ) -> BlobWriter:
        """Send the photo to the node and receive its answer; ``node_done(True)`` as soon as
        the answer is fully received. A large result is published here; a small one is left
        in memory, to be published with the task's record (:meth:`_result_columns`)."""
        params = {k: str(v) for k, v in task.params.items() if k in ("scale", "format", "quality") and v is not None}
        headers = {
            "Content-Type": task.input_mime,
            "Authorization": f"Bearer {state.record.node_token}",
        }
        timeout = aiohttp.ClientTimeout(total=self.config.timeout, sock_connect=self.config.connect_timeout)
        url = state.record.base_url + "/v1/enhance"
        kept = self.blobs.input_in_memory(task.task_id)
        try:
            fh = None if kept is not None else await _open_for_read(self.blobs.input_path(task.task_id))
        except FileNotFoundError:
            raise StorageFailure(INPUT_MISSING) from None
        bound = result_bound(task.width, task.height, task.input_bytes, _expected_scale(task, state),
                             self.max_result_bytes)
        writer = self.blobs.result_writer(task.task_id)
        try:
            async with self.session.post(
                url, data=kept if fh is None else fh, params=params, headers=headers, timeout=timeout,
                allow_redirects=False,
            ) as resp:
                if resp.status != 200:
                    detail = await error_text(resp)
                    if resp.status in (401, 403):
                        raise NodeFailure(f"node refused the gateway's credential (HTTP {resp.status}): {detail}")
                    if resp.status in (429, 503):
                        raise NodeBusy(f"node busy (HTTP {resp.status}): {detail}",
                                       busy_hold(resp.headers.get("Retry-After")))
                    if 400 <= resp.status < 500:
                        raise JobRejected(f"the GPU server could not process this image: {detail}")
                    raise NodeFailure(f"node error HTTP {resp.status}: {detail}")
                mime = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if mime not in MIME.values():
                    raise NodeFailure(f"node answered {mime or 'no content type'}, not an image")
                async with contextlib.aclosing(iter_capped(resp, bound, 256 * 1024)) as chunks:
                    async for chunk in chunks:
                        await _stored(writer.write(chunk))
            if node_done is not None:
                await node_done(True)
            if not writer.small:
                await _stored(writer.commit())
        except AnswerTooLarge as exc:
            await writer.abort()
            raise NodeFailure(str(exc)) from exc
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            await writer.abort()
            name = "timed out" if isinstance(exc, asyncio.TimeoutError) else f"{type(exc).__name__}: {exc}"
            raise NodeFailure(f"cannot reach {state.record.address}: {name}") from exc
        except BaseException:
            await writer.abort()
            raise
        finally:
            if fh is not None:
                fh.close()  # a read-only local file: closing it does not block
        return writer

    def _result_columns(self, writer: BlobWriter, checked: ImageInfo | PhotogateError) -> dict[str, Any]:
        """On a worker thread (the ``prepare`` of the completed update): the result's columns,
        after publishing its (checked) file when ``_send`` left that to be done here.
        Raises :class:`StorageFailure` or :class:`NodeFailure`."""
        if isinstance(checked, PhotogateError):
            raise NodeFailure(f"node returned an unreadable image: {checked}") from checked
        if writer.small:
            try:
                writer.publish()
            except OSError as exc:
                writer.discard()
                raise _not_stored(exc) from exc
        # The bytes decide the type, not the node's label (a PNG labelled JPEG downloads as .png).
        return {"result_mime": checked.mime, "result_bytes": writer.size}

    async def _verify_result(self, writer: BlobWriter) -> ImageInfo | PhotogateError:
        """Never call a task completed with a result that is not an image: checked like an
        upload (from memory while it is all there), under the same memory budget. A bad one
        already published is removed; its reason is returned."""
        source = writer.buffered
        try:
            return await self.images.check(writer.final if source is None else source, self.max_pixels * 64)
        except PhotogateError as exc:
            if source is None:
                await asyncio.get_running_loop().run_in_executor(None, writer.final.unlink, True)
            return exc


def _queue_order(item: _Queued) -> tuple[float, int]:
    return item.created_at, item.seq


async def _open_for_read(path: Path) -> BinaryIO:
    """Open ``path`` in the executor; if the caller is cancelled meanwhile, close it when it opens."""
    opening = asyncio.get_running_loop().run_in_executor(None, path.open, "rb")
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(lambda f: f.cancelled() or f.exception() or f.result().close())
        raise


def _expected_scale(task: TaskRecord, state: NodeState) -> float | None:
    """The scale the result is made at: the one asked for, else the one the node reports."""
    for value in (task.params.get("scale"), state.health.get("scale"), state.record.info.get("scale")):
        if isinstance(value, bool):
            continue
        try:
            scale = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(scale) and scale > 0:
            return scale
    return None
