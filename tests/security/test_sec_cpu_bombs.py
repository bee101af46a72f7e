"""CPU bombs (issue 13, item 4 and acceptance 3): files that are cheap in memory but that a
decoder walking them in Python (with the GIL held, so the event loop starves) takes seconds
over. photogate refuses them after a bounded walk: more than ``segments.MAX_SEGMENTS`` PNG
chunks or JPEG segments before the scan, and RLE-compressed BMP; real photos still pass."""

from __future__ import annotations

import io
import struct
import sys
import zlib
from typing import Any

from aiohttp import FormData
from PIL import Image
from support import REPO

from photogate.segments import MAX_SEGMENTS

sys.path.insert(0, str(REPO / "bench"))
from bomb_images import bmp, bmp_rle8, cpu_bombs, jpeg_segments, png_chunks  # noqa: E402


async def _upload(gateway: Any, data: bytes, mime: str) -> tuple[int, dict[str, Any]]:
    form = FormData()
    form.add_field("file", io.BytesIO(data), filename="p", content_type=mime)
    resp = await gateway.client.post("/api/v1/enhance", data=form)
    return resp.status, await resp.json()


def _png_with_idat_chunks(count: int) -> bytes:
    """A real 300x200 PNG whose pixel data is split over ``count`` IDAT chunks."""
    buf = io.BytesIO()
    Image.effect_noise((300, 200), 40).convert("RGB").save(buf, "PNG")
    data = buf.getvalue()
    pos, idat = 8, b""
    while pos < len(data):
        size, kind = struct.unpack_from(">I4s", data, pos)
        if kind == b"IDAT":
            idat += data[pos + 8: pos + 8 + size]
        pos += 12 + size
    step = -(-len(idat) // count)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    pieces = b"".join(chunk(b"IDAT", idat[i:i + step]) for i in range(0, len(idat), step))
    return data[:33] + pieces + chunk(b"IEND", b"")


async def test_cpu_bombs_are_refused_with_a_reason(gateway: Any, nodes: Any) -> None:
    await gateway.register(await nodes())
    made = cpu_bombs(20 * 1024 * 1024)
    for name in ("png_chunks", "jpeg_segments"):
        data, mime = made[name]
        status, body = await _upload(gateway, data, mime)
        assert status == 400 and f"more than {MAX_SEGMENTS:,} pieces" in body["error"], (name, status, body)
    data, mime = made["bmp_rle_runs_of_1"]
    status, body = await _upload(gateway, data, mime)
    assert status == 415 and "RLE-compressed BMP is not accepted" in body["error"], body
    status, body = await _upload(gateway, bmp_rle8(64, run=255), "image/bmp")
    assert status == 415, body


async def test_the_walk_refuses_only_what_no_encoder_writes(gateway: Any, nodes: Any) -> None:
    """Just under the limit is a valid photo; real files (thousands of IDATs, an uncompressed
    BMP) are accepted and enhanced."""
    await gateway.register(await nodes())
    for data, mime in ((png_chunks(MAX_SEGMENTS - 10), "image/png"),
                       (jpeg_segments(MAX_SEGMENTS - 30), "image/jpeg"),
                       (_png_with_idat_chunks(3000), "image/png"),
                       (bmp(300), "image/bmp")):
        status, body = await _upload(gateway, data, mime)
        assert status == 200, body
        assert (await gateway.wait_done(body["task_id"]))["status"] == "completed"
    status, body = await _upload(gateway, png_chunks(MAX_SEGMENTS + 1), "image/png")
    assert status == 400, body
