#!/usr/bin/env python3
"""gpunode throughput: megapixels/s through the HTTP endpoint vs bare ``session.run``.

Both paths run the same model file with the same session options on the same tiles
(the tiles gpunode's tiler feeds the model for this image), in the same run:

- ``bare``: ``session.run`` on each tile back to back, nothing else (the ceiling);
- ``http``: a real ``gpunode`` process (standalone, ``--token``) answering
  ``POST /v1/enhance`` — decode, tiling, blending, encode and HTTP included.

Megapixels are counted on the input image. Example::

    python bench/node_throughput.py --size 640x480 --repeat 7

Runs only on loopback; contacts nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
from PIL import Image

from gpunode import tiling
from gpunode.config import bundled_model_path
from gpunode.model import SRModel, auto_tile_size

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import free_port  # noqa: E402

IMAGES = Path(__file__).resolve().parents[1] / "tests" / "gpunode" / "images"


def test_photo(width: int, height: int) -> Image.Image:
    """A photo-like test image: a public-domain crop tiled and resized to the size asked for."""
    src = Image.open(IMAGES / "astronaut_crop.png").convert("RGB")
    return src.resize((width, height), Image.Resampling.BICUBIC)


def tile_inputs(model: SRModel, img: Image.Image, tile: int, overlap: int) -> list[np.ndarray]:
    """Exactly the float32 NCHW arrays ``tiling.upscale`` feeds the model for ``img``."""
    captured: list[np.ndarray] = []

    class Recorder:
        scale = model.scale
        multiple = model.multiple

        def run(self, x: np.ndarray) -> np.ndarray:
            captured.append(x.copy())
            n, c, h, w = x.shape
            return np.zeros((n, c, h * self.scale, w * self.scale), np.float32)

    tiling.upscale(Recorder(), img, tiling.Tiles(tile=tile, overlap=overlap, fixed_size=model.info.fixed_size))
    return captured


def bare_seconds(model: SRModel, tiles: list[np.ndarray]) -> float:
    t0 = time.perf_counter()
    for x in tiles:
        model.run(x)
    return time.perf_counter() - t0


def gpunode_command() -> list[str]:
    script = shutil.which("gpunode", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "gpunode"]


async def http_seconds(url: str, body: bytes, repeat: int, fmt: str) -> list[float]:
    times = []
    async with aiohttp.ClientSession() as http:
        for _ in range(repeat):
            t0 = time.perf_counter()
            async with http.post(f"{url}/v1/enhance?format={fmt}", data=body,
                                 headers={"Authorization": "Bearer bench", "Content-Type": "image/jpeg"},
                                 timeout=aiohttp.ClientTimeout(total=3600)) as resp:
                if resp.status != 200:
                    raise SystemExit(f"enhance failed: {resp.status} {await resp.text()}")
                await resp.read()
            times.append(time.perf_counter() - t0)
    return times


async def wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit("gpunode exited during start-up")
            try:
                async with http.get(f"{url}/health") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("gpunode did not come up")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="640x480", help="input image WxH (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=7, help="timed runs per path (default %(default)s)")
    ap.add_argument("--model", type=Path, default=None, help="ONNX model (default: bundled)")
    ap.add_argument("--tile-size", type=int, default=0, help="default: the node's automatic size")
    ap.add_argument("--tile-overlap", type=int, default=16)
    ap.add_argument("--format", default="jpeg", help="output format asked of the node (default %(default)s)")
    ap.add_argument("--cpu", action="store_true", help="force the CPU provider")
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    model_path = args.model or bundled_model_path()

    img = test_photo(width, height)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=92)
    body = buf.getvalue()
    mp = width * height / 1e6

    model = SRModel(model_path, cpu_only=args.cpu)
    args.tile_size = args.tile_size or auto_tile_size(model.provider)
    tiles = tile_inputs(model, img, args.tile_size, args.tile_overlap)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [*gpunode_command(), "--host", "127.0.0.1", "--port", str(port), "--token", "bench",
           "--model", str(model_path), "--tile-size", str(args.tile_size), "--tile-overlap", str(args.tile_overlap),
           "--log-level", "warning"]
    if args.cpu:
        cmd.append("--cpu")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        asyncio.run(wait_up(url, proc))
        # Warm-up both paths once, then alternate bare and HTTP runs in pairs, so that
        # load from anything else on the machine hits both paths alike; the ratio is
        # the median of the per-pair ratios.
        bare_seconds(model, tiles)
        asyncio.run(http_seconds(url, body, 1, args.format))
        bare, http = [], []
        for _ in range(args.repeat):
            bare.append(bare_seconds(model, tiles))
            http.extend(asyncio.run(http_seconds(url, body, 1, args.format)))
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    b, h = min(bare), min(http)
    bm, hm = float(np.median(bare)), float(np.median(http))
    print(f"model {model.info.name} x{model.scale} | provider {model.provider} | device {model.info.device}")
    print(f"input {width}x{height} ({mp:.2f} MP) | tiles {len(tiles)} of {args.tile_size}px, overlap "
          f"{args.tile_overlap} | {args.repeat} runs each | Python {platform.python_version()}, {os.cpu_count()} CPUs")
    print()
    print("| path | best s/image | median s/image | MP/s (best) | MP/s (median) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print(f"| bare session.run (same tiles) | {b:.2f} | {bm:.2f} | {mp / b:.4f} | {mp / bm:.4f} |")
    print(f"| gpunode HTTP POST /v1/enhance | {h:.2f} | {hm:.2f} | {mp / h:.4f} | {mp / hm:.4f} |")
    ratios = sorted(bt / ht for bt, ht in zip(bare, http))
    print(f"| ratio HTTP / bare | | | {b / h:.3f} | {bm / hm:.3f} |")
    print()
    print(f"per-pair ratios (bare s / HTTP s): {', '.join(f'{r:.3f}' for r in ratios)}; "
          f"median {float(np.median(ratios)):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
