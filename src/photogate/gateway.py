"""The gateway's services wired together, and the settings that change at runtime.

``Gateway`` owns the store, blob store, registry, dispatcher and health monitor, and
the runtime-changeable settings (strategy, multi-backend mode, health-check interval).
Every change is audited; a change of the strategy or of multi-backend mode is kept in the
store (:mod:`photogate.runtime`) and wins over the config file until it is reset.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from .audit import audit
from .balancing import Strategy, load_strategy
from .blobs import BlobStore
from .config import Config, load_config
from .dispatcher import Dispatcher
from .errors import StoreUnavailable
from .health.monitor import HealthMonitor
from .imagechecker import ImageChecker
from .metrics import GatewayMetrics
from .metrics.live import FleetReading, LiveSnapshot
from .registry import Registry
from .runtime import GROUPS, RuntimeSettings, file_values
from .storage.sqlite.store import SQLiteStore

if TYPE_CHECKING:
    from .storage.redis.store import RedisStore

log = structlog.get_logger("photogate")


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
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


class Gateway:
    def __init__(self, config: Config, config_path: str | None = None, rng: random.Random | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.rng = rng or random.Random()
        self.strategy_name = config.balancer.strategy
        self.strategy_options: dict[str, Any] = dict(config.balancer.options)
        self.strategy: Strategy = load_strategy(self.strategy_name, self.strategy_options, self.rng)
        self.multi_backend = config.multi_backend.enabled
        #: The file's values of the runtime keys and the store's runtime changes over them.
        self.settings = RuntimeSettings(file_values(config))
        self.started_at = time.time()
        self.metrics = GatewayMetrics()  # its own registry; /metrics reads live state from live_snapshot()
        # Filled by start():
        self.store: SQLiteStore | RedisStore
        self.blobs: BlobStore
        self.registry: Registry
        self.session: aiohttp.ClientSession
        self.dispatcher: Dispatcher
        self.monitor: HealthMonitor
        #: Every image check (uploads, node results) goes through it, under one memory budget.
        self.images: ImageChecker

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Gateway]:
        """Open the stores, recover queued work, run the background tasks; undo all on exit."""
        cfg = self.config
        data = cfg.data_path
        shared = cfg.storage.backend == "redis"
        if shared:
            from .registry_redis import RedisRegistry
            from .storage.redis.store import RedisStore

            # Several gateways: state in Redis, photos on a directory they all mount.
            self.store = store = await RedisStore.open(cfg.storage.redis_url, cfg.storage.redis_prefix,
                                                       uuid.uuid4().hex[:12])
            self.blobs = BlobStore(data / "blobs")
            # Another gateway may be writing a .part right now: only old ones are leftovers.
            await self.blobs.sweep_partials(older_than=3600.0)
            self.registry = RedisRegistry(store, cfg.health_check.failure_threshold,
                                          lease_ttl=cfg.storage.redis_lease_ttl,
                                          ghost_seconds=cfg.dispatch.timeout + cfg.dispatch.connect_timeout)
        else:
            self.store = await SQLiteStore.open(data / "photogate.db")
            self.blobs = BlobStore(data / "blobs")
            await self.blobs.sweep_partials()
            self.registry = Registry(self.store, cfg.health_check.failure_threshold)
        await self.registry.load()
        await self.settings.open(self.store)
        self._apply_settings()  # the runtime changes kept in the store, before the dispatcher starts
        self.images = ImageChecker(cfg.limits.check_memory_bytes)
        # No cookie jar: a proxy must never carry one node's cookies to another.
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
        self.dispatcher = Dispatcher(
            self.store, self.blobs, self.registry, self.session, self.strategy,
            config=cfg.dispatch, max_queue=cfg.limits.max_queue, max_pixels=cfg.limits.max_pixels,
            max_result_bytes=cfg.limits.max_result_bytes,
            multi_backend=self.multi_backend, metrics=self.metrics, shared=shared, images=self.images,
        )
        self.monitor = HealthMonitor(
            self.registry, self.session, interval=cfg.health_check.interval, timeout=cfg.health_check.timeout
        )
        await self.dispatcher.recover()
        tasks = [
            asyncio.create_task(self.dispatcher.run(), name="dispatcher"),
            asyncio.create_task(self.monitor.run(), name="health-monitor"),
            asyncio.create_task(self._janitor(), name="janitor"),
        ]
        if shared:
            tasks.append(asyncio.create_task(self.registry.run(), name="shared-registry"))  # type: ignore[attr-defined]
            # Another gateway's runtime change reaches this one within a registry refresh.
            watch = self.settings.watch(self.registry.sync_interval, self._apply_settings)  # type: ignore[attr-defined]
            tasks.append(asyncio.create_task(watch, name="runtime-settings"))
            log.info("gateway_started", data_dir=str(data), strategy=self.strategy_name, backend="redis",
                     redis=store.url, gateway=store.gateway_id, nodes=len(self.registry.all()))
        else:
            log.info("gateway_started", data_dir=str(data), strategy=self.strategy_name,
                     nodes=len(self.registry.all()))
        try:
            yield self
        finally:
            await _cancel_all(tasks)
            if shared:
                await self.registry.close()  # type: ignore[attr-defined]
            await self.session.close()
            await self.store.close()
            await asyncio.get_running_loop().run_in_executor(None, self.images.close)
            log.info("gateway_stopped")

    # -- runtime settings ------------------------------------------------------------------

    async def set_strategy(self, name: str, options: Mapping[str, Any] | None, *, who: str, ip: str) -> None:
        """Swap the strategy and keep the change in the store; jobs in flight keep running,
        the next placement uses the new one."""
        load_strategy(name, options, self.rng)  # raises StrategyError before anything changes
        await self.settings.change({"balancer.strategy": name, "balancer.options": dict(options or {})},
                                   who=f"{who}@{ip}")
        self._apply_settings(who=who, ip=ip)

    async def set_multi_backend(self, enabled: bool, *, who: str, ip: str) -> None:
        await self.settings.change({"multi_backend.enabled": enabled}, who=f"{who}@{ip}")
        self._apply_settings(who=who, ip=ip)

    async def reset_setting(self, key: str, *, who: str, ip: str) -> list[str]:
        """Drop the runtime change of ``key``: the config file's value applies again.
        Returns the keys that had a runtime change."""
        dropped = await self.settings.reset(key)
        audit("runtime_setting_reset", who=who, ip=ip, key=key, dropped=dropped)
        self._apply_settings(who=who, ip=ip)
        return dropped

    def _apply_settings(self, *, who: str | None = None, ip: str = "") -> None:
        """Make the effective values (runtime changes over the file) the ones in use. A change
        someone made here is audited (``who``); one read from the store (at start, or made by
        another gateway) is logged."""
        changes: list[tuple[str, Any, Any]] = []
        want = self.settings.effective()
        name, options = want["balancer.strategy"], dict(want["balancer.options"] or {})
        if (name, options) != (self.strategy_name, self.strategy_options):
            try:
                strategy = load_strategy(name, options, self.rng)
            except ValueError as exc:  # a stored strategy whose plugin is gone: keep the current one
                log.error("runtime_strategy_unusable", strategy=name, error=str(exc),
                          fix="photogate-admin config reset balancer.strategy")
            else:
                changes.append(("strategy_changed", self.strategy_name, name))
                self.strategy, self.strategy_name, self.strategy_options = strategy, name, options
                if hasattr(self, "dispatcher"):
                    self.dispatcher.strategy = strategy
        enabled = bool(want["multi_backend.enabled"])
        if enabled != self.multi_backend:
            changes.append(("multi_backend_changed", self.multi_backend, enabled))
            self.multi_backend = enabled
            if hasattr(self, "dispatcher"):
                self.dispatcher.multi_backend = enabled
        if changes and hasattr(self, "dispatcher"):
            self.dispatcher.wake()
        for action, old, new in changes:
            if who is None:
                log.info("runtime_setting_applied", change=action, old=old, new=new, version=self.settings.version)
            else:
                audit(action, who=who, ip=ip, old=old, new=new)

    def reload_config(self, *, who: str = "SIGHUP", ip: str = "local") -> None:
        """Re-read the config file and apply what can change at runtime. A runtime change
        (``config set``, the dashboard) wins over the file until ``config reset`` drops it."""
        if self.config_path is None:
            log.warning("config_reload_skipped", reason="started without a config file")
            return
        new = load_config(self.config_path, dev=self.config.dev)
        load_strategy(new.balancer.strategy, new.balancer.options, self.rng)  # a bad file changes nothing
        self.settings.file = file_values(new)
        self._apply_settings(who=who, ip=ip)
        if new.health_check.interval != self.monitor.interval or new.health_check.timeout != self.monitor.timeout:
            self.monitor.interval, self.monitor.timeout = new.health_check.interval, new.health_check.timeout
            audit("health_check_changed", who=who, ip=ip, interval=new.health_check.interval)
        self.registry.failure_threshold = new.health_check.failure_threshold
        kept = sorted(k for k in self.settings.changes if k in GROUPS)
        log.info("config_reloaded", path=self.config_path, runtime_changes_kept=kept)

    async def live_snapshot(self) -> LiveSnapshot:
        """What ``GET /metrics`` shows of the live state (:mod:`photogate.metrics.live`)."""
        if not hasattr(self, "dispatcher"):  # not started yet
            return LiveSnapshot(self.strategy_name, self.multi_backend)
        return LiveSnapshot(self.strategy_name, self.multi_backend, FleetReading(
            queued=self.dispatcher.queued, in_flight=self.dispatcher.in_flight,
            task_counts=await self.store.count_tasks(),
            nodes=self.registry.all(), serving=self.registry.serving(self.multi_backend)))

    # -- housekeeping ----------------------------------------------------------------------

    async def expire(self, now: float | None = None) -> int:
        """Delete finished tasks (and their files) older than ``storage.task_ttl``."""
        cutoff = (now or time.time()) - self.config.storage.task_ttl
        removed = 0
        for task_id in await self.store.expired_task_ids(cutoff):
            await self.store.delete_task(task_id)
            await self.blobs.delete(task_id)
            removed += 1
        if removed:
            log.info("tasks_expired", count=removed)
        return removed

    async def _janitor(self) -> None:
        while True:
            await asyncio.sleep(self.config.storage.janitor_interval)
            try:
                await self.expire()
            except StoreUnavailable:
                log.warning("janitor_skipped", reason="the state store is unreachable")
            except Exception:
                log.exception("janitor_failed")
