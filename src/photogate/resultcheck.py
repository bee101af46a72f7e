"""A node's result, checked for what matters without decoding a pixel.

An upload is untrusted input and is decoded (:mod:`photogate.imagecheck`). A result comes
from a node the gateway registered and sent the job to; what can be wrong with it is a cut
or padded transfer, a corrupted file, the wrong format or the wrong size. All of that is in
the container, so this reads the container only, at the speed of a CRC (a few ms for 8 MP):

- the format is the one the task asked for (any of JPEG, PNG, WebP when it asked none);
- the width and height are what the node's scale makes of the input (either orientation: a
  node applies the input's EXIF rotation), within the pixel limit; the file within its bound;
- PNG: the signature, every chunk's length and CRC-32, IHDR first, the IDATs present and
  consecutive, IEND last with nothing after it;
- JPEG: SOI, every segment up to the first scan whole, the frame header (the size), the
  Huffman tables and the scan header well formed, EOI as the file's last two bytes;
- WebP: the RIFF size is the file's size, the chunks whole, the VP8/VP8L/VP8X headers
  consistent (:mod:`photogate.webpcheck`), one still image.

What it does not see: bit errors inside JPEG entropy-coded data (no checksum there). The full
decode did not see them either: libjpeg turns them into wrong pixels, not errors
(``tests/security/test_sec_result_check.py`` shows it). libwebp does refuse most of them, so a
WebP result is decoded after this check as it was before (:data:`DECODED`), and so is a BMP
(a node echoing a BMP upload), which has no structure worth the name; both under the memory
budget (:meth:`photogate.imagechecker.ImageChecker.check_result`).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import segments
from .errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from .imagecheck import MIME, ImageInfo, Source, sniff
from .webpcheck import read_webp

#: The formats a task may ask for (``format`` as the API stores it) -> the name of the bytes.
ASKED = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
#: Formats whose structure is checked here; any other result is decoded.
STRUCTURAL = ("JPEG", "PNG", "WEBP")
#: Formats decoded as well, when the decode fits the memory budget: WebP has no checksum of
#: its own and libwebp refuses most bit errors in its coded data (62 % of single-byte flips
#: in a lossy 0.1 MP file, 83 % lossless, against 2 % for libjpeg), so a structural check
#: alone would serve results the full decode refused.
DECODED = ("WEBP",)
#: The largest scale a node may apply (gpunode's own limit), for a scale nobody stated.
MAX_SCALE = 16.0
#: Bytes read at a time while a CRC runs: what a check holds, whatever the result's size.
BLOCK = 1024 * 1024
#: Memory a structural check holds at its peak (a block, the file object, the walk).
COST = 2 * BLOCK

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG colour type -> the bit depths it allows.
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
#: JPEG frame headers: SOF0-3, SOF5-7, SOF9-11, SOF13-15 (not DHT C4, JPG C8, DAC CC).
_SOF = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)})
_SOS, _DHT, _TEM = 0xDA, 0xC4, 0x01
#: Markers without a length (RST0-7, SOI, EOI): none belongs before the first scan.
_BARE = frozenset(range(0xD0, 0xDA))


@dataclass(frozen=True)
class ResultSpec:
    """What a task's result must be: made from a ``width`` x ``height`` input at ``scale``."""

    width: int
    height: int
    #: The scale the result is made at; None: unknown (any one scale for both sides, up to MAX_SCALE).
    scale: float | None
    #: The format asked for (``jpeg``/``png``/``webp``); None: any the gateway serves.
    format: str | None
    max_pixels: int
    #: The most bytes the result may have (:func:`photogate.nodeio.result_bound`).
    max_bytes: int


class BadResult(BadRequest):
    """The node's result is not the image the task asked for."""


def check_structure(source: Source, spec: ResultSpec) -> ImageInfo | None:
    """The result's format and size once its container is checked; None for a format this
    does not check (decode it, then :func:`check_size`). Raises :class:`BadResult` (or the
    413/415 of :mod:`photogate.imagecheck`). Blocking: run it on a checker thread."""
    with io.BytesIO(source) if isinstance(source, bytes) else Path(source).open("rb") as fh:
        size = fh.seek(0, 2)
        fh.seek(0)
        fmt = sniff(fh.read(32))
        if fmt is None:
            raise UnsupportedMediaType("the result is not an image of a format the gateway serves")
        _check_format(fmt, spec)
        if size > spec.max_bytes:
            raise BadResult(f"the result has {size} bytes, more than the {spec.max_bytes} expected")
        if fmt not in STRUCTURAL:
            return None
        try:
            if fmt == "PNG":
                width, height = _png(fh, size)
            elif fmt == "JPEG":
                width, height = _jpeg(fh, size)
            else:
                width, height = _webp(fh, size)
        except (ValueError, struct.error) as exc:
            raise BadResult(f"the {fmt} result is truncated or corrupt: {exc}") from None
    info = ImageInfo(fmt, MIME[fmt], width, height)
    check_size(info, spec)
    return info


