"""Tiled inference: any photo through a model with memory bounded by the tile size.

Tiles overlap by ``overlap`` input pixels; inside each overlap zone the two tiles are
blended with a linear ramp across the middle half of the zone, so every pixel that gets
weight from a tile is at least ``overlap / 4`` pixels away from that tile's cut edge and
the seam is feathered. Blended tiles accumulate in a float32 buffer one tile row high;
finished rows are written as uint8 straight into the output image, so no float copy of
the whole image ever exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

#: Output rows converted to uint8 and written per step.
_ROWS_PER_WRITE = 64
#: Resampling for the "other targets" resize and for alpha channels.
RESAMPLE = Image.Resampling.LANCZOS


class Model(Protocol):
    scale: int
    multiple: int

    def run(self, x: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class Tiles:
    """How a photo is cut for the model: the tile side and overlap in input pixels, the model's
    fixed input size (height, width) if it has one, and a callback run after each tile."""

    tile: int = 256
    overlap: int = 16
    fixed_size: tuple[int, int] | None = None
    on_tile: Callable[[], None] | None = None


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with at least ``overlap``."""
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def axis_weights(n: int, left_overlap: int, right_overlap: int) -> np.ndarray:
    """Blend weights along one axis of a tile of ``n`` (output) pixels."""
    x = np.arange(n, dtype=np.float32) + 0.5
    w = np.ones(n, dtype=np.float32)
    if left_overlap > 0:
        w = np.minimum(w, np.clip((x - left_overlap / 4) / (left_overlap / 2), 0.0, 1.0))
    if right_overlap > 0:
        d = n - x
        w = np.minimum(w, np.clip((d - right_overlap / 4) / (right_overlap / 2), 0.0, 1.0))
    return w


def _overlaps(starts: list[int], size: int) -> list[tuple[int, int]]:
    out = []
    for i, a in enumerate(starts):
        left = (starts[i - 1] + size - a) if i > 0 else 0
        right = (a + size - starts[i + 1]) if i + 1 < len(starts) else 0
        out.append((max(0, left), max(0, right)))
    return out


def _pad_to(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Edge-replicate an HWC tile up to (h, w)."""
    ph, pw = h - x.shape[0], w - x.shape[1]
    if ph <= 0 and pw <= 0:
        return x
    return np.pad(x, ((0, max(0, ph)), (0, max(0, pw)), (0, 0)), mode="edge")


def upscale(model: Model, img: Image.Image, tiles: Tiles | None = None) -> Image.Image:
    """One model pass over an RGB image, tiled; returns the RGB image ``model.scale`` x larger."""
    if img.mode != "RGB":
        raise ValueError(f"upscale wants an RGB image, got {img.mode}")
    tiles = tiles or Tiles()
    tile, overlap, fixed_size, on_tile = tiles.tile, tiles.overlap, tiles.fixed_size, tiles.on_tile
    s = model.scale
    width, height = img.size
    if fixed_size:
        tile_h, tile_w = fixed_size
    else:
        tile_h = tile_w = max(tile, 2 * overlap + 1)
    th, tw = min(tile_h, height), min(tile_w, width)
    ov_y = min(overlap, max(0, th // 2))
    ov_x = min(overlap, max(0, tw // 2))
    ys, xs = tile_starts(height, th, ov_y), tile_starts(width, tw, ov_x)
    # What the model is fed: fixed models get exactly their size, others a multiple.
    m = model.multiple
    feed_h = tile_h if fixed_size else math.ceil(th / m) * m
    feed_w = tile_w if fixed_size else math.ceil(tw / m) * m

    out = Image.new("RGB", (width * s, height * s))
    band_h, out_w = th * s, width * s
    acc = np.zeros((band_h, out_w, 3), dtype=np.float32)
    wsum = np.zeros((band_h, out_w), dtype=np.float32)
    wx = [axis_weights(tw * s, lo * s, ro * s) for lo, ro in _overlaps(xs, tw)]
    wy_all = [axis_weights(th * s, lo * s, ro * s) for lo, ro in _overlaps(ys, th)]

    for i, y0 in enumerate(ys):
        wy = wy_all[i]
        for j, x0 in enumerate(xs):
            patch = np.asarray(img.crop((x0, y0, x0 + tw, y0 + th)), dtype=np.uint8)
            patch = _pad_to(patch, feed_h, feed_w)
            x = np.ascontiguousarray(patch.transpose(2, 0, 1)[None], dtype=np.float32)
            x *= 1.0 / 255.0
            y = model.run(x)[0, :, :band_h, : tw * s]
            w2 = wy[:, None] * wx[j][None, :]
            ox = x0 * s
            acc[:, ox : ox + tw * s] += y.transpose(1, 2, 0) * w2[:, :, None]
            wsum[:, ox : ox + tw * s] += w2
            if on_tile is not None:
                on_tile()
        next_y = ys[i + 1] if i + 1 < len(ys) else height
        done = (next_y - y0) * s
        for r0 in range(0, done, _ROWS_PER_WRITE):  # small chunks keep temporaries small
            r1 = min(done, r0 + _ROWS_PER_WRITE)
            rows = acc[r0:r1] / np.maximum(wsum[r0:r1], 1e-8)[:, :, None]
            rows *= 255.0
            rows += 0.5
            np.clip(rows, 0.0, 255.0, out=rows)
            out.paste(Image.fromarray(rows.astype(np.uint8), "RGB"), (0, y0 * s + r0))
        keep = band_h - done
        if keep > 0:
            acc[:keep] = acc[done : done + keep].copy()
            wsum[:keep] = wsum[done : done + keep].copy()
        acc[keep:] = 0.0
        wsum[keep:] = 0.0
    return out


def plan_passes(model_scale: int, target: float) -> int:
    """Model passes for a target scale: as many as do not overshoot it, at least one."""
    if model_scale <= 1:
        return 1
    n = math.floor(math.log(target, model_scale) + 1e-9) if target > 1 else 0
    return max(1, n)


def output_size(size: tuple[int, int], target: float) -> tuple[int, int]:
    return max(1, round(size[0] * target)), max(1, round(size[1] * target))


def enhance_rgb(model: Model, img: Image.Image, target: float, tiles: Tiles | None = None) -> Image.Image:
    """Model pass(es), then a Lanczos resize to exactly ``target`` x the input size."""
    final = output_size(img.size, target)
    for _ in range(plan_passes(model.scale, target)):
        img = upscale(model, img, tiles)
    if img.size != final:
        img = img.resize(final, RESAMPLE)
    return img
