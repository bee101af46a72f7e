"""One health rule, one table of cases: the function, the SQLite-backed registry and the
Redis-backed registry (a real redis-server, whose ``HEALTH`` script mirrors the function)
must all give the same answer. And the monitor: ``poke()`` wakes it at once.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from photogate.health.monitor import HealthMonitor, ProbedNode
from photogate.health.rule import DOWN, SAME, UP, Verdict, verdict
from photogate.registry import Registry
from photogate.registry_redis import RedisRegistry
from photogate.storage.redis.store import RedisStore
from photogate.storage.sqlite.store import SQLiteStore

#: (failures in a row so far, threshold, this outcome ok?) -> (healthy, failures, moved).
#: A registered node starts healthy with no failures, so before this outcome it is healthy
#: exactly while its failures are below the threshold.
CASES: list[tuple[int, int, bool, tuple[bool, int, int]]] = [
    (0, 3, True, (True, 0, SAME)),    # a success on a healthy node changes nothing
    (0, 3, False, (True, 1, SAME)),   # one failure counts, the node stays up
    (1, 3, False, (True, 2, SAME)),
    (2, 3, False, (False, 3, DOWN)),  # the count reaches the threshold: down
    (3, 3, False, (False, 4, SAME)),  # a down node keeps counting, stays down
    (3, 3, True, (True, 0, UP)),      # one success: up again, count cleared
    (5, 3, True, (True, 0, UP)),
    (2, 3, True, (True, 0, SAME)),    # a success before the threshold clears the count
    (0, 1, False, (False, 1, DOWN)),  # threshold 1: the first failure marks it down
    (1, 1, True, (True, 0, UP)),
    (4, 5, False, (False, 5, DOWN)),
]
IDS = [f"{f}fail-t{t}-{'ok' if ok else 'fail'}" for f, t, ok, _ in CASES]


@pytest.mark.parametrize(("failures", "threshold", "ok", "after"), CASES, ids=IDS)
def test_the_rule(failures: int, threshold: int, ok: bool, after: tuple[bool, int, int]) -> None:
    assert verdict(failures < threshold, failures, ok, threshold) == Verdict(*after)


@pytest.fixture
async def registries(backend: dict[str, Any], tmp_path: Path) -> AsyncIterator[list[Registry]]:
    """The backend's registry, plus (Redis) a second gateway's registry that reads only
    what Redis holds."""
    if not backend:
        store = await SQLiteStore.open(tmp_path / "photogate.db")
        yield [Registry(store, 3)]
        await store.close()
        return
    url, prefix = backend["storage.redis_url"], backend["storage.redis_prefix"]
    stores = [await RedisStore.open(url, prefix, uuid.uuid4().hex[:12]) for _ in range(2)]
    yield [RedisRegistry(s, 3, lease_ttl=1.0) for s in stores]
    for s in stores:
        await s.close()


def _moves(logs: list[dict[str, Any]]) -> list[int]:
    return [{"node_marked_up": UP, "node_marked_down": DOWN}[e["event"]] for e in logs
            if e["event"] in ("node_marked_up", "node_marked_down")]


@pytest.mark.parametrize(("failures", "threshold", "ok", "after"), CASES, ids=IDS)
async def test_both_registries_apply_the_rule(registries: list[Registry], failures: int, threshold: int, ok: bool,
                                              after: tuple[bool, int, int]) -> None:
    registry = registries[0]
    registry.failure_threshold = threshold
    state, _, _ = await registry.register("127.0.0.1", 9001, node_key="key", slots=1, weight=None, info={})
    for _ in range(failures):
        await registry.record_check(state.server_id, False, error="refused")
    healthy, count, moved = after
    with structlog.testing.capture_logs() as logs:
        await registry.record_check(state.server_id, ok, {"status": "ok"} if ok else None,
                                    error=None if ok else "timed out")
    assert (state.healthy, state.failures) == (healthy, count)
    assert state.last_error == (None if ok else "timed out")
    assert _moves(logs) == ([] if moved == SAME else [moved])
    assert registry.summary()["healthy"] == (1 if healthy else 0)
    if isinstance(registry, RedisRegistry):
        # What Redis holds (the HEALTH script's work), as another gateway reads it.
        other = registries[1]
        await other.refresh()
        shared = other.get(state.server_id)
        assert shared is not None and (shared.healthy, shared.failures) == (healthy, count)


async def test_a_dispatch_outcome_follows_the_same_rule(registries: list[Registry]) -> None:
    registry = registries[0]
    registry.failure_threshold = 2
    state, _, _ = await registry.register("127.0.0.1", 9001, node_key="key", slots=1, weight=None, info={})
    await registry.record_dispatch_failure(state.server_id, "HTTP 502")
    assert (state.healthy, state.failures, state.failed) == (True, 1, 1)
    await registry.record_dispatch_failure(state.server_id, "HTTP 502")
    assert (state.healthy, state.failures, state.failed) == (False, 2, 2)
    await registry.record_dispatch_success(state.server_id)
    assert (state.healthy, state.failures, state.completed) == (True, 0, 1)


# -- the monitor -----------------------------------------------------------------------------


class _Target:
    """A registry with no nodes, as the monitor sees it: it only counts rounds."""

    def __init__(self) -> None:
        self.rounds = 0

    def probes_here(self) -> bool:
        self.rounds += 1
        return True

    def probed(self) -> Sequence[ProbedNode]:
        return []

    async def record_check(self, server_id: str, ok: bool, report: dict[str, Any] | None = None,
                           error: str | None = None) -> None:
        raise AssertionError("no node to check")


async def _until(predicate: Any, seconds: float) -> float:
    """Seconds until ``predicate()`` held; fails after ``seconds``."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < seconds, "not within the deadline"
        await asyncio.sleep(0.01)
    return time.monotonic() - start


async def test_poke_runs_a_round_at_once_and_a_new_interval_applies_from_the_next_wait() -> None:
    target = _Target()
    async with aiohttp.ClientSession() as session:
        monitor = HealthMonitor(target, session, interval=3600, timeout=5)
        runner = asyncio.create_task(monitor.run())
        try:
            await _until(lambda: monitor.rounds == 1, 5)  # the first round runs at start
            await asyncio.sleep(0.1)
            assert monitor.rounds == 1  # then it waits its hour
            monitor.poke()
            assert await _until(lambda: monitor.rounds == 2, 1) < 1
            # A shorter interval, poked: the hour-long wait ends and the next ones are short.
            monitor.interval = 0.05
            monitor.poke()
            await _until(lambda: monitor.rounds >= 6, 2)
            # Back to an hour: the current short wait ends, then the long one holds.
            monitor.interval = 3600
            await asyncio.sleep(0.2)
            settled = monitor.rounds
            await asyncio.sleep(0.2)
            assert monitor.rounds == settled
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
    assert monitor.running is False and target.rounds == monitor.rounds
