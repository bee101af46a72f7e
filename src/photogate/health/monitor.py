"""The health monitor: polls every node's ``/health`` concurrently, every ``interval`` s.

It sees the registry only through :class:`HealthTarget` (``probed()``, ``probes_here()``,
``record_check()``): with several gateways on Redis, one of them probes for all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

import aiohttp
import structlog

from ..errors import StoreUnavailable
from ..nodeio import read_json

log = structlog.get_logger("photogate.health")


class ProbedNode(Protocol):
    """A node the monitor checks."""

    @property
    def server_id(self) -> str: ...

    @property
    def health_url(self) -> str: ...


class HealthTarget(Protocol):
    """What the monitor asks of the registry, and all it changes there."""

    def probes_here(self) -> bool:
        """Whether this gateway probes the fleet now (with several gateways: the lease holder)."""
        ...

    def probed(self) -> Sequence[ProbedNode]:
        """The nodes to check this round."""
        ...

    async def record_check(
        self, server_id: str, ok: bool, report: dict[str, Any] | None = None, error: str | None = None
    ) -> None: ...


class HealthMonitor:
    def __init__(self, registry: HealthTarget, session: aiohttp.ClientSession, *, interval: float,
                 timeout: float) -> None:
        self.registry = registry
        self.session = session
        #: Read before every wait and every probe: a change applies from the next one
        #: (:meth:`poke` to start that at once instead of after the current wait).
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
        await asyncio.gather(*(self.check(s.server_id, s.health_url) for s in nodes))
        self.rounds += 1

    def poke(self) -> None:
        """End the current wait: the next round runs now, and the wait after it uses the
        interval in force then (call it after changing ``interval`` or ``timeout``)."""
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
                await self._wait()
        finally:
            self.running = False

    async def _wait(self) -> None:
        """Sleep ``interval`` s, or until :meth:`poke`. A poke during the round counts too:
        the event stays set until this wait consumes it."""
        try:
            await asyncio.wait_for(self._wake.wait(), self.interval)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()
