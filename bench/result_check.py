#!/usr/bin/env python3
"""What checking one node result costs: the full decode (before) against the container check (after).

For each format (JPEG, PNG, WebP, as gpunode encodes them) and size (0.2, 2 and 8 MP by
default), one photo-like result is encoded once; then, ``--rounds`` times, interleaved, the
same bytes are checked both ways on this thread:

- ``full``: what every result got before issue 17: ``imagecheck.read_header`` + ``verify``
  (PNG: every chunk's CRC in Pillow; JPEG: a 1/8 DCT-scaled decode; WebP: a full decode);
- ``struct``: ``resultcheck.check_structure`` alone (PNG CRCs, JPEG segments and EOI, WebP RIFF);
- ``after``: what a result gets now (:meth:`ImageChecker.check_result`, without its thread
  hop): ``struct``, plus the full decode for a WebP (libwebp refuses most bit errors).

Prints the median milliseconds of each and the ratio full / after. ``--from-file`` checks a
file on disk (a large result is published before its check) instead of bytes in memory.

    python bench/result_check.py --rounds 9
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from photogate.imagecheck import Source, read_header, verify
from photogate.resultcheck import DECODED, ResultSpec, check_structure

SIZES = {0.2: (516, 388), 2.0: (1632, 1224), 8.0: (3264, 2448)}
FORMATS = ("JPEG", "PNG", "WEBP")


def photo(width: int, height: int) -> Image.Image:
    """Smooth shapes with fine grain: compresses about as a photo does (not to nothing, not at all)."""
    base = Image.effect_mandelbrot((width // 4, height // 4), (-2.0, -1.2, 0.8, 1.2), 64).convert("RGB")
    grain = Image.effect_noise((width, height), 48).convert("RGB")
    return Image.blend(base.resize((width, height), Image.Resampling.BICUBIC), grain, 0.2)


def encode(img: Image.Image, fmt: str) -> bytes:
    """As gpunode's ``imaging.encode`` does at its default quality."""
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, format="JPEG", quality=92, subsampling=0)
    elif fmt == "PNG":
        img.save(buf, format="PNG", compress_level=4)
    else:
        img.save(buf, format="WEBP", quality=92, method=4)
    return buf.getvalue()


def full(source: Source, spec: ResultSpec) -> None:
    verify(source, read_header(source, spec.max_pixels))


def after(source: Source, spec: ResultSpec) -> None:
    info = check_structure(source, spec)
    if info is None or info.format in DECODED:
        full(source, spec)


def timed(fn: Callable[[Source, ResultSpec], object], source: Source, spec: ResultSpec) -> float:
    start = time.perf_counter()
    fn(source, spec)
    return (time.perf_counter() - start) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="checks of each kind per result (median reported)")
    parser.add_argument("--sizes", default="0.2,2,8", help="megapixels, of 0.2, 2 and 8")
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--from-file", action="store_true", help="check a file on disk, not bytes in memory")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 1000:
        parser.error("--rounds: 1 to 1000")
    sizes = [float(s) for s in args.sizes.split(",")]
    print(f"{'format':6} {'MP':>4} {'bytes':>10} {'full ms':>9} {'struct ms':>9} {'after ms':>9} {'full/after':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for mp in sizes:
            width, height = SIZES[mp]
            img = photo(width, height)
            for fmt in args.formats.split(","):
                data = encode(img, fmt)
                source: Source = data
                if args.from_file:
                    source = Path(tmp) / f"result.{fmt.lower()}"
                    source.write_bytes(data)
                spec = ResultSpec(width // 2, height // 2, 2.0, fmt.lower(), max_pixels=10**9, max_bytes=10**10)
                times: dict[str, list[float]] = {"full": [], "struct": [], "after": []}
                for _ in range(args.rounds):  # interleaved: a load change hits all three alike
                    times["full"].append(timed(full, source, spec))
                    times["struct"].append(timed(check_structure, source, spec))
                    times["after"].append(timed(after, source, spec))
                med = {k: statistics.median(v) for k, v in times.items()}
                print(f"{fmt:6} {mp:>4g} {len(data):>10,} {med['full']:>9.2f} {med['struct']:>9.2f} "
                      f"{med['after']:>9.2f} {med['full'] / med['after']:>9.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
