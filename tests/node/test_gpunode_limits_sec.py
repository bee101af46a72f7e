"""gpunode hardening (issue 13, items 14(b) and 14(f)): every limit is checked from the
header before the photo is decoded or enhanced, and a CMYK photo's ICC profile is used to
convert it, never left on the RGB result."""

from __future__ import annotations

import io
import struct

from helpers.photos import encoded
from PIL import Image, ImageCms

AUTH = {"Authorization": "Bearer tok"}


async def _post(http, node, body: bytes, query: str = ""):  # type: ignore[no-untyped-def]
    async with http.post(f"{node.url}/v1/enhance{query}", data=body, headers=AUTH) as resp:
        return resp.status, resp.headers.get("Content-Type"), await resp.read()


async def _throughput(http, node):  # type: ignore[no-untyped-def]
    async with http.get(f"{node.url}/health") as resp:
        return (await resp.json())["throughput"]


async def test_webp_side_limit_refused_from_the_header_before_inference(start_node, http) -> None:  # type: ignore[no-untyped-def]
    # A 9000 x 8 strip at scale 2 is 18000 px wide: more than WebP's 16383. Before, the
    # node ran the whole inference and only then refused to encode it.
    node = await start_node(token="tok")
    strip = Image.new("RGB", (9000, 8), (90, 140, 200))
    for body in (encoded(strip), encoded(strip, "WEBP", lossless=True)):
        status, _, answer = await _post(http, node, body, "?format=webp&scale=2")
        assert status == 400, answer
        assert "webp cannot hold a 18000x16 image" in answer.decode()
    assert await _throughput(http, node) is None  # no photo reached the model
    # The same strip as PNG (no side limit) is enhanced.
    status, content_type, answer = await _post(http, node, encoded(strip), "?format=png&scale=2")
    assert status == 200 and content_type == "image/png"
    assert Image.open(io.BytesIO(answer)).size == (18000, 16)


async def test_output_pixels_refused_from_the_header(start_node, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_node(token="tok", max_output_pixels=1_000_000)
    bomb = encoded(Image.new("RGB", (2000, 2000), (1, 2, 3)), "WEBP", lossless=True)
    status, _, answer = await _post(http, node, bomb, "?scale=2")
    assert status == 400 and "result too large" in answer.decode()
    assert await _throughput(http, node) is None


def _s15(x: float) -> bytes:
    return struct.pack(">i", round(x * 65536))


def cmyk_profile() -> bytes:
    """A minimal valid ICC v2 CMYK printer profile (lut8 A2B0/B2A0, Lab PCS) with a colour
    response of its own: cyan ink comes out (0, 180, 238) in sRGB, not Pillow's (0, 255, 255)."""
    ident = bytes(range(256))
    eye = b"".join(_s15(1.0 if i == j else 0.0) for i in range(3) for j in range(3))
    clut = bytearray()
    for c in (0, 1):
        for m in (0, 1):
            for y in (0, 1):
                for k in (0, 1):
                    light = 100 * (1 - k) * (1 - 0.35 * (c + m + y)) if c + m + y <= 2 else 100 * (1 - k) * 0.1
                    a, b = -40 * c + 60 * m - 5 * y, -45 * c - 10 * m + 70 * y
                    clut += bytes((round(max(0, light) * 2.55), round(a + 128), round(b + 128)))
    a2b = b"mft1" + bytes(4) + bytes((4, 3, 2, 0)) + eye + ident * 4 + bytes(clut) + ident * 3
    b2a = b"mft1" + bytes(4) + bytes((3, 4, 2, 0)) + eye + ident * 3 + bytes([0, 0, 0, 255] * 4 + [0] * 16) + ident * 4
    desc = b"desc" + bytes(4) + struct.pack(">I", 10) + b"test CMYK\0" + bytes(8 + 3 + 67)
    wtpt = b"XYZ " + bytes(4) + _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    tags = [(b"desc", desc), (b"wtpt", wtpt), (b"cprt", b"text" + bytes(4) + b"none\0"), (b"A2B0", a2b), (b"B2A0", b2a)]
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for sig, tag in tags:
        table += sig + struct.pack(">II", offset + len(data), len(tag))
        data += tag + bytes(-len(tag) % 4)
    body = struct.pack(">I", len(tags)) + table + data
    header = (struct.pack(">I", 128 + len(body)) + b"lcms" + struct.pack(">I", 0x02100000) + b"prtrCMYKLab "
              + bytes(12) + b"acspAPPL" + bytes(4 + 16 + 4) + _s15(0.9642) + _s15(1.0) + _s15(0.8249) + b"lcms"
              + bytes(44))
    return header + body


async def test_cmyk_jpeg_converted_through_its_profile_and_not_tagged_cmyk(start_node, http) -> None:  # type: ignore[no-untyped-def]
    # Before: the RGB result still carried the CMYK profile (and Pillow's naive colours).
    node = await start_node(token="tok")
    profile = cmyk_profile()
    cyan = Image.new("CMYK", (48, 32), (255, 0, 0, 0))
    expected = ImageCms.profileToProfile(cyan, ImageCms.ImageCmsProfile(io.BytesIO(profile)),
                                         ImageCms.createProfile("sRGB"), outputMode="RGB").getpixel((0, 0))
    assert expected != (0, 255, 255)
    for query in ("", "?format=png", "?format=webp"):
        status, _, answer = await _post(http, node, encoded(cyan, "JPEG", quality=95, icc_profile=profile), query)
        assert status == 200, answer
        out = Image.open(io.BytesIO(answer))
        assert out.mode == "RGB" and out.size == (96, 64)
        icc = out.info.get("icc_profile")
        assert icc is None or icc[16:20] == b"RGB ", f"{query or 'jpeg'} result tagged {icc[16:20]!r}"
        got = out.getpixel((48, 32))
        assert all(abs(g - e) <= 24 for g, e in zip(got, expected)), (query, got, expected)
    # A matching profile is kept: an RGB photo's own profile stays on its RGB result.
    rgb_profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    status, _, answer = await _post(http, node, encoded(Image.new("RGB", (48, 32), (200, 30, 30)), "JPEG",
                                                          icc_profile=rgb_profile))
    assert status == 200 and Image.open(io.BytesIO(answer)).info.get("icc_profile") == rgb_profile
