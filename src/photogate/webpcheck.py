"""A WebP file's structure, read without decoding a pixel: RIFF chunks, VP8/VP8L/VP8X headers.

Decoding a WebP costs about 16 bytes per pixel in Pillow (libwebp's canvas and Pillow's copy):
a 38-byte lossless WebP at 6000x6000 takes 557 MiB. This reads the dimensions and checks that
every chunk is whole and every bitstream header well formed, which catches a truncated or
mislabelled file at any size for a few microseconds (see :mod:`photogate.imagecheck`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

from .segments import MAX_SEGMENTS, too_many

_VP8_START = b"\x9d\x01\x2a"
_ANIMATION = 0x02


@dataclass(frozen=True)
class WebPHeader:
    width: int
    height: int
    lossless: bool
    alpha: bool
    animated: bool


def _bitstream(fourcc: bytes, payload: bytes, size: int) -> tuple[int, int, bool, bool]:
    """(width, height, lossless, alpha) of a VP8 or VP8L chunk of ``size`` bytes, whose first
    bytes are ``payload``; ValueError for a malformed header."""
    if fourcc == b"VP8 ":
        if size < 10 or len(payload) < 10:
            raise ValueError("VP8 chunk too short")
        tag = payload[0] | payload[1] << 8 | payload[2] << 16
        if tag & 1:
            raise ValueError("VP8 data is not a key frame")
        if (tag >> 1) & 7 > 3:
            raise ValueError("unknown VP8 version")
        if not (tag >> 4) & 1:
            raise ValueError("VP8 frame is not displayable")
        first_partition = tag >> 5
        if payload[3:6] != _VP8_START:
            raise ValueError("VP8 start code missing")
        width, height = struct.unpack_from("<HH", payload, 6)
        # The first partition and at least one byte of coefficient data must be inside the chunk.
        if 10 + first_partition >= size:
            raise ValueError("VP8 data truncated")
        return width & 0x3FFF, height & 0x3FFF, False, False
    if fourcc == b"VP8L":
        if size < 5 or len(payload) < 5:
            raise ValueError("VP8L chunk too short")
        if payload[0] != 0x2F:
            raise ValueError("VP8L signature missing")
        bits = int.from_bytes(payload[1:5], "little")
        if bits >> 29:
            raise ValueError("unknown VP8L version")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, True, bool((bits >> 28) & 1)
    raise ValueError(f"unexpected chunk {fourcc!r} where image data belongs")


def _chunks(fh: BinaryIO, start: int, end: int) -> list[tuple[bytes, int, bytes, int]]:
    """(fourcc, offset of the payload, its first 32 bytes, size) of every chunk in [start, end)."""
    found = []
    pos = start
    while pos < end:
        fh.seek(pos)
        head = fh.read(8 + 32)
        if len(head) < 8 or pos + 8 > end:
            raise ValueError("chunk header truncated")
        fourcc, size = head[:4], struct.unpack_from("<I", head, 4)[0]
        if pos + 8 + size > end:
            raise ValueError(f"chunk {fourcc!r} truncated")
        found.append((fourcc, pos + 8, head[8:], size))
        if len(found) > MAX_SEGMENTS:
            raise too_many("WebP", MAX_SEGMENTS)
        pos += 8 + size + (size & 1)
    return found


def read_webp(fh: BinaryIO) -> WebPHeader:
    """The WebP's dimensions and kind, after checking its structure; ValueError if malformed."""
    fh.seek(0, 2)
    length = fh.tell()
    fh.seek(0)
    head = fh.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        raise ValueError("not a RIFF WEBP file")
    riff_end = 8 + struct.unpack_from("<I", head, 4)[0]
    if riff_end > length:
        raise ValueError(f"file truncated (RIFF says {riff_end} bytes, the file has {length})")
    chunks = _chunks(fh, 12, riff_end)
    if not chunks:
        raise ValueError("no image data")
    fourcc, _, payload, size = chunks[0]
    if fourcc != b"VP8X":
        width, height, lossless, alpha = _bitstream(fourcc, payload, size)
        return WebPHeader(width, height, lossless, alpha, animated=False)
    if size < 10 or len(payload) < 10:
        raise ValueError("VP8X chunk too short")
    flags = payload[0]
    width = int.from_bytes(payload[4:7], "little") + 1
    height = int.from_bytes(payload[7:10], "little") + 1
    animated = bool(flags & _ANIMATION)
    frames: list[tuple[int, int, int, int, bool]] = []  # x, y, w, h, lossless
    for fourcc, offset, payload, size in chunks[1:]:
        if fourcc in (b"VP8 ", b"VP8L") and not animated:
            w, h, lossless, _ = _bitstream(fourcc, payload, size)
            frames.append((0, 0, w, h, lossless))
        elif fourcc == b"ANMF" and animated:
            if size < 16 + 8:
                raise ValueError("ANMF chunk too short")
            x, y = int.from_bytes(payload[0:3], "little") * 2, int.from_bytes(payload[3:6], "little") * 2
            w, h = int.from_bytes(payload[6:9], "little") + 1, int.from_bytes(payload[9:12], "little") + 1
            inner = [c for c in _chunks(fh, offset + 16, offset + size) if c[0] in (b"VP8 ", b"VP8L")]
            if len(inner) != 1:
                raise ValueError("an animation frame needs exactly one image chunk")
            fw, fh_, lossless, _ = _bitstream(inner[0][0], inner[0][2], inner[0][3])
            if (fw, fh_) != (w, h):
                raise ValueError("animation frame size does not match its bitstream")
            frames.append((x, y, w, h, lossless))
    if not frames or (not animated and len(frames) != 1):
        raise ValueError("expected one image chunk" if not animated else "animation has no frames")
    for x, y, w, h, _ in frames:
        if x + w > width or y + h > height:
            raise ValueError("image data larger than the canvas")
    if not animated and frames[0][2:4] != (width, height):
        raise ValueError("image data does not match the canvas size")
    return WebPHeader(width, height, lossless=any(f[4] for f in frames), alpha=bool(flags & 0x10),
                      animated=animated)
