"""``gpunode --simulate``: the real node protocol, a job takes megapixels / speed seconds, the
speed in /health is measured, and ``--sim-output mirror`` answers the input flipped."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from helpers.photos import encoded
from PIL import Image, ImageOps
from support import SECRET, Gateway, wait_until


def _pixels(data: bytes, flip: bool = False) -> bytes:
    with Image.open(io.BytesIO(data)) as im:
        return (ImageOps.mirror(im.convert("RGB")) if flip else im.convert("RGB")).tobytes()


async def test_simulated_nodes_register_and_take_their_time(gateway: Gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = str(gateway.client.make_url("")).rstrip("/")
    procs = []
    try:
        for i, speed in enumerate((4.0, 1.0)):  # port 0: each binds a free port and registers it
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "gpunode", "--simulate", "--speed", str(speed), "--slots", "1",
                 "--gateway", url, "--secret", SECRET, "--port", "0", "--host", "127.0.0.1",
                 "--advertise-ip", "127.0.0.1", "--state-dir", str(tmp_path / f"n{i}"), "--sim-output", "mirror"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        async def servers() -> dict[str, Any]:
            resp = await gateway.client.get("/webhook/servers", headers={"X-Webhook-Secret": SECRET})
            return dict((await resp.json())["data"])

        await wait_until(lambda: _healthy(servers, 2), 30, "two simulated nodes to register")

        async def node_health() -> dict[str, dict[str, Any]]:
            found = {}
            async with aiohttp.ClientSession() as http:
                for server in (await servers())["servers"]:
                    async with http.get(f"http://127.0.0.1:{server['port']}/health") as resp:
                        found[server["server_id"]] = await resp.json()
            return found

        for health in (await node_health()).values():
            # Like a real node, nothing measured yet: no throughput to report.
            assert health["provider"] == "simulated" and health["throughput"] is None and health["slots"] == 1

        img = Image.new("RGB", (1000, 500), (200, 80, 40))
        img.paste((0, 0, 255), (0, 0, 100, 500))  # not symmetric: the mirror differs from the input
        photo = encoded(img, "PNG")  # 0.5 MP: 0.125 s at 4 MP/s, 0.5 s at 1 MP/s
        took, finals = {}, []
        for _ in range(2):
            started = time.monotonic()
            final = await gateway.wait_done(await gateway.submit(photo))
            assert final["status"] == "completed", final
            took[final["server_id"]] = time.monotonic() - started
            finals.append(final)
        assert sorted(took) == ["GPU-001", "GPU-002"]  # round robin
        for final in finals:  # each result is the input mirrored, never the input itself
            resp = await gateway.client.get(f"/api/v1/download/{final['task_id']}")
            result = await resp.read()
            assert _pixels(result) == _pixels(photo, flip=True) and _pixels(result) != _pixels(photo)
        measured = {sid: h["throughput"] for sid, h in (await node_health()).items()}
        # Measured on the job each ran: the configured speeds, give or take a timer tick.
        assert [round(v) for v in sorted(measured.values())] == [1, 4], measured
        assert all(v <= speed * 1.01 for v, speed in zip(sorted(measured.values()), (1.0, 4.0))), measured
        # Each job took at least megapixels / speed (a lower bound that holds however busy the
        # machine is; how close to it they come is bench/scheduling.py's business).
        for server_id, seconds in took.items():
            assert seconds >= 0.5 / measured[server_id] * 0.99, (server_id, measured, seconds)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


async def _healthy(servers: Callable[[], Awaitable[dict[str, Any]]], count: int) -> bool:
    return (await servers())["healthy_servers"] == count
