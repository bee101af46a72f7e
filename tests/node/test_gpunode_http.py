"""The node protocol: POST /v1/enhance, GET /health, GET /info on a real server."""

from __future__ import annotations

import asyncio
import io
import json
import time

import numpy as np
from helpers.photos import encoded
from helpers.polling import wait_until
from node_support import mean_abs, photo
from PIL import Image

from gpunode import tiling
from gpunode.keys import ENGINE

AUTH = {"Authorization": "Bearer tok"}


async def post(http, node, body: bytes, query: str = "", headers=None):  # type: ignore[no-untyped-def]
    headers = AUTH if headers is None else headers
    async with http.post(f"{node.url}/v1/enhance{query}", data=body, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def test_enhance_returns_2x_image_with_timing_headers(start_node, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_node(token="tok")
    src = photo().resize((40, 30))
    status, headers, body = await post(http, node, encoded(src))
    assert status == 200
    assert headers["Content-Type"] == "image/png"
    out = Image.open(io.BytesIO(body))
    assert out.size == (80, 60) and out.mode == "RGB"
    assert headers["X-Output-Width"] == "80" and headers["X-Output-Height"] == "60"
    assert float(headers["X-Inference-Ms"]) > 0
    # JPEG input answers JPEG by default; format/quality are honoured.
    status, headers, body = await post(http, node, encoded(src, "JPEG", quality=90))
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    status, headers, body = await post(http, node, encoded(src), "?format=webp&quality=80")
    assert status == 200 and headers["Content-Type"] == "image/webp"
    assert Image.open(io.BytesIO(body)).format == "WEBP"


async def test_refuses_inference_without_the_right_token(start_node, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_node(token="tok")
    body = encoded(photo().resize((16, 16)))
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "tok"}):
        status, _, raw = await post(http, node, body, headers=headers)
        assert status == 401
        assert "token" in json.loads(raw)["error"]
    # No gateway, no token: a node that has no credential refuses everything.
    bare = await start_node()
    status, _, raw = await post(http, bare, body, headers={"Authorization": "Bearer "})
    assert status == 401 and b"not registered" in raw


async def test_bad_images_get_4xx_with_a_reason(start_node, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_node(token="tok", max_input_pixels=10_000)
    cases = [
        (b"this is not an image", "", 415),
        (b"", "", 400),
        (encoded(photo().resize((32, 32)))[:200], "", 400),  # truncated PNG
        (encoded(photo().resize((200, 100))), "", 400),  # over max_input_pixels
        (encoded(photo().resize((16, 16))), "?scale=0", 400),
        (encoded(photo().resize((16, 16))), "?scale=abc", 400),
        (encoded(photo().resize((16, 16))), "?format=gif", 400),
        (encoded(photo().resize((16, 16))), "?quality=0", 400),
    ]
    for body, query, want in cases:
        status, headers, raw = await post(http, node, body, query)
        assert status == want, (query, raw)
        assert headers["Content-Type"].startswith("application/json")
        assert json.loads(raw)["error"]


async def test_scale_4_runs_two_passes_and_other_scales_resize(start_node, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_node(token="tok")
    src = photo().resize((24, 20))
    for query, size in (("?scale=4", (96, 80)), ("?scale=3", (72, 60)), ("?scale=1.5", (36, 30)), ("", (48, 40))):
        status, _, body = await post(http, node, encoded(src), query)
        assert status == 200, body
        assert Image.open(io.BytesIO(body)).size == size, query
    # x4 on a x2 model is two model passes: compare with running the model twice.
    model = node.app[ENGINE].model
    twice = tiling.upscale(model, tiling.upscale(model, src))
    _, _, body = await post(http, node, encoded(src), "?scale=4&format=png")
    assert mean_abs(Image.open(io.BytesIO(body)), twice) < 0.01


async def test_alpha_gray_palette_16bit_and_exif(start_node, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_node(token="tok")
    base = photo().resize((20, 16))
    # RGBA: alpha kept (upscaled separately), answered as PNG.
    rgba = base.convert("RGBA")
    alpha = Image.linear_gradient("L").resize((20, 16))
    rgba.putalpha(alpha)
    status, _, body = await post(http, node, encoded(rgba))
    out = Image.open(io.BytesIO(body))
    assert status == 200 and out.mode == "RGBA" and out.size == (40, 32)
    assert abs(float(np.asarray(out.getchannel("A"), np.float32).mean()) - float(np.asarray(alpha).mean())) < 3
    # Grayscale stays grayscale; palette and 16-bit grayscale work.
    for img, mode in ((base.convert("L"), "L"), (base.convert("P"), "RGB"),
                      (Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257), "L")):
        status, _, body = await post(http, node, encoded(img))
        out = Image.open(io.BytesIO(body))
        assert status == 200 and out.size == (40, 32) and out.mode == mode, img.mode
    # 16-bit content is scaled, not clipped: mean brightness survives.
    assert abs(np.asarray(out, np.float32).mean() - np.asarray(base.convert("L"), np.float32).mean()) < 4
    # EXIF orientation 6 (rotate 90 CW) is applied: 20x16 stored -> 16x20 shown -> 32x40 out.
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = encoded(base, "JPEG", exif=exif.tobytes())
    status, _, body = await post(http, node, jpeg)
    out = Image.open(io.BytesIO(body))
    assert status == 200 and out.size == (32, 40)
    assert out.getexif().get(0x0112) in (None, 1)


async def test_health_answers_during_a_long_inference(start_node, http) -> None:  # type: ignore[no-untyped-def]
    """Health is answered while the one inference runs, not after it: five answers that say
    ``busy: 1`` before the job's answer. (Latency figures: bench/health_latency.py.)"""
    node = await start_node(token="tok", tile_size=128)
    big = encoded(photo().resize((384, 384)))  # ~9 tiles, a few seconds on 2 cores
    job = asyncio.ensure_future(post(http, node, big, "?format=png"))
    try:
        async def busy() -> bool:
            async with http.get(f"{node.url}/health") as resp:
                return (await resp.json())["busy"] == 1
        await wait_until(busy, timeout=30)
        answers_while_busy, slowest = 0, 0.0
        while answers_while_busy < 5:
            t0 = time.perf_counter()
            async with http.get(f"{node.url}/health") as resp:
                data = await resp.json()
            slowest = max(slowest, time.perf_counter() - t0)
            # The job still running when the answer came: the answer was given during inference.
            assert data["busy"] == 1 and not job.done(), (answers_while_busy, "inference finished too fast to measure")
            assert data["status"] == "ok" and data["slots"] == 1 and data["provider"] == "CPUExecutionProvider"
            answers_while_busy += 1
            await asyncio.sleep(0.05)
        # A generous guard (the measurement, ~2 ms, is bench/health_latency.py): an event loop
        # blocked by a tile would take the tile's time, several hundred ms here.
        assert slowest < 0.5, f"slowest /health answer during inference: {slowest * 1000:.0f} ms"
        status, _, _ = await job
        assert status == 200
    finally:
        if not job.done():
            await job
    async with http.get(f"{node.url}/health") as resp:
        data = await resp.json()
    assert data["busy"] == 0 and data["queued"] == 0 and data["throughput"] > 0


async def test_full_queue_answers_503(start_node, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_node(token="tok", queue_size=0, tile_size=128)
    job = asyncio.ensure_future(post(http, node, encoded(photo().resize((256, 256)))))

    async def busy() -> bool:
        async with http.get(f"{node.url}/health") as resp:
            return (await resp.json())["busy"] == 1
    await wait_until(busy, timeout=30)
    status, headers, raw = await post(http, node, encoded(photo().resize((16, 16))))
    assert status == 503 and b"busy" in raw and headers.get("Retry-After")
    assert (await job)[0] == 200


async def test_info_describes_model_and_versions(start_node, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_node(token="tok")
    async with http.get(f"{node.url}/info") as resp:
        info = await resp.json()
    assert info["model"]["name"] == "waifu2x-upconv7-photo-x2" and info["model"]["scale"] == 2
    assert len(info["model"]["sha256"]) == 64
    assert info["provider"] == "CPUExecutionProvider"
    assert {"onnxruntime", "numpy", "pillow", "gpunode"} <= set(info["versions"])
    assert "tok" not in str(info)
