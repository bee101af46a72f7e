"""Photos for tests: of a size and format, told apart by content, encoded from an image."""

from __future__ import annotations

import hashlib
import io
from typing import Any

from PIL import Image


def encoded(img: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    """``img`` encoded as ``fmt`` (PNG, JPEG, WEBP...), with Pillow's save ``options``."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def image_bytes(width: int = 64, height: int = 48, fmt: str = "PNG",
                color: tuple[int, int, int] = (200, 80, 40)) -> bytes:
    """A plain ``width`` x ``height`` photo of one colour, encoded as ``fmt``."""
    return encoded(Image.new("RGB", (width, height), color), fmt)


def unique_photo(i: int, width: int = 40, height: int = 30) -> bytes:
    """A PNG nobody else has: its colour encodes ``i``."""
    return image_bytes(width, height, "PNG", (i & 255, (i >> 8) & 255, 128 + ((i >> 16) & 127)))


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
