"""Upload and result checks: real format by magic bytes, pixel count from the header, integrity.

A check has two steps, both synchronous (run them in an executor, never on the store's
thread): :func:`read_header` reads the format and size, applies the limits and estimates
what the integrity check will hold in memory at its peak (:attr:`Header.cost`); then
:func:`verify` does that check. :class:`photogate.imagechecker.ImageChecker` runs the two
with the cost reserved from a gateway-wide memory budget in between.

Each format's check, and its measured cost (Pillow 13, a 6000x6000 file):

- PNG: every chunk and its CRC up to IEND, no pixels inflated (3 MiB).
- JPEG, baseline: a DCT-scaled decode at 1/8 per side reads every scan (5 MiB).
- JPEG, progressive: the same decode, but libjpeg must hold every coefficient of the image,
  2 bytes per sample (212 MiB for 4:4:4).
- BMP: a full decode, uncompressed only (Pillow unpacks RLE in Python: a CPU bomb).
- WebP: its RIFF chunks and VP8/VP8L/VP8X headers, whole and consistent, when the header is
  read (:mod:`photogate.webpcheck`); then a full decode if it fits in the budget: Pillow holds
  about 16 bytes per pixel (557 MiB), so above the budget the structural check is the check.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from struct import error as struct_error
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from . import segments
from .errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from .webpcheck import read_webp

#: Formats photogate accepts, by Pillow name -> MIME type.
MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "BMP": "image/bmp"}
EXTENSION = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp", "image/bmp": "bmp"}
SUPPORTED_TEXT = "JPEG, PNG, WebP or BMP"
#: BMP compression methods (BITMAPINFOHEADER ``biCompression``) refused: run-length encoded.
BMP_RLE8, BMP_RLE4 = 1, 2

#: Memory a check holds besides its pixels: file buffers, decoder state.
SLACK = 2 * 1024 * 1024
#: Bytes per pixel Pillow holds while decoding a WebP (libwebp's canvas, Pillow's copy): measured 16.2.
WEBP_BYTES_PER_PIXEL = 17

Source = Path | bytes


@dataclass(frozen=True)
class ImageInfo:
    format: str
    mime: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class Header:
    """What :func:`read_header` learnt: the image, and the cost of checking it fully."""

    info: ImageInfo
    #: Bytes :func:`verify` holds at its peak.
    cost: int
    #: The structure is already checked (WebP): :func:`verify` may be skipped when it costs too much.
    structural: bool = False


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


def _open(source: Source) -> BinaryIO:
    return io.BytesIO(source) if isinstance(source, bytes) else source.open("rb")


def read_header(source: Source, max_pixels: int, max_side: int | None = None) -> Header:
    """Format, size and check cost of an image; raise 415, 413 or 400 errors a user can act on."""
    with _open(source) as fh:
        head = fh.read(32)
        if not head:
            raise BadRequest("the uploaded file is empty")
        fmt = sniff(head)
        if fmt is None:
            raise UnsupportedMediaType(f"not a supported image: upload a {SUPPORTED_TEXT} file")
        try:
            if fmt == "WEBP":
                webp = read_webp(fh)
                width, height = webp.width, webp.height
                _check_limits(width, height, max_pixels, max_side)
                return Header(ImageInfo(fmt, MIME[fmt], width, height),
                              cost=WEBP_BYTES_PER_PIXEL * width * height + SLACK, structural=True)
            if fmt == "PNG":
                segments.check_png(fh)
            elif fmt == "JPEG":
                segments.check_jpeg(fh)
            fh.seek(0)
            with _opened(fh, fmt) as im:
                width, height = im.size
                _check_limits(width, height, max_pixels, max_side)
                if fmt == "BMP" and im.info.get("compression") in (BMP_RLE8, BMP_RLE4):
                    # Pillow unpacks RLE in Python with the GIL held: one-pixel runs are a CPU
                    # bomb (2.8 s for 8 MB). Cameras, phones and Paint write uncompressed BMP.
                    raise UnsupportedMediaType(
                        "RLE-compressed BMP is not accepted: save the picture as PNG, JPEG or an "
                        "uncompressed BMP")
                return Header(ImageInfo(fmt, MIME[fmt], width, height), cost=_cost(im, fmt))
        except Image.DecompressionBombError:
            raise PayloadTooLarge(f"image exceeds the {max_pixels / 1e6:.1f} megapixel limit") from None
        except UnidentifiedImageError:
            raise UnsupportedMediaType(f"not a readable {fmt} image: upload a {SUPPORTED_TEXT} file") from None
        except (OSError, SyntaxError, ValueError, EOFError, struct_error) as exc:
            raise BadRequest(f"the image is truncated or corrupt ({fmt}: {exc})") from None


def verify(source: Source, header: Header) -> None:
    """Check the image's data (see the module's docstring); raise 400 if it is corrupt."""
    fmt = header.info.format
    try:
        with _open(source) as fh, _opened(fh, fmt) as im:
            if fmt == "PNG":
                im.verify()
            elif fmt == "JPEG":
                im.draft("RGB", (max(im.size[0] // 8, 1), max(im.size[1] // 8, 1)))
                im.load()
            else:
                im.load()
    except Image.DecompressionBombError:
        raise PayloadTooLarge("image exceeds the megapixel limit") from None
    except UnidentifiedImageError:
        raise UnsupportedMediaType(f"not a readable {fmt} image: upload a {SUPPORTED_TEXT} file") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct_error) as exc:
        raise BadRequest(f"the image is truncated or corrupt ({fmt}: {exc})") from None


def _opened(fh: BinaryIO, fmt: str) -> Image.Image:
    with warnings.catch_warnings():
        # Our own max_pixels check is the limit; Pillow's bomb warning is noise here.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(fh, formats=[fmt])


def _check_limits(width: int, height: int, max_pixels: int, max_side: int | None) -> None:
    if width < 1 or height < 1:
        raise BadRequest("the image has no pixels")
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"image is {width}x{height} = {width * height / 1e6:.1f} megapixels; "
            f"the limit is {max_pixels / 1e6:.1f} megapixels"
        )
    if max_side is not None and max(width, height) > max_side:
        raise PayloadTooLarge(f"image is {width}x{height}; the longest side allowed is {max_side} pixels")


def _cost(im: Image.Image, fmt: str) -> int:
    width, height = im.size
    if fmt == "PNG":
        return SLACK
    if fmt == "JPEG":
        # The 1/8 draft's output, and for a progressive file every DCT coefficient (2 bytes).
        cost = math.ceil(width / 8) * math.ceil(height / 8) * 4 + SLACK
        if im.info.get("progressive") or im.info.get("progression"):
            layers = getattr(im, "layer", None) or [("", 1, 1, 0)] * len(im.getbands())
            hmax = max(h for _, h, _, _ in layers)
            vmax = max(v for _, _, v, _ in layers)
            mcus = math.ceil(width / (8 * hmax)) * math.ceil(height / (8 * vmax))
            cost += sum(mcus * h * v * 128 for _, h, v, _ in layers)
        return cost
    # BMP (uncompressed): the decoded image, 1 or 4 bytes a pixel.
    return width * height * (1 if im.mode in ("1", "L", "P") else 4) + SLACK
