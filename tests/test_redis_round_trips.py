"""What one task costs in Redis (issue 17): round trips from accept to the inline answer.

``POST /api/v1/enhance?wait=30&result=inline`` on the Redis backend, rate limits on, one
instant node: the round trips that come with the tasks (not the timed refresh, heartbeat
and probes, see :mod:`redis_round_trips`) are pinned, so that a change adding one fails here.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import FormData
from redis_round_trips import counting
from support import SECRET, Gateway, image_bytes, make_config, wait_until

from photogate.app import create_app
from photogate.keys import GATEWAY

TASKS = 20
#: Round trips per inline task outside the claim path (the shared queue's claim and length,
#: ``SharedQueue.fill``): rate limits 1, insert 1, slot 1 + 1, processing 1, completion 1,
#: the answer's read 1; the node's success is counted with the next refresh (was 9).
#: Half a round trip of slack: a health probe that timed out on a loaded machine makes the
#: next success go alone; one more round trip for every task still fails.
MAX_ROUND_TRIPS = 7
#: Not pinned here: the claim path (its owner's), and every registry refresh wakes the
#: dispatcher, whose pass looks for other gateways' tasks (a claim and a length): its count
#: grows with the time the tasks take.
CLAIM_PATH = "SharedQueue.fill"


async def _commands(url: str) -> dict[str, int]:
    client = aioredis.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def _inline(gw: Gateway, i: int) -> None:
    form = FormData()
    form.add_field("file", image_bytes(64 + i, 48), filename="p.png", content_type="image/png")
    async with gw.client.post("/api/v1/enhance?wait=30&result=inline", data=form) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "image/png"
        await resp.read()


async def test_an_inline_task_costs_at_most_a_few_round_trips(
        aiohttp_client: Any, tmp_path: Path, redis_config: dict[str, Any], nodes: Any,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    gw = Gateway(await aiohttp_client(create_app(make_config(
        tmp_path, **redis_config, **{"rate_limit.exempt": [], "rate_limit.burst": 1000,
                                     "rate_limit.upload_burst": 1000}))))
    node = await nodes(slots=2)
    await gw.register(node)
    registry = gw.app[GATEWAY].registry
    await wait_until(lambda: bool(registry.candidates(False)), 5, "the node to be healthy")
    await _inline(gw, 0)  # scripts loaded, connections open
    before = await _commands(redis_config["storage.redis_url"])
    with counting(monkeypatch) as trips:
        for i in range(1, TASKS + 1):
            await _inline(gw, i)
    after = await _commands(redis_config["storage.redis_url"])
    commands = {k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0) > 0}
    with capsys.disabled():
        if os.environ.get("ROUND_TRIPS_TABLE"):
            print(f"\nround trips per task ({TASKS} inline tasks):\n{trips.table(TASKS)}")
            print(f"commands in {TASKS} tasks (background and scripts included): {commands}")
    claims = sum(n for key, n in trips.by_label.items() if key.startswith(CLAIM_PATH))
    per_task = (trips.per_task() - claims) / TASKS
    assert per_task < MAX_ROUND_TRIPS + 0.5, f"{per_task:.2f} round trips per task:\n{trips.table(TASKS)}"
    # The request's rate-limit buckets (requests and uploads) in one round trip.
    assert sum(n for key, n in trips.by_label.items() if key.endswith("RedisCluster.draw")) == TASKS


async def test_the_registry_refresh_and_the_heartbeat_share_one_round_trip(
        aiohttp_client: Any, tmp_path: Path, redis_config: dict[str, Any], nodes: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle gateway: each of its registry's round trips is one refresh, heartbeat included."""
    gw = Gateway(await aiohttp_client(create_app(make_config(tmp_path, **redis_config))))
    await gw.register(await nodes())
    registry = gw.app[GATEWAY].registry
    with counting(monkeypatch) as trips:
        # lease_ttl 1 s: a beat every third of a second, a refresh every 0.2 s: ten round
        # trips of the registry's loop hold several beats.
        await wait_until(lambda: _of(trips.by_label, "RedisRegistry.run") >= 10, 10, "ten round trips")
    background = {key: n for key, n in trips.by_label.items() if key.startswith("RedisRegistry.run")}
    assert set(background) == {"RedisRegistry.run: RedisRegistry._sync > RedisSync.sync"}, background
    assert registry.probes_here()  # the only gateway holds the prober's lease


