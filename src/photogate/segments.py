"""How many pieces a container holds, counted before a decoder walks them (CPU bombs).

Pillow walks PNG chunks and the JPEG segments before the first scan in Python, holding the
GIL: a 20 MB PNG of 1.7 million empty chunks kept the check busy 10 s, and the event loop
(which needs the GIL back after every system call) answered slowly all that time. Real
images have a few dozen pieces (libpng writes 8 KiB IDAT chunks: 2,560 for a 20 MiB file),
so a file with more than :data:`MAX_SEGMENTS` is refused after a walk that costs at most a
few milliseconds. The walk reads only the 8-byte headers and skips each piece's data; it
decodes nothing (the decoders stay Pillow's).
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from .errors import BadRequest

#: The most chunks (PNG, WebP) or segments before the first scan (JPEG) an image may have.
MAX_SEGMENTS = 16_384

#: JPEG markers that stand alone, without a length: TEM, RST0-7, SOI, EOI.
_STANDALONE = {0x01, *range(0xD0, 0xDA)}


def too_many(fmt: str, count: int) -> BadRequest:
    return BadRequest(
        f"the {fmt} file is made of more than {count:,} pieces (chunks or segments); real photos "
        f"have a few dozen. Save it again with an ordinary encoder"
    )


def check_png(fh: BinaryIO) -> None:
    """Count the chunks from the signature to IEND (or the end of the file)."""
    fh.seek(8)
    for _ in range(MAX_SEGMENTS):
        head = fh.read(8)
        if len(head) < 8:
            return  # truncated: the integrity check says so
        size, kind = struct.unpack(">I4s", head)
        if kind == b"IEND":
            return
        fh.seek(size + 4, 1)  # the data and the CRC
    raise too_many("PNG", MAX_SEGMENTS)


def check_jpeg(fh: BinaryIO) -> None:
    """Count the segments from SOI to the first scan (SOS); libjpeg, not Python, reads the rest."""
    fh.seek(2)
    for _ in range(MAX_SEGMENTS):
        byte = fh.read(1)
        if byte != b"\xff":
            return  # not a marker: Pillow reports the corruption
        marker = fh.read(1)
        while marker == b"\xff":  # fill bytes
            marker = fh.read(1)
        if not marker or marker[0] == 0xDA:
            return
        if marker[0] in _STANDALONE:
            continue
        length = fh.read(2)
        if len(length) < 2:
            return
        fh.seek(struct.unpack(">H", length)[0] - 2, 1)
    raise too_many("JPEG", MAX_SEGMENTS)
