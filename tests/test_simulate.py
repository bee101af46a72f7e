"""``gpunode --simulate``: the real node protocol, a job takes megapixels / speed seconds, the
speed in /health is measured, and ``--sim-output mirror`` answers the input flipped."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import aiohttp
from PIL import Image, ImageOps

from support import SECRET, Gateway, free_port, wait_until


def _pixels(data: bytes, flip: bool = False) -> bytes:
    with Image.open(io.BytesIO(data)) as im:
        return (ImageOps.mirror(im.convert("RGB")) if flip else im.convert("RGB")).tobytes()


async def test_simulated_nodes_register_and_take_their_time(gateway: Gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = str(gateway.client.make_url("")).rstrip("/")
    procs = []
    ports = [free_port(), free_port()]
    try:
        for i, (port, speed) in enumerate(zip(ports, (4.0, 1.0))):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "gpunode", "--simulate", "--speed", str(speed), "--slots", "1",
                 "--gateway", url, "--secret", SECRET, "--port", str(port), "--host", "127.0.0.1",
                 "--advertise-ip", "127.0.0.1", "--state-dir", str(tmp_path / f"n{i}"), "--sim-output", "mirror"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        async def both_registered() -> bool:
            resp = await gateway.client.get("/webhook/servers", headers={"X-Webhook-Secret": SECRET})
            return (await resp.json())["data"]["healthy_servers"] == 2

        await wait_until(both_registered, 30, "two simulated nodes to register")
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{ports[1]}/health") as resp:
            health = await resp.json()
        # Like a real node, nothing measured yet: no throughput to report.
        assert health["provider"] == "simulated" and health["throughput"] is None and health["slots"] == 1

        img = Image.new("RGB", (1000, 500), (200, 80, 40))
        img.paste((0, 0, 255), (0, 0, 100, 500))  # not symmetric: the mirror differs from the input
        buf = io.BytesIO()
        img.save(buf, "PNG")
        photo = buf.getvalue()  # 0.5 MP: 0.125 s at 4 MP/s, 0.5 s at 1 MP/s
        started = time.monotonic()
        finals = [await gateway.wait_done(await gateway.submit(photo)) for _ in range(2)]
        elapsed = time.monotonic() - started
        assert [f["status"] for f in finals] == ["completed", "completed"]
        assert sorted(f["server_id"] for f in finals) == ["GPU-001", "GPU-002"]  # round robin
        assert 0.6 <= elapsed < 5, elapsed  # 0.125 + 0.5 s of simulated work, plus overhead
        for final in finals:  # each result is the input mirrored, never the input itself
            resp = await gateway.client.get(f"/api/v1/download/{final['task_id']}")
            result = await resp.read()
            assert _pixels(result) == _pixels(photo, flip=True) and _pixels(result) != _pixels(photo)
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{ports[1]}/health") as resp:
            measured = (await resp.json())["throughput"]
        assert 0 < measured <= 1.01  # measured on the job it ran (a sleep takes at least what it was asked, give or take a timer tick)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