async def test_successes_are_counted_with_the_refresh_and_never_undo_a_later_failure(
        aiohttp_client: Any, tmp_path: Path, redis_config: dict[str, Any], nodes: Any) -> None:
    quiet = {**redis_config, "health_check.interval": 60.0}  # no probe undoes the failure below
    a = Gateway(await aiohttp_client(create_app(make_config(tmp_path, **quiet))))
    b = Gateway(await aiohttp_client(create_app(make_config(tmp_path, **quiet))))
    node = await nodes()
    await a.register(node)
    for _ in range(3):
        assert (await a.wait_done(await a.submit()))["status"] == "completed"

    async def completed_on(gw: Gateway) -> int:
        resp = await gw.client.get("/webhook/servers", headers={"X-Webhook-Secret": SECRET})
        servers = (await resp.json())["data"]["servers"]
        return int(servers[0]["completed"]) if servers else -1  # -1: not seen yet

    # Every gateway sees the three (the other one at its next refresh).
    await wait_until(lambda: _equals(completed_on(b), 3), 5, "the other gateway to count 3 jobs")
    assert await completed_on(a) == 3
    # A success not counted yet, then a failure that takes the node down (threshold 1): the
    # success counted afterwards moves the counter only, the node stays down.
    registry = a.app[GATEWAY].registry
    registry.failure_threshold = 1
    await registry.record_dispatch_success(node.server_id)
    await registry.record_dispatch_failure(node.server_id, "boom")
    await registry.refresh()
    await b.app[GATEWAY].registry.refresh()
    for gw in (a, b):
        resp = await gw.client.get("/webhook/servers", headers={"X-Webhook-Secret": SECRET})
        server = (await resp.json())["data"]["servers"][0]
        assert (server["healthy"], server["consecutive_failures"], server["completed"]) == (False, 1, 4), server


def _of(counts: dict[str, int], prefix: str) -> int:
    return sum(n for key, n in counts.items() if key.startswith(prefix))


async def _equals(value: Awaitable[int], wanted: int) -> bool:
    return await value == wanted


async def test_shared_rate_limits_in_one_draw_still_answer_each_bucket(
        aiohttp_client: Any, tmp_path: Path, redis_config: dict[str, Any], nodes: Any) -> None:
    limits = {**redis_config, "rate_limit.exempt": [], "rate_limit.upload_burst": 2, "rate_limit.burst": 50,
              "rate_limit.auth_failure_burst": 2}
    a = Gateway(await aiohttp_client(create_app(make_config(tmp_path, **limits))))
    b = Gateway(await aiohttp_client(create_app(make_config(tmp_path, **limits))))
    await a.register(await nodes())
    await wait_until(lambda: bool(b.app[GATEWAY].registry.candidates(False)), 5, "the node on both gateways")
    await a.submit()
    await b.submit()  # the upload bucket is shared: two uploads in all
    form = FormData()
    form.add_field("file", image_bytes(), filename="p.png", content_type="image/png")
    resp = await a.client.post("/api/v1/enhance", data=form)
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    assert "too many uploads" in (await resp.json())["error"]
    # The request bucket still has tokens: a status read passes.
    assert (await b.client.get("/api/v1/status/" + "0" * 32)).status == 404
    # Failed credentials: two wrong secrets empty the shared bucket; then even the right one waits.
    for gw in (a, b):
        assert (await gw.client.get("/webhook/servers", headers={"X-Webhook-Secret": "wrong"})).status == 403
    resp = await a.client.get("/webhook/servers", headers={"X-Webhook-Secret": SECRET})
    assert resp.status == 429 and "failed credentials" in (await resp.json())["error"]
