"""Decode bombs: small files of every format photogate accepts whose pixels sit at a limit.

Used by ``bench/bombs.py`` and ``tests/security/test_sec_bombs.py``. Each is a valid image
(it decodes), so only a memory bound on the gateway's check keeps it harmless. ``cpu_bombs``
are cheap in memory and expensive for a decoder that walks them in Python.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def _side(max_pixels: int) -> int:
    side = 1
    while (side + 1) * (side + 1) <= max_pixels:
        side += 1
    return side


def _noisy(side: int) -> Image.Image:
    # A few coloured stripes: enough for a lossy encoder to keep real coefficients.
    img = Image.new("RGB", (side, side), (120, 60, 200))
    stripe = Image.new("RGB", (side, 16), (10, 240, 30))
    for y in range(0, side, 256):
        img.paste(stripe, (0, y))
    return img


def webp_lossless(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (30, 90, 200)).save(buf, "WEBP", lossless=True, quality=0, method=0)
    return buf.getvalue()


def webp_lossy(side: int) -> bytes:
    buf = io.BytesIO()
    _noisy(side).save(buf, "WEBP", quality=90, method=0)
    return buf.getvalue()


def jpeg(side: int, *, progressive: bool) -> bytes:
    buf = io.BytesIO()
    # 4:4:4: the most coefficient memory a progressive decode must hold.
    _noisy(side).save(buf, "JPEG", quality=90, subsampling=0, progressive=progressive)
    return buf.getvalue()


def png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def bmp_rle8(side: int, run: int = 255) -> bytes:
    """An 8-bit RLE BMP (Pillow cannot write one): runs of ``run`` pixels, row by row. Runs of
    255 make a memory bomb; runs of 1 a CPU one (Pillow decodes RLE in Python)."""
    row = bytearray()
    left = side
    while left:
        row += bytes((min(left, run), 1))
        left -= min(left, run)
    row += b"\x00\x00"  # end of line
    rows = bytes(row) * side + b"\x00\x01"  # end of bitmap
    palette = b"".join(bytes((i, 255 - i, (i * 7) & 255, 0)) for i in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(rows), 2835, 2835, 256, 0)
    header = b"BM" + struct.pack("<IHHI", offset + len(rows), 0, 0, offset)
    return header + info + palette + bytes(rows)


def bmp(side: int) -> bytes:
    """An uncompressed 1-bit BMP: the smallest BMP at a pixel limit (RLE ones are refused)."""
    buf = io.BytesIO()
    img = Image.new("1", (side, side), 0)
    img.paste(1, (0, 0, side, side // 2))
    img.save(buf, "BMP")
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_chunks(count: int) -> bytes:
    """A valid 64x64 PNG with ``count`` empty private chunks before its pixels: a CPU bomb
    for a decoder that walks chunks in Python (12 bytes a chunk)."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "PNG")
    data = buf.getvalue()
    return data[:33] + _png_chunk(b"pgBm") * count + data[33:]


def jpeg_segments(count: int) -> bytes:
    """A valid 64x64 JPEG with ``count`` empty APP15 segments before its scan (4 bytes each)."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "JPEG")
    data = buf.getvalue()
    return data[:2] + b"\xff\xef\x00\x02" * count + data[2:]


def cpu_bombs(upload_bytes: int) -> dict[str, tuple[bytes, str]]:
    """Name -> (bytes, MIME type) of files that are cheap in memory but, walked in Python,
    expensive in CPU, filling ``upload_bytes``; photogate refuses each after a short walk."""
    return {
        "png_chunks": (png_chunks(upload_bytes // 12 - 100), "image/png"),
        "jpeg_segments": (jpeg_segments(upload_bytes // 4 - 1000), "image/jpeg"),
        "bmp_rle_runs_of_1": (bmp_rle8(1500, run=1), "image/bmp"),
    }


def bombs(max_pixels: int) -> dict[str, tuple[bytes, str]]:
    """Name -> (bytes, MIME type) of one bomb per accepted format at ``max_pixels``."""
    side = _side(max_pixels)
    return {
        "webp_lossless": (webp_lossless(side), "image/webp"),
        "webp_lossy": (webp_lossy(side), "image/webp"),
        "jpeg_progressive": (jpeg(side, progressive=True), "image/jpeg"),
        "jpeg_baseline": (jpeg(side, progressive=False), "image/jpeg"),
        "png": (png(side), "image/png"),
        "bmp": (bmp(side), "image/bmp"),
    }
