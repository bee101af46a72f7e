"""The gateway's services, and what an operator changes while it runs.

``Gateway`` holds the store, blob store, registry, dispatcher and health monitor (each put
in place, and taken down, by its own cleanup context in :mod:`photogate.lifecycle`) and the
runtime settings (:class:`~photogate.runtime.RuntimeSettings`: strategy, multi-backend
mode) that the dispatcher reads. Every change is audited; a change of the strategy or of
multi-backend mode is kept in the store and wins over the config file until it is reset.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from .audit import audit
from .balancing import Strategy, load_strategy
from .blobs import BlobStore
from .config import Config, load_config
from .errors import StoreUnavailable
from .health.monitor import HealthMonitor
from .imagechecker import ImageChecker
from .metrics import GatewayMetrics
from .metrics.live import FleetReading, LiveSnapshot
from .registry import Registry
from .runtime import GROUPS, RuntimeSettings, file_values
from .storage.protocols import Store

if TYPE_CHECKING:
    from .dispatch import Dispatcher
    from .storage.factory import Backend

log = structlog.get_logger("photogate")


class Gateway:
    def __init__(self, config: Config, config_path: str | None = None, rng: random.Random | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.rng = rng or random.Random()
        #: The runtime keys' values in use, over the file's; builds the strategy (a bad one fails here).
        self.settings = RuntimeSettings(config, self.rng)
        self.started_at = time.time()
        # Its own registry; /metrics reads live state from live_snapshot().
        self.metrics = GatewayMetrics(config.access.classes)
        #: True while the dispatcher runs (its cleanup context sets it).
        self.dispatching = False
        # Each put in place by its cleanup context (photogate.lifecycle), in this order:
        self.backend: Backend
        self.store: Store
        self.registry: Registry
        self.blobs: BlobStore
        #: Every image check (uploads, node results) goes through it, under one memory budget.
        self.images: ImageChecker
        self.session: aiohttp.ClientSession
        self.dispatcher: Dispatcher
        self.monitor: HealthMonitor

    @property
    def strategy(self) -> Strategy:
        return self.settings.strategy

    @property
    def strategy_name(self) -> str:
        return self.settings.strategy_name

    @property
    def strategy_options(self) -> dict[str, Any]:
        return self.settings.strategy_options

    @property
    def multi_backend(self) -> bool:
        return self.settings.multi_backend

    # -- runtime settings ------------------------------------------------------------------

    async def set_strategy(self, name: str, options: Mapping[str, Any] | None, *, who: str, ip: str) -> None:
        """Swap the strategy and keep the change in the store; jobs in flight keep running,
        the next placement uses the new one."""
        load_strategy(name, options, self.settings.rng)  # raises StrategyError before anything changes
        await self.settings.change({"balancer.strategy": name, "balancer.options": dict(options or {})},
                                   who=f"{who}@{ip}")
        self.settings.apply(who=who, ip=ip)

    async def set_multi_backend(self, enabled: bool, *, who: str, ip: str) -> None:
        await self.settings.change({"multi_backend.enabled": enabled}, who=f"{who}@{ip}")
        self.settings.apply(who=who, ip=ip)

    async def reset_setting(self, key: str, *, who: str, ip: str) -> list[str]:
        """Drop the runtime change of ``key``: the config file's value applies again.
        Returns the keys that had a runtime change."""
        dropped = await self.settings.reset(key)
        audit("runtime_setting_reset", who=who, ip=ip, key=key, dropped=dropped)
        self.settings.apply(who=who, ip=ip)
        return dropped

    def reload_config(self, *, who: str = "SIGHUP", ip: str = "local") -> None:
        """Re-read the config file and apply what can change at runtime. A runtime change
        (``config set``, the dashboard) wins over the file until ``config reset`` drops it."""
        if self.config_path is None:
            log.warning("config_reload_skipped", reason="started without a config file")
            return
        new = load_config(self.config_path, dev=self.config.dev)
        load_strategy(new.balancer.strategy, new.balancer.options, self.settings.rng)  # a bad file changes nothing
        self.settings.file = file_values(new)
        self.settings.apply(who=who, ip=ip)
        if new.health_check.interval != self.monitor.interval or new.health_check.timeout != self.monitor.timeout:
            self.monitor.interval, self.monitor.timeout = new.health_check.interval, new.health_check.timeout
            self.monitor.poke()  # the new interval applies now, not once the old one has elapsed
            audit("health_check_changed", who=who, ip=ip, interval=new.health_check.interval)
        self.registry.failure_threshold = new.health_check.failure_threshold
        kept = sorted(k for k in self.settings.changes if k in GROUPS)
        log.info("config_reloaded", path=self.config_path, runtime_changes_kept=kept)

    async def live_snapshot(self) -> LiveSnapshot:
        """What ``GET /metrics`` shows of the live state (:mod:`photogate.metrics.live`)."""
        if not self.dispatching:  # not started yet, or stopped
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

    async def janitor(self) -> None:
        """Expire old tasks every ``storage.janitor_interval`` seconds, for as long as it runs."""
        while True:
            await asyncio.sleep(self.config.storage.janitor_interval)
            try:
                await self.expire()
            except StoreUnavailable:
                log.warning("janitor_skipped", reason="the state store is unreachable")
            except Exception:
                log.exception("janitor_failed")
