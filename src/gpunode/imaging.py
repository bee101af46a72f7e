"""Decoding and encoding: EXIF orientation, alpha, grayscale/palette/16-bit modes, formats.

Everything here is blocking (Pillow); callers run it in an executor.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

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


@dataclass(frozen=True)
class Probe:
    """What an input's header says, before any pixel is decoded."""

    format: str
    width: int
    height: int
    alpha: bool


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open ``data`` (header only) and check its pixel count."""
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
    w, h = img.size
    if w * h > max_pixels:
        raise BadImage(f"image too large: {w}x{h} is {w * h} pixels, this node accepts at most {max_pixels}")
    return img


def probe(data: bytes, *, max_pixels: int) -> Probe:
    """The input's format, size and alpha from its header alone, so that every limit can be
    checked before the photo is decoded or enhanced. Raises like :func:`decode`."""
    with _open(data, max_pixels) as img:
        alpha = img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or (img.mode == "P" and "transparency" in img.info)
        return Probe(format=img.format or "UNKNOWN", width=img.width, height=img.height, alpha=alpha)


def check_output(fmt: str, width: int, height: int) -> None:
    """Refuse a result the output format cannot hold (WebP's sides stop at 16383)."""
    if max(width, height) > MAX_SIDE[fmt]:
        raise BadImage(f"{fmt} cannot hold a {width}x{height} image: ask for png or a smaller scale")


#: ICC colour space signatures (header bytes 16..20) of the profiles an output may carry.
_PROFILE_SPACE = {False: b"RGB ", True: b"GRAY"}


def _profile_space(icc: bytes | None) -> bytes | None:
    return icc[16:20] if icc and len(icc) >= 128 else None


def _to_rgb(img: Image.Image, icc: bytes | None) -> Image.Image:
    """RGB pixels of a CMYK (or other non-RGB) image: through its embedded profile into sRGB
    when it has one for its own colour space, else Pillow's plain conversion."""
    if icc and _profile_space(icc) == {"CMYK": b"CMYK", "LAB": b"Lab "}.get(img.mode):
        try:
            converted = ImageCms.profileToProfile(img, ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                                                  ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError):
            converted = None  # a broken profile: the plain conversion below
        if converted is not None:  # None only when converting in place, which this does not
            return converted
    return img.convert("RGB")


def decode(data: bytes, *, max_pixels: int) -> Decoded:
    """Decode ``data`` into RGB (+ alpha), applying EXIF orientation.

    Raises :class:`UnsupportedImage` (415) for data Pillow cannot identify and
    :class:`BadImage` (400) for a truncated, corrupt or too large image.
    """
    img = _open(data, max_pixels)
    fmt = img.format or "UNKNOWN"
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
            rgb = _to_rgb(img, icc)
        except ValueError as exc:
            raise UnsupportedImage(f"image mode {mode} is not supported: {exc}") from None
    # The result carries the input's profile only where it describes the result's pixels: a
    # CMYK profile on RGB pixels would make every viewer misread the colours (converted above).
    if _profile_space(icc) != _PROFILE_SPACE[gray]:
        icc = None
    return Decoded(rgb=rgb, alpha=alpha, gray=gray, format=fmt, exif=exif_bytes, icc=icc)


def default_format(source_format: str, alpha: bool) -> str:
    """PNG for PNG input (and for anything with alpha, which JPEG would lose), else JPEG."""
    if source_format == "PNG" or alpha:
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
    check_output(fmt, img.width, img.height)
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
