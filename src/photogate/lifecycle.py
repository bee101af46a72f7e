"""The gateway's resources, each owned by one aiohttp cleanup context: entered in order
when the app starts, left in reverse when it stops.

state store (with its registry and queue) -> blob store -> image checker -> HTTP session ->
dispatcher -> health monitor -> janitor -> the backend's background work. A context puts its
resource on the :class:`~photogate.gateway.Gateway`; the ones after it may use it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from .blobs import BlobStore
from .dispatch import Dispatcher, NodeClient
from .gateway import Gateway
from .health.monitor import HealthMonitor
from .imagechecker import ImageChecker
from .storage.factory import Backend, open_backend

log = structlog.get_logger("photogate")

CleanupContext = Callable[[web.Application], AsyncIterator[None]]


async def cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel the background tasks and wait for them. A cancellation can be lost inside a
    Redis client call (redis-py turns some into connection errors), so cancel again, a
    bounded number of times, until each one has stopped."""
    for _ in range(50):
        pending = [t for t in tasks if not t.done()]
        if not pending:
            break
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.2)
    stuck = [t.get_name() for t in tasks if not t.done()]
    if stuck:
        log.error("background_tasks_did_not_stop", tasks=stuck)
    await asyncio.gather(*(t for t in tasks if t.done()), return_exceptions=True)


@asynccontextmanager
async def _running(work: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]]) -> AsyncIterator[None]:
    """Run ``work`` as background tasks for the life of the block."""
    tasks = [asyncio.create_task(run(), name=name) for name, run in work]
    try:
        yield
    finally:
        await cancel_all(tasks)


class _Contexts:
    """One cleanup context per resource of one gateway; ``backend`` is set by the first."""

    def __init__(self, gw: Gateway, on_backend: Callable[[Backend], None] | None) -> None:
        self.gw = gw
        self.cfg = gw.config
        self.on_backend = on_backend
        self._backend: Backend | None = None

    @property
    def backend(self) -> Backend:
        assert self._backend is not None, "the state store's context has not run"
        return self._backend

    async def state(self, _app: web.Application) -> AsyncIterator[None]:
        gw = self.gw
        backend = self._backend = await open_backend(self.cfg)
        gw.backend, gw.store, gw.registry = backend, backend.store, backend.registry
        try:
            await gw.settings.open(gw.store)
            gw.settings.apply()  # the runtime changes kept in the store, before the dispatcher starts
            if self.on_backend is not None:
                self.on_backend(backend)
            yield
        finally:
            await backend.close()
            log.info("gateway_stopped")

    async def blobs(self, _app: web.Application) -> AsyncIterator[None]:
        self.gw.blobs = BlobStore(self.cfg.data_path / "blobs")
        await self.gw.blobs.sweep_partials(older_than=self.backend.partials_older_than)
        try:
            yield
        finally:
            self.gw.blobs.close()

    async def images(self, _app: web.Application) -> AsyncIterator[None]:
        images = self.gw.images = ImageChecker(self.cfg.limits.check_memory_bytes)
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, images.close)

    async def session(self, _app: web.Application) -> AsyncIterator[None]:
        # No cookie jar: a proxy must never carry one node's cookies to another.
        session = self.gw.session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
        try:
            yield
        finally:
            await session.close()

    async def dispatcher(self, _app: web.Application) -> AsyncIterator[None]:
        gw, cfg, backend = self.gw, self.cfg, self.backend
        nodes = NodeClient(gw.session, gw.blobs, cfg.dispatch, max_result_bytes=cfg.limits.max_result_bytes)
        gw.dispatcher = Dispatcher(
            gw.store, backend.queue, gw.blobs, gw.registry, nodes, gw.settings, config=cfg.dispatch,
            max_queue=cfg.limits.max_queue, max_pixels=cfg.limits.max_pixels, store_errors=backend.errors,
            metrics=gw.metrics, images=gw.images,
        )
        await gw.dispatcher.recover()
        async with _running([("dispatcher", gw.dispatcher.run)]):
            gw.dispatching = True
            try:
                yield
            finally:
                gw.dispatching = False

    async def monitor(self, _app: web.Application) -> AsyncIterator[None]:
        gw, cfg = self.gw, self.cfg.health_check
        gw.monitor = HealthMonitor(gw.registry, gw.session, interval=cfg.interval, timeout=cfg.timeout)
        async with _running([("health-monitor", gw.monitor.run)]):
            yield

    async def janitor(self, _app: web.Application) -> AsyncIterator[None]:
        async with _running([("janitor", self.gw.janitor)]):
            yield

    async def background(self, _app: web.Application) -> AsyncIterator[None]:
        """What the backend runs while the gateway runs (with Redis: the shared registry's
        heartbeat, and the runtime settings re-read when another gateway changes them)."""
        gw, backend = self.gw, self.backend
        work = list(backend.background)
        interval = backend.sync_interval
        if interval is not None:
            async def watch() -> None:
                await gw.settings.watch(interval, gw.settings.apply)

            work.append(("runtime-settings", watch))
        log.info("gateway_started", data_dir=str(self.cfg.data_path), strategy=gw.strategy_name, **backend.describe,
                 nodes=len(gw.registry.all()))
        async with _running(work):
            yield


def gateway_contexts(gw: Gateway, *, on_backend: Callable[[Backend], None] | None = None) -> list[CleanupContext]:
    """The cleanup contexts that bring ``gw`` up and down, in order. ``on_backend`` is
    told which backend opened (the rate limits keep their buckets in a shared store)."""
    c = _Contexts(gw, on_backend)
    return [c.state, c.blobs, c.images, c.session, c.dispatcher, c.monitor, c.janitor, c.background]
