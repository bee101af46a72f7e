"""End to end: the real photogate gateway and a real gpunode, in-process, on ephemeral ports."""

from __future__ import annotations

import io
from pathlib import Path

import aiohttp
import pytest
from helpers.photos import encoded
from helpers.polling import wait_until
from node_support import photo, real_gateway
from PIL import Image

from gpunode.keys import REGISTRAR

pytest.importorskip("photogate.app")

SECRET = "e2e-secret-not-the-default"


async def test_photo_enhanced_through_the_gateway(tmp_path: Path, start_node, http) -> None:  # type: ignore[no-untyped-def]
    node = None
    async with real_gateway(tmp_path, SECRET) as gw:
        try:
            node = await start_node(gateway_url=gw, secret=SECRET, advertise_ip="127.0.0.1")
            await wait_until(lambda: node.app[REGISTRAR].server_id, timeout=30)
            assert node.app[REGISTRAR].server_id.startswith("GPU-")

            src = photo().resize((64, 48))
            form = aiohttp.FormData()
            form.add_field("file", encoded(src, "JPEG", quality=95), filename="p.jpg", content_type="image/jpeg")
            async with http.post(f"{gw}/api/v1/enhance", data=form) as resp:
                assert resp.status in (200, 202), await resp.text()
                task_id = (await resp.json())["task_id"]

            async def done() -> dict | None:  # type: ignore[type-arg]
                async with http.get(f"{gw}/api/v1/status/{task_id}") as r:
                    body = await r.json()
                assert body["status"] != "failed", body
                return body if body["status"] == "completed" else None
            await wait_until(done, timeout=60, interval=0.1)

            async with http.get(f"{gw}/api/v1/download/{task_id}") as resp:
                assert resp.status == 200
                out = Image.open(io.BytesIO(await resp.read()))
            assert out.size == (128, 96)
            await node.stop()  # unregisters from the real gateway
            async with http.get(f"{gw}/webhook/servers", headers={"X-Webhook-Secret": SECRET}) as resp:
                listed = {s["server_id"]: s["status"] for s in (await resp.json())["data"]["servers"]}
            assert listed == {node.app[REGISTRAR].server_id: "offline"}  # offline, not forgotten
        finally:
            if node is not None:
                await node.stop()