def check_size(info: ImageInfo, spec: ResultSpec) -> None:
    """Refuse a result whose size is not what the node's scale makes of the input."""
    if info.pixels > spec.max_pixels:
        raise PayloadTooLarge(f"the result is {info.width}x{info.height}, over the limit of "
                              f"{spec.max_pixels / 1e6:.0f} megapixels")
    out = (info.width, info.height)
    if not any(_scaled(out, size, spec.scale) for size in ((spec.width, spec.height), (spec.height, spec.width))):
        at = "an unknown scale" if spec.scale is None else f"scale {spec.scale:g}"
        raise BadResult(f"the result is {info.width}x{info.height}, not what {at} makes of the "
                        f"{spec.width}x{spec.height} input")


def _check_format(fmt: str, spec: ResultSpec) -> None:
    asked = ASKED.get(spec.format) if spec.format else None
    if asked is not None and fmt != asked:
        raise BadResult(f"the result is {fmt}, the task asked for {asked}")


def _scaled(out: tuple[int, int], size: tuple[int, int], scale: float | None) -> bool:
    """Whether ``out`` is ``size`` times ``scale`` under any rounding (round, floor or ceil):
    each side within one pixel of the exact product. An unknown scale: some one scale in
    (0, MAX_SCALE] fits both sides."""
    if scale is not None:
        return all(abs(o - s * scale) < 1 for o, s in zip(out, size, strict=True))
    low = max((o - 1) / s for o, s in zip(out, size, strict=True))
    high = min((o + 1) / s for o, s in zip(out, size, strict=True))
    return low < high and low < MAX_SCALE


def _png(fh: BinaryIO, size: int) -> tuple[int, int]:
    """Width and height from IHDR, after every chunk's length and CRC-32; ValueError if not."""
    fh.seek(0)
    if fh.read(8) != _PNG_SIGNATURE:
        raise ValueError("no PNG signature")
    pos, dims, idat = 8, None, "none"  # idat: none -> in (a run of IDATs) -> after
    for _ in range(segments.MAX_SEGMENTS):
        head = fh.read(8)
        length, kind = struct.unpack(">I4s", head) if len(head) == 8 else (0, b"")
        if not kind or pos + 12 + length > size:
            raise ValueError(f"chunk at byte {pos} runs past the end of the file")
        if not kind.isalpha() or length > 0x7FFFFFFF:
            raise ValueError(f"malformed chunk at byte {pos}")
        data = _crc_checked(fh, kind, length)
        if dims is None:
            dims = _ihdr(kind, data)
        elif kind == b"IHDR":
            raise ValueError("a second IHDR")
        if kind == b"IDAT":
            if idat == "after":
                raise ValueError("IDAT chunks are not consecutive")
            idat = "in"
        elif idat == "in":
            idat = "after"
        pos += 12 + length
        if kind == b"IEND":
            if length or idat == "none":
                raise ValueError("IEND with data" if length else "no IDAT chunk")
            if pos != size:
                raise ValueError(f"{size - pos} bytes after IEND")
            return dims
    raise segments.too_many("PNG", segments.MAX_SEGMENTS)


def _crc_checked(fh: BinaryIO, kind: bytes, length: int) -> bytes:
    """The chunk's data (its first block only: IHDR's 13 bytes are what is used), after its CRC."""
    crc, first, left = zlib.crc32(kind), b"", length
    while left:
        block = fh.read(min(BLOCK, left))
        if not block:
            raise ValueError(f"{kind.decode('latin-1')} chunk truncated")
        crc = zlib.crc32(block, crc)
        first = first or block
        left -= len(block)
    stored = fh.read(4)
    if len(stored) < 4 or struct.unpack(">I", stored)[0] != crc:
        raise ValueError(f"{kind.decode('latin-1')} chunk fails its CRC")
    return first


