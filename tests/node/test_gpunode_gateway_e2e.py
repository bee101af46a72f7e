"""End to end: the real photogate gateway and a real gpunode, in-process, on ephemeral ports."""

from __future__ import annotations

import io
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from helpers.photos import encoded
from helpers.polling import wait_until
from helpers.ports import free_socket
from node_support import photo
from PIL import Image

from gpunode.keys import REGISTRAR

photogate_app = pytest.importorskip("photogate.app")
photogate_config = pytest.importorskip("photogate.config")

SECRET = "e2e-secret-not-the-default"


async def test_photo_enhanced_through_the_gateway(tmp_path: Path, start_node, http) -> None:  # type: ignore[no-untyped-def]
    config = photogate_config.load_config(None, overrides={
        "webhook.secret": SECRET, "storage.data_dir": str(tmp_path / "gw"), "health_check.interval": 0.2,
    }, env={}, dev=True)
    sock = free_socket()
    runner = web.AppRunner(photogate_app.create_app(config), access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    gw = f"http://127.0.0.1:{sock.getsockname()[1]}"
    node = None
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
        await runner.cleanup()
        sock.close()
