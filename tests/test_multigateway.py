"""Several gateways on one Redis (issue 8), in one test process: ids handed out once,
the fleet probed once per interval in all, the same health everywhere, tasks and status
on any gateway, and Redis going away and coming back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData
from redis_support import RedisServer, unique_prefix
from support import SECRET, Gateway, image_bytes, make_config, wait_until

from photogate.app import create_app
from photogate.keys import GATEWAY


@pytest.fixture
def start(aiohttp_client: Any, tmp_path: Path, redis_config: dict[str, Any]) -> Callable[..., Awaitable[Gateway]]:
    """Start a gateway on the test's Redis prefix and its shared data dir."""

    async def start_(**overrides: Any) -> Gateway:
        return Gateway(await aiohttp_client(create_app(make_config(tmp_path, **{**redis_config, **overrides}))))

    return start_


async def _servers(gw: Gateway) -> list[dict[str, Any]]:
    resp = await gw.client.get("/webhook/servers", headers={"X-Webhook-Secret": SECRET})
    assert resp.status == 200
    return list((await resp.json())["data"]["servers"])


async def test_fifty_nodes_registering_at_once_through_two_gateways_get_fifty_ids(
        start: Callable[..., Awaitable[Gateway]]) -> None:
    a, b = await start(), await start()

    async def register(i: int) -> str:
        gw = (a, b)[i % 2]
        resp = await gw.client.post("/webhook/register", json={
            "ip": "127.0.0.1", "port": 20000 + i, "secret": SECRET, "node_key": f"node-key-{i:04d}"})
        body = await resp.json()
        assert resp.status == 200, body
        return str(body["server_id"])

    ids = await asyncio.gather(*(register(i) for i in range(50)))
    assert sorted(ids) == [f"GPU-{n:03d}" for n in range(1, 51)]
    # Both gateways list the same fifty, and a node that registers again keeps its id.
    for gw in (a, b):  # each sees the other's registrations at its next refresh
        await wait_until(lambda gw=gw: _count(gw, 50), 5, "both gateways to list 50 nodes")
    assert [s["server_id"] for s in await _servers(a)] == [s["server_id"] for s in await _servers(b)]
    assert await register(7) == ids[7]


async def _count(gw: Gateway, n: int) -> bool:
    return len(await _servers(gw)) == n


async def test_fleet_probed_once_per_interval_in_all_and_the_prober_is_replaced(
        start: Callable[..., Awaitable[Gateway]], nodes: Any) -> None:
    interval = 0.2
    a = await start(**{"health_check.interval": interval})
    b = await start(**{"health_check.interval": interval})
    node = await nodes()
    await a.register(node)
    await wait_until(lambda: node.health_hits >= 2, 5, "the first health checks")
    # One prober: every probe the node sees is a round of the lease holder's monitor; the other
    # gateway runs none. (Counted, not timed: both run in this process, so one read is exact.)
    prober, other = (a, b) if a.app[GATEWAY].registry.probes_here() else (b, a)
    assert other.app[GATEWAY].registry.probes_here() is False
    hits, t0 = node.health_hits, time.monotonic()
    rounds = {gw: gw.app[GATEWAY].monitor.rounds for gw in (a, b)}
    await wait_until(lambda: node.health_hits >= hits + 10, 10, "ten more health checks")
    elapsed = time.monotonic() - t0
    probed = node.health_hits - hits
    assert other.app[GATEWAY].monitor.rounds == rounds[other], "the gateway without the lease probed"
    assert abs(prober.app[GATEWAY].monitor.rounds - rounds[prober] - probed) <= 1  # one probe in flight
    # Once per interval: ten probes by one prober take at least nine intervals (two would take
    # about half that). A lower bound holds however loaded the machine is.
    assert elapsed >= 9 * interval * 0.9, f"{probed} probes in {elapsed:.2f} s"

    # The prober stops: the other gateway takes the lease over (ttl 1 s) and probes.
    await prober.client.close()
    hits = node.health_hits
    await wait_until(lambda: node.health_hits >= hits + 3, 5, "the other gateway to probe")
    assert other.app[GATEWAY].registry.probes_here() is True