def _ihdr(kind: bytes, data: bytes) -> tuple[int, int]:
    if kind != b"IHDR" or len(data) != 13:
        raise ValueError("the first chunk is not a 13-byte IHDR")
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", data)
    if depth not in _PNG_DEPTHS.get(colour, ()) or compression or filtering or interlace > 1:
        raise ValueError("IHDR names no valid PNG")
    return width, height


def _jpeg(fh: BinaryIO, size: int) -> tuple[int, int]:
    """Width and height from the one frame header, after a walk from SOI to the first scan's
    header (the frame, Huffman table and scan headers read) and a look at the last two bytes
    (EOI); ValueError if not."""
    fh.seek(2)
    pos, frame = 2, None  # frame: width, height, the component ids
    for _ in range(segments.MAX_SEGMENTS):
        head = fh.read(4)
        if len(head) < 2 or head[0] != 0xFF:
            raise ValueError(f"no marker at byte {pos}")
        marker = head[1]
        if marker in (0xFF, _TEM):  # a fill byte (the marker starts one byte on), or TEM
            pos += 1 if marker == 0xFF else 2
            fh.seek(pos)
            continue
        if len(head) < 4 or marker in _BARE:
            raise ValueError(f"marker {marker:02X} at byte {pos} before the first scan")
        length = struct.unpack_from(">H", head, 2)[0]
        if length < 2 or pos + 2 + length > size - 2:
            raise ValueError(f"segment {marker:02X} at byte {pos} runs past the end of the file")
        if marker in _SOF:
            if frame is not None:
                raise ValueError("a second frame header")
            frame = _sof(fh.read(length - 2))
        elif marker == _DHT:
            _dht(fh.read(length - 2))
        elif marker == _SOS:
            if frame is None:
                raise ValueError("a scan before the frame header")
            _sos(fh.read(length - 2), frame[2])
            fh.seek(size - 2)
            if fh.read(2) != b"\xff\xd9":
                raise ValueError("no EOI marker at the end (cut short, or bytes after it)")
            return frame[0], frame[1]
        pos += 2 + length
        fh.seek(pos)
    raise segments.too_many("JPEG", segments.MAX_SEGMENTS)


def _sof(body: bytes) -> tuple[int, int, bytes]:
    """A frame header: width, height and the component ids."""
    if len(body) < 6 or not body[5] or len(body) != 6 + 3 * body[5]:
        raise ValueError("malformed frame header")
    height, width = struct.unpack_from(">HH", body, 1)
    components = [body[at:at + 3] for at in range(6, len(body), 3)]
    if any(not (1 <= c[1] >> 4 <= 4 and 1 <= c[1] & 15 <= 4) or c[2] > 3 for c in components):
        raise ValueError("malformed frame header")
    return width, height, bytes(c[0] for c in components)


def _dht(body: bytes) -> None:
    """Huffman tables: each one's class and slot, and code lengths that fit (as libjpeg checks)."""
    at = 0
    while at < len(body):
        if at + 17 > len(body) or body[at] >> 4 > 1 or body[at] & 15 > 3:
            raise ValueError("malformed Huffman table")
        room = 1
        for count in body[at + 1:at + 17]:
            room = room * 2 - count
            if room < 0:
                raise ValueError("a Huffman table with more codes than fit")
        end = at + 17 + sum(body[at + 1:at + 17])
        if body[at] >> 4 == 0 and any(value > 15 for value in body[at + 17:end]):
            raise ValueError("a DC Huffman table with a value over 15")
        at = end
    if at != len(body):
        raise ValueError("malformed Huffman table")


def _sos(body: bytes, components: bytes) -> None:
    """A scan header: components of the frame, table slots that exist, a spectral range."""
    count = body[0] if body else 0
    if not 1 <= count <= 4 or len(body) != 4 + 2 * count:
        raise ValueError("malformed scan header")
    for at in range(1, 1 + 2 * count, 2):
        if body[at] not in components or body[at + 1] >> 4 > 3 or body[at + 1] & 15 > 3:
            raise ValueError("a scan of a component or table the frame does not have")
    start, end = body[-3], body[-2]
    if start > end or end > 63:
        raise ValueError("malformed scan header")


def _webp(fh: BinaryIO, size: int) -> tuple[int, int]:
    fh.seek(4)
    riff = 8 + struct.unpack("<I", fh.read(4))[0]
    if riff != size:
        raise ValueError(f"the RIFF header says {riff} bytes, the file has {size}")
    header = read_webp(fh)
    if header.animated:
        raise ValueError("an animation, not one image")
    return header.width, header.height
