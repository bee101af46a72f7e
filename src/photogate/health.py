"""The health monitor: polls every node's ``/health`` concurrently, every ``interval`` s.

It sees the registry only through ``record_check(server_id, ok, report, error)`` (and
``probes_here()``: with several gateways on Redis, one of them probes for all).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import structlog

from .errors import StoreUnavailable
from .nodeio import read_json
from .registry import Registry

log = structlog.get_logger("photogate.health")


class HealthMonitor:
    def __init__(self, registry: Registry, session: aiohttp.ClientSession, *, interval: float, timeout: float) -> None:
        self.registry = registry
        self.session = session
        self.interval = interval
        self.timeout = timeout
        self.running = False
        self.rounds = 0
        self._wake = asyncio.Event()

    async def check(self, server_id: str, url: str) -> None:
        try:
            async with self.session.get(
                url, timeout=aiohttp.ClientTimeout(total=self.timeout), allow_redirects=False
            ) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
                report: Any = await read_json(resp)
                if not isinstance(report, dict):
                    raise RuntimeError("health answer is not a JSON object")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            await self.registry.record_check(server_id, False, error=error)
            log.debug("health_check_failed", server_id=server_id, error=error)
        else:
            await self.registry.record_check(server_id, True, report)

    async def check_all(self) -> None:
        nodes = self.registry.probed()  # an offline (unregistered) node is not probed
        await asyncio.gather(*(self.check(s.server_id, s.record.base_url + "/health") for s in nodes))
        self.rounds += 1

    def poke(self) -> None:
        """Run the next round now (e.g. after a config change)."""
        self._wake.set()

    async def run(self) -> None:
        self.running = True
        try:
            while True:
                # Several gateways on Redis: only the holder of the lease probes (once per
                # interval in all); the others read the shared health it records.
                if self.registry.probes_here():
                    try:
                        await self.check_all()
                    except StoreUnavailable:
                        log.warning("health_round_skipped", reason="the state store is unreachable")
                try:
                    await asyncio.wait_for(self._wake.wait(), self.interval)
                except asyncio.TimeoutError:
                    pass
                self._wake.clear()
        finally:
            self.running = False
