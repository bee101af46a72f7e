"""photogate's own ``limits.max_pixels`` and ``limits.max_side``, for every accepted format.

Pillow refuses images above about 179 megapixels by itself (``DecompressionBombError``), and
the gateway reports that with the same 413: a test that uploads gigapixel bombs cannot tell
whether photogate's own limit works. Every image here is far below Pillow's limit, so only
photogate's check (:func:`photogate.imagecheck._check_limits`) refuses it; the refusal must
name the configured limit, leave nothing on disk, and an image at the limit is accepted.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import FormData
from PIL import Image
from support import Gateway

from photogate.keys import GATEWAY

#: Pillow's own refusal starts at twice this (about 179 MP): every image here is far below.
PILLOW_BOMB_LIMIT = 2 * Image.MAX_IMAGE_PIXELS


def _save(img: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


#: Each accepted format, as a cheap file of a given size: (Pillow format, MIME type, maker).
FORMATS: dict[str, tuple[str, Callable[[int, int], bytes]]] = {
    "jpeg_baseline": ("image/jpeg", lambda w, h: _save(Image.new("L", (w, h), 90), "JPEG", quality=50)),
    "png": ("image/png", lambda w, h: _save(Image.new("1", (w, h), 1), "PNG")),
    "webp_lossy": ("image/webp", lambda w, h: _save(Image.new("RGB", (w, h), (20, 90, 160)), "WEBP",
                                                    quality=10, method=0)),
    "webp_lossless": ("image/webp", lambda w, h: _save(Image.new("RGB", (w, h), (20, 90, 160)), "WEBP",
                                                       lossless=True, quality=0, method=0)),
    "bmp_uncompressed": ("image/bmp", lambda w, h: _save(Image.new("1", (w, h), 1), "BMP")),
}


@functools.cache
def image(kind: str, width: int, height: int) -> bytes:
    data = FORMATS[kind][1](width, height)
    with Image.open(io.BytesIO(data)) as im:  # what it says it is, and below Pillow's own limit
        assert im.size == (width, height) and (im.format or "").lower() in kind
        assert kind != "jpeg_baseline" or not im.info.get("progressive")
    assert width * height < PILLOW_BOMB_LIMIT / 4
    return data


async def _upload(gateway: Gateway, kind: str, data: bytes) -> tuple[int, dict[str, Any]]:
    form = FormData()
    form.add_field("file", io.BytesIO(data), filename="photo.bin", content_type=FORMATS[kind][0])
    resp = await gateway.client.post("/api/v1/enhance", data=form)
    return resp.status, await resp.json()


def _stored_inputs(gateway: Gateway) -> set[str]:
    """Task ids with an input file (or a part of one) in the blob store."""
    return {p.name.split(".")[0] for p in gateway.app[GATEWAY].blobs.inputs.iterdir() if p.is_file()}


async def _limit_holds(gateway: Gateway, kind: str, over: tuple[int, int], at: tuple[int, int], message: str) -> str:
    """Over the limit: 413 with ``message``, nothing stored; at the limit: accepted (its task id)."""
    status, body = await _upload(gateway, kind, image(kind, *over))
    assert (status, body.get("error")) == (413, message), (kind, status, body)
    assert _stored_inputs(gateway) == set(), f"{kind}: a refused upload left a file"
    status, body = await _upload(gateway, kind, image(kind, *at))
    assert status == 200 and body["status"] == "queued", (kind, status, body)
    assert _stored_inputs(gateway) == {body["task_id"]}, kind
    return str(body["task_id"])


@pytest.fixture
async def limited(make_gateway, nodes):  # type: ignore[no-untyped-def]
    async def make(**limits: int) -> Gateway:
        gateway = await make_gateway(**{f"limits.{key}": value for key, value in limits.items()})
        node = await nodes()
        node.mode = "reject400"  # accepted photos need not be enhanced: only accepted
        await gateway.register(node)
        return gateway

    return make


@pytest.mark.parametrize("kind", sorted(FORMATS))
async def test_a_small_configured_pixel_limit_is_photogates_own(limited, kind: str) -> None:  # type: ignore[no-untyped-def]
    gateway = await limited(max_pixels=1_000_000)
    await _limit_holds(gateway, kind, over=(1000, 1001), at=(1000, 1000),
                       message="image is 1000x1001 = 1.0 megapixels; the limit is 1.0 megapixels")


@pytest.mark.parametrize("kind", sorted(FORMATS))
async def test_the_default_36_megapixel_limit_refuses_40_megapixels(limited, kind: str) -> None:  # type: ignore[no-untyped-def]
    gateway = await limited()
    assert gateway.app[GATEWAY].config.limits.max_pixels == 36_000_000
    await _limit_holds(gateway, kind, over=(6400, 6250), at=(6000, 6000),
                       message="image is 6400x6250 = 40.0 megapixels; the limit is 36.0 megapixels")


@pytest.mark.parametrize("kind", sorted(FORMATS))
async def test_the_longest_side_limit_refuses_a_strip(limited, kind: str) -> None:  # type: ignore[no-untyped-def]
    gateway = await limited(max_side=2000)
    accepted = await _limit_holds(gateway, kind, over=(2001, 8), at=(2000, 8),
                                  message="image is 2001x8; the longest side allowed is 2000 pixels")
    # The other way round too: a tall strip.
    status, body = await _upload(gateway, kind, image(kind, 8, 2001))
    assert (status, body.get("error")) == (413, "image is 8x2001; the longest side allowed is 2000 pixels"), kind
    assert _stored_inputs(gateway) == {accepted}, kind
