"""The image-check budget and the structural WebP check (issue 13, item 4): what a client
sees for a malformed WebP, a result whose check cannot fit in the budget, a config that
could not check a photo at its own pixel limit; and the budget's first-come-first-served order."""

from __future__ import annotations

import asyncio
import io
import struct

import pytest
from aiohttp import FormData, web
from PIL import Image
from support import FakeNode, image_bytes, make_config

from photogate.config import ConfigError
from photogate.imagechecker import MemoryBudget


def _webp(size: tuple[int, int] = (40, 30), **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 90)).save(buf, "WEBP", **kw)
    return buf.getvalue()


async def _upload(gateway, data: bytes, mime: str = "image/webp"):  # type: ignore[no-untyped-def]
    form = FormData()
    form.add_field("file", data, filename="p", content_type=mime)
    resp = await gateway.client.post("/api/v1/enhance", data=form)
    return resp.status, await resp.json()


def _malformed() -> dict[str, bytes]:
    lossy, lossless = _webp(quality=80), _webp(lossless=True)
    bad_start = bytearray(lossy)
    bad_start[lossy.index(b"VP8 ") + 8 + 3] ^= 0xFF  # the VP8 start code
    bad_signature = bytearray(lossless)
    bad_signature[lossless.index(b"VP8L") + 8] = 0x00  # the VP8L signature byte
    canvas = bytearray(_webp(icc_profile=b"\0" * 200))  # VP8X, canvas 40x30
    at = bytes(canvas).index(b"VP8X") + 8 + 4
    canvas[at:at + 3] = (99).to_bytes(3, "little")  # canvas 100 wide, image 40
    oversize = bytearray(lossy)
    struct.pack_into("<I", oversize, 4, len(lossy) + 100)
    return {
        "truncated lossy": lossy[:-7], "truncated lossless": lossless[: len(lossless) // 2],
        "VP8 start code": bytes(bad_start), "VP8L signature": bytes(bad_signature),
        "canvas mismatch": bytes(canvas), "RIFF size past the end": bytes(oversize),
        "no image chunk": b"RIFF" + struct.pack("<I", 4 + 8 + 4) + b"WEBP" + b"ICCP" + struct.pack("<I", 4) + b"abcd",
    }


async def test_malformed_webps_get_400_and_good_ones_pass(gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    await gateway.register(await nodes())
    for name, data in _malformed().items():
        status, body = await _upload(gateway, data)
        assert status == 400, (name, body)
        assert "truncated or corrupt (WEBP" in body["error"], (name, body)
    for data in (_webp(quality=80), _webp(lossless=True), _webp(icc_profile=b"\0" * 200),
                 _webp((64, 48), lossless=True, exact=True)):
        status, body = await _upload(gateway, data)
        assert status == 200, body
    frames = [Image.new("RGB", (32, 24), (i * 60, 0, 0)) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], duration=50)
    status, body = await _upload(gateway, buf.getvalue())
    assert status == 200, body


class ProgressiveNode(FakeNode):
    """Answers a 2x progressive 4:4:4 JPEG (its decode holds 6 bytes a pixel), or with
    ``bmp`` set a 2x BMP (decoded whole: 4 bytes a pixel)."""

    bmp = False

    async def _enhance(self, request: web.Request) -> web.Response:
        with Image.open(io.BytesIO(await request.read())) as im:
            out = im.convert("RGB").resize((im.width * 2, im.height * 2))
        buf = io.BytesIO()
        if self.bmp:
            out.save(buf, "BMP")
        else:
            out.save(buf, "JPEG", quality=80, subsampling=0, progressive=True)
        self.jobs += 1
        return web.Response(body=buf.getvalue(), content_type="image/bmp" if self.bmp else "image/jpeg")


async def test_a_result_whose_decode_exceeds_the_budget_is_checked_without_it(make_gateway) -> None:  # type: ignore[no-untyped-def]
    # max_pixels 1 MP and the smallest budget allowed for it (14.4 MB): a 2000x2000
    # progressive JPEG needs 24 MB of coefficients to decode. Until issue 17 its check was
    # that decode, and the task failed; now its container is the check (resultcheck): a few
    # MB, whatever its size. A BMP result, still decoded (16 MB), still cannot be checked.
    gateway = await make_gateway(**{"limits.max_pixels": 1_000_000,
                                    "limits.check_memory_bytes": 6_000_000 + 8 * 2**20,
                                    "dispatch.max_attempts": 1})
    node = ProgressiveNode()
    await node.start()
    try:
        await gateway.register(node)
        photo = image_bytes(1000, 1000, "JPEG")
        final = await gateway.wait_done(await gateway.submit(photo))
        assert final["status"] == "completed", final
        resp = await gateway.client.get(final["result_url"])
        with Image.open(io.BytesIO(await resp.read())) as im:
            assert im.size == (2000, 2000) and im.info.get("progressive")
        node.bmp = True
        final = await gateway.wait_done(await gateway.submit(photo))
        assert final["status"] == "failed", final
        assert "image-check budget" in final["error"], final
    finally:
        await node.stop()


def test_budget_too_small_for_max_pixels_is_a_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=r"limits.check_memory_bytes: must be >= 6 x limits.max_pixels"):
        make_config(tmp_path, **{"limits.check_memory_bytes": 100 * 2**20})
    assert make_config(tmp_path).limits.check_memory_bytes == 256 * 2**20


async def test_budget_serves_in_arrival_order_and_survives_cancellation() -> None:
    budget = MemoryBudget(10)
    await budget.acquire(6)
    big = asyncio.ensure_future(budget.acquire(6))
    small = asyncio.ensure_future(budget.acquire(1))
    await asyncio.sleep(0)
    # 4 bytes are free, but the small one may not overtake the big one that came first.
    assert not big.done() and not small.done() and budget.free == 4
    budget.release(6)
    await asyncio.wait_for(asyncio.gather(big, small), 5)
    assert budget.free == 3
    # A waiter cancelled at the head of the line lets those behind it through.
    blocked = asyncio.ensure_future(budget.acquire(9))
    behind = asyncio.ensure_future(budget.acquire(2))
    await asyncio.sleep(0)
    blocked.cancel()
    await asyncio.wait_for(behind, 5)
    assert budget.free == 1
    with pytest.raises(ValueError):
        await budget.acquire(11)