async def test_every_gateway_sees_the_same_health(start: Callable[..., Awaitable[Gateway]], nodes: Any) -> None:
    a = await start(**{"health_check.failure_threshold": 2})
    b = await start(**{"health_check.failure_threshold": 2})
    node = await nodes()
    await b.register(node)
    await wait_until(lambda: _count(a, 1), 5, "gateway A to see the node")

    async def statuses() -> list[str]:
        return [(await _servers(gw))[0]["status"] for gw in (a, b)]

    await wait_until(lambda: _all(statuses, "healthy"), 5, "both gateways to see the node up")
    await node.stop()
    await wait_until(lambda: _all(statuses, "unhealthy"), 10, "both gateways to see the node down")
    await node.start()
    await wait_until(lambda: _all(statuses, "healthy"), 10, "both gateways to see it up again")


async def _all(read: Callable[[], Awaitable[list[str]]], expected: str) -> bool:
    return set(await read()) == {expected}


async def test_any_gateway_answers_for_any_task(start: Callable[..., Awaitable[Gateway]], nodes: Any) -> None:
    a, b = await start(), await start()
    node = await nodes(delay=0.05, slots=2)
    await a.register(node, slots=2)
    await wait_until(lambda: _count(b, 1), 5, "gateway B to see the node")
    ids = [await (a, b)[i % 2].submit(image_bytes(30 + i, 20)) for i in range(8)]
    for i, task_id in enumerate(ids):
        final = await (b, a)[i % 2].wait_done(task_id)  # asked of the gateway that did not take it
        assert final["status"] == "completed", final
        resp = await (b, a)[i % 2].client.get(final["result_url"])
        assert resp.status == 200 and len(await resp.read()) > 0
    assert node.jobs == 8 and node.max_busy <= 2
    # ?wait= on one gateway returns when another finished the task.
    form = FormData()
    form.add_field("file", image_bytes(50, 50), filename="p.png", content_type="image/png")
    resp = await b.client.post("/api/v1/enhance?wait=10", data=form)
    assert resp.status == 200 and (await resp.json())["status"] == "completed"


async def test_redis_down_answers_503_and_recovers_without_losing_a_task(
        aiohttp_client: Any, tmp_path: Path, nodes: Any) -> None:
    redis = RedisServer(tmp_path / "redis", persist=True)  # AOF, fsync always: a kill loses nothing
    redis.start()
    try:
        cfg = make_config(tmp_path, **{"storage.backend": "redis", "storage.redis_url": redis.url,
                                        "storage.redis_prefix": unique_prefix(), "storage.redis_lease_ttl": 1.0})
        gw = Gateway(await aiohttp_client(create_app(cfg)))
        node = await nodes()
        await gw.register(node)
        done = await gw.submit()
        assert (await gw.wait_done(done))["status"] == "completed"
        node.delay = 1.0
        accepted = await gw.submit(image_bytes(33, 33))

        redis.kill()
        resp = await gw.client.get(f"/api/v1/status/{done}")
        body = await resp.json()
        assert resp.status == 503 and resp.headers["Retry-After"] == "5"
        assert "Redis" in body["error"] and "try again" in body["error"]
        form = FormData()
        form.add_field("file", image_bytes(), filename="p.png", content_type="image/png")
        resp = await gw.client.post("/api/v1/enhance", data=form)
        assert resp.status == 503 and "Redis" in (await resp.json())["error"]
        resp = await gw.client.get("/api/v1/health")
        assert resp.status == 503

        redis.start()  # same port, same dir: the AOF brings every key back
        await wait_until(lambda: _answers(gw, f"/api/v1/status/{done}"), 10, "the gateway to reach Redis again")
        assert (await gw.status(done))["status"] == "completed"
        node.delay = 0.0
        final = await gw.wait_done(accepted, 30)
        assert final["status"] == "completed", final
        assert (await gw.client.get(f"/api/v1/download/{accepted}")).status == 200
        assert (await gw.wait_done(await gw.submit()))["status"] == "completed"
    finally:
        redis.stop()


async def _answers(gw: Gateway, path: str) -> bool:
    return (await gw.client.get(path)).status == 200


async def test_gateway_refuses_to_start_without_redis(tmp_path: Path) -> None:
    import subprocess
    import sys

    from support import refused_port

    with refused_port() as port:  # held, never listening: nothing can answer there
        config = tmp_path / "gw.yaml"
        config.write_text(f"storage:\n  backend: redis\n  redis_url: redis://:hunter2pass@127.0.0.1:{port}/0\n")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "photogate", "--config", str(config), "--port", "0",
            "--data-dir", str(tmp_path / "d"), env={"WEBHOOK_SECRET": SECRET, "PATH": "/usr/bin:/bin"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode()
    assert proc.returncode == 3, text
    assert "photogate: state store error:" in text and f"127.0.0.1:{port}" in text
    assert "hunter2pass" not in text and "Traceback" not in text
