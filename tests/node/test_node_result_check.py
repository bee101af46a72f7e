"""The real gpunode's results pass the gateway's result check (issue 17): the format asked for,
the size its scale makes of the input (rounded, and turned by the input's EXIF orientation)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers.photos import encoded
from helpers.polling import wait_until
from node_support import photo, real_gateway
from PIL import Image

from gpunode.keys import REGISTRAR

pytest.importorskip("photogate.app")

SECRET = "e2e-secret-not-the-default"


def _rotated_jpeg(width: int, height: int) -> bytes:
    """A JPEG stored ``width`` x ``height`` whose EXIF says: turn it 90 degrees to show it."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(photo().resize((width, height)), "JPEG", quality=95, exif=exif.tobytes())


async def _enhanced(http: aiohttp.ClientSession, gw: str, data: bytes,
                    **fields: str) -> tuple[dict[str, Any], Image.Image]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="p", content_type="application/octet-stream")
    for key, value in fields.items():
        form.add_field(key, value)
    async with http.post(f"{gw}/api/v1/enhance", data=form) as resp:
        assert resp.status == 200, await resp.text()
        task_id = (await resp.json())["task_id"]

    async def done() -> dict[str, Any] | None:
        async with http.get(f"{gw}/api/v1/status/{task_id}") as r:
            body: dict[str, Any] = await r.json()
        return body if body["status"] in ("completed", "failed") else None

    final = await wait_until(done, timeout=60, interval=0.1)
    assert isinstance(final, dict)
    assert final["status"] == "completed", final
    async with http.get(f"{gw}/api/v1/download/{task_id}") as resp:
        out = Image.open(io.BytesIO(await resp.read()))
    return final, out


async def test_real_node_results_pass_the_result_check(tmp_path: Path, start_node, http) -> None:  # type: ignore[no-untyped-def]
    node = None
    async with real_gateway(tmp_path, SECRET) as gw:
        try:
            node = await start_node(gateway_url=gw, secret=SECRET, advertise_ip="127.0.0.1")
            await wait_until(lambda: node.app[REGISTRAR].server_id, timeout=30)
            final, out = await _enhanced(http, gw, _rotated_jpeg(48, 32))
            assert final["attempts"] == 1 and (out.format, out.size) == ("JPEG", (64, 96))
            png = encoded(photo().resize((33, 21)), "PNG")
            for fmt, size in (("webp", (50, 32)), ("png", (50, 32)), ("jpeg", (50, 32))):
                final, out = await _enhanced(http, gw, png, format=fmt, scale="1.5")
                assert final["attempts"] == 1 and out.format == fmt.upper(), final
                assert max(abs(a - b) for a, b in zip(out.size, size, strict=True)) <= 1, out.size
        finally:
            if node is not None:
                await node.stop()
