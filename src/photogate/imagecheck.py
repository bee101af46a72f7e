"""Upload checks: real format by magic bytes, pixel count from the header, integrity.

Everything here is synchronous and may read the whole file: call it in an executor.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

#: Formats photogate accepts, by Pillow name -> MIME type.
MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp"}
EXTENSION = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/bmp": "bmp"}
SUPPORTED_TEXT = "JPEG, PNG, WebP or BMP"


@dataclass(frozen=True)
class ImageInfo:
    format: str
    mime: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def sniff(head: bytes) -> str | None:
    """The image format named by the file's first bytes, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if len(head) >= 12 and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head.startswith(b"BM") and len(head) >= 26:
        return "BMP"
    return None


def probe_image(path: Path, max_pixels: int, max_side: int | None = None) -> ImageInfo:
    """Check an uploaded file; raise 415, 413 or 400 errors a user can act on."""
    with path.open("rb") as fh:
        head = fh.read(32)
    if not head:
        raise BadRequest("the uploaded file is empty")
    fmt = sniff(head)
    if fmt is None:
        raise UnsupportedMediaType(f"not a supported image: upload a {SUPPORTED_TEXT} file")
    try:
        with warnings.catch_warnings():
            # Our own max_pixels check below is the limit; Pillow's bomb warning is noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=[fmt]) as im:
                width, height = im.size
                if width < 1 or height < 1:
                    raise BadRequest("the image has no pixels")
                if width * height > max_pixels:
                    raise PayloadTooLarge(
                        f"image is {width}x{height} = {width * height / 1e6:.1f} megapixels; "
                        f"the limit is {max_pixels / 1e6:.1f} megapixels"
                    )
                if max_side is not None and max(width, height) > max_side:
                    raise PayloadTooLarge(f"image is {width}x{height}; the longest side allowed is {max_side} pixels")
                _check_integrity(im, fmt)
    except Image.DecompressionBombError:
        raise PayloadTooLarge(f"image exceeds the {max_pixels / 1e6:.1f} megapixel limit") from None
    except UnidentifiedImageError:
        raise UnsupportedMediaType(f"not a readable {fmt} image: upload a {SUPPORTED_TEXT} file") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadRequest(f"the image is truncated or corrupt ({fmt}: {exc})") from None
    return ImageInfo(format=fmt, mime=MIME[fmt], width=width, height=height)


def _check_integrity(im: Image.Image, fmt: str) -> None:
    if fmt == "PNG":
        # Walks every chunk and its CRC up to IEND, without inflating the pixels.
        im.verify()
    elif fmt == "JPEG":
        # A DCT-scaled decode (1/8 per side) reads every scan at 1/64 of the cost.
        im.draft("RGB", (max(im.size[0] // 8, 1), max(im.size[1] // 8, 1)))
        im.load()
    else:
        im.load()
