"""``gpunode --simulate``: the real node protocol, a job takes megapixels / speed seconds."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from support import SECRET, Gateway, image_bytes, wait_until


async def test_simulated_nodes_register_and_take_their_time(gateway: Gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = str(gateway.client.make_url("")).rstrip("/")
    procs = []
    try:
        for i, speed in enumerate((4.0, 1.0)):  # port 0: each binds a free port and registers it
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "gpunode", "--simulate", "--speed", str(speed), "--slots", "1",
                 "--gateway", url, "--secret", SECRET, "--port", "0", "--host", "127.0.0.1",
                 "--advertise-ip", "127.0.0.1", "--state-dir", str(tmp_path / f"n{i}")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        async def servers() -> dict[str, Any]:
            resp = await gateway.client.get("/webhook/servers", headers={"X-Webhook-Secret": SECRET})
            return dict((await resp.json())["data"])

        await wait_until(lambda: _healthy(servers, 2), 30, "two simulated nodes to register")
        speed_of = {}
        async with aiohttp.ClientSession() as http:
            for server in (await servers())["servers"]:
                async with http.get(f"http://127.0.0.1:{server['port']}/health") as resp:
                    health = await resp.json()
                assert health["provider"] == "simulated" and health["slots"] == 1
                speed_of[server["server_id"]] = health["throughput"]
        assert sorted(speed_of.values()) == [1.0, 4.0]

        photo = image_bytes(1000, 500, "JPEG")  # 0.5 MP: 0.125 s at 4 MP/s, 0.5 s at 1 MP/s
        took = {}
        for _ in range(2):
            started = time.monotonic()
            final = await gateway.wait_done(await gateway.submit(photo))
            assert final["status"] == "completed", final
            took[final["server_id"]] = time.monotonic() - started
        assert sorted(took) == ["GPU-001", "GPU-002"]  # round robin
        # Each node took at least megapixels / speed (lower bounds: they hold however busy the
        # machine is; how close to it they come is bench/scheduling.py's business).
        for server_id, seconds in took.items():
            assert seconds >= 0.5 / speed_of[server_id], (server_id, speed_of[server_id], seconds)
        resp = await gateway.client.get(f"/api/v1/download/{final['task_id']}")
        assert await resp.read() == photo  # a simulated node answers its input
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


async def _healthy(servers: Callable[[], Awaitable[dict[str, Any]]], count: int) -> bool:
    return (await servers())["healthy_servers"] == count
