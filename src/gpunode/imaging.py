"""Decoding and encoding: EXIF orientation, alpha, grayscale/palette/16-bit modes, formats.

Everything here is blocking (Pillow); callers run it in an executor.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadImage, UnsupportedImage

EXIF_ORIENTATION = 0x0112
FORMATS = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
FORMAT_ALIASES = {"jpg": "jpeg"}
#: The largest side each output format can hold.
MAX_SIDE = {"jpeg": 65535, "png": 2**31 - 1, "webp": 16383}


@dataclass
class Decoded:
    """An input photo split into what the model sees and what is carried around it."""

    rgb: Image.Image
    alpha: Image.Image | None
    gray: bool
    format: str  # Pillow's format name of the input, e.g. "PNG"
    exif: bytes | None
    icc: bytes | None

    @property
    def pixels(self) -> int:
        return self.rgb.width * self.rgb.height


def _sixteen_bit_to_l(img: Image.Image) -> Image.Image:
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        arr8 = np.clip(arr * (255.0 if arr.max(initial=0) <= 1.0 else 1.0) + 0.5, 0, 255)
    else:
        arr8 = np.clip(arr.astype(np.float32) / 257.0 + 0.5, 0, 255)
    return Image.fromarray(arr8.astype(np.uint8), "L")


def decode(data: bytes, *, max_pixels: int) -> Decoded:
    """Decode ``data`` into RGB (+ alpha), applying EXIF orientation.

    Raises :class:`UnsupportedImage` (415) for data Pillow cannot identify and
    :class:`BadImage` (400) for a truncated, corrupt or too large image.
    """
    if not data:
        raise BadImage("empty request body: send the image bytes as the body")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise UnsupportedImage("not an image gpunode can read: send JPEG, PNG, WebP, BMP, TIFF or GIF") from None
    except Image.DecompressionBombError as exc:
        raise BadImage(f"image too large: {exc}") from None
    except (OSError, ValueError) as exc:
        raise BadImage(f"cannot read image: {exc}") from None
    fmt = img.format or "UNKNOWN"
    w, h = img.size
    if w * h > max_pixels:
        raise BadImage(f"image too large: {w}x{h} is {w * h} pixels, this node accepts at most {max_pixels}")
    try:
        img.load()
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the client's bad image
        raise BadImage(f"cannot decode image: {exc}") from None
    icc = img.info.get("icc_profile")
    try:
        oriented = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not fail the photo
        oriented = img
    exif_bytes: bytes | None = None
    try:
        exif = oriented.getexif()
        if EXIF_ORIENTATION in exif:
            del exif[EXIF_ORIENTATION]
        exif_bytes = exif.tobytes() if len(exif) else None
    except Exception:  # noqa: BLE001
        exif_bytes = None
    img = oriented

    mode = img.mode
    alpha: Image.Image | None = None
    gray = False
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    elif mode == "PA":
        img = img.convert("RGBA")
        mode = img.mode
    if mode in ("RGBA", "RGBa"):
        alpha = img.getchannel("A")
        rgb = img.convert("RGB")
    elif mode in ("LA", "La"):
        alpha = img.getchannel("A")
        rgb = img.getchannel("L").convert("RGB")
        gray = True
    elif mode in ("1", "L"):
        rgb = img.convert("RGB")
        gray = True
    elif mode.startswith("I") or mode == "F":
        rgb = _sixteen_bit_to_l(img).convert("RGB")
        gray = True
    elif mode == "RGB":
        rgb = img
    else:  # CMYK, YCbCr, LAB, HSV, RGBX ...
        try:
            rgb = img.convert("RGB")
        except ValueError as exc:
            raise UnsupportedImage(f"image mode {mode} is not supported: {exc}") from None
    return Decoded(rgb=rgb, alpha=alpha, gray=gray, format=fmt, exif=exif_bytes, icc=icc)


def default_format(decoded: Decoded) -> str:
    """PNG for PNG input (and for anything with alpha, which JPEG would lose), else JPEG."""
    if decoded.format == "PNG" or decoded.alpha is not None:
        return "png"
    return "jpeg"


def normalize_format(name: str) -> str:
    key = FORMAT_ALIASES.get(name.lower(), name.lower())
    if key not in FORMATS:
        raise BadImage(f"unknown output format {name!r}: use jpeg, png or webp")
    return key


def assemble(rgb: Image.Image, decoded: Decoded) -> Image.Image:
    """Put grayscale and alpha back on an enhanced RGB image."""
    out = rgb.convert("L") if decoded.gray else rgb
    if decoded.alpha is not None:
        alpha = decoded.alpha
        if alpha.size != out.size:
            alpha = alpha.resize(out.size, Image.Resampling.LANCZOS)
        out = out.convert("LA" if decoded.gray else "RGBA")
        out.putalpha(alpha)
    return out


def encode(img: Image.Image, fmt: str, quality: int, *, exif: bytes | None = None, icc: bytes | None = None) -> bytes:
    """Encode to ``fmt`` (jpeg/png/webp); JPEG drops alpha."""
    if max(img.size) > MAX_SIDE[fmt]:
        raise BadImage(f"{fmt} cannot hold a {img.width}x{img.height} image: ask for png or a smaller scale")
    buf = io.BytesIO()
    extra: dict[str, object] = {}
    if exif:
        extra["exif"] = exif
    if icc:
        extra["icc_profile"] = icc
    if fmt == "jpeg":
        if img.mode in ("RGBA", "LA"):
            img = img.convert("RGB" if img.mode == "RGBA" else "L")
        img.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2, **extra)
    elif fmt == "png":
        img.save(buf, format="PNG", compress_level=4, **extra)
    else:
        img.save(buf, format="WEBP", quality=quality, method=4, **extra)
    return buf.getvalue()
