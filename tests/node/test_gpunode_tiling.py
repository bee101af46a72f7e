"""Tiling: seamless blending, fixed-size models, models that need a multiple, pass planning."""

from __future__ import annotations

import numpy as np
import pytest
from node_support import mean_abs, photo, tiny_model
from PIL import Image

from gpunode import tiling
from gpunode.model import SRModel


def test_tiled_result_matches_untiled(sr_model) -> None:  # type: ignore[no-untyped-def]
    img = photo().crop((40, 40, 190, 170))  # 150 x 130, not a multiple of anything
    whole = tiling.upscale(sr_model, img, tiling.Tiles(tile=1024))
    for tile, overlap in ((64, 16), (48, 8), (100, 24)):
        tiled = tiling.upscale(sr_model, img, tiling.Tiles(tile=tile, overlap=overlap))
        assert tiled.size == whole.size == (300, 260)
        diff = mean_abs(tiled, whole) / 255.0
        assert diff < 1 / 255, (tile, overlap, diff)
    # Enough overlap for UpConv7's 7 px receptive field: identical.
    assert mean_abs(tiling.upscale(sr_model, img, tiling.Tiles(tile=64, overlap=32)), whole) == 0.0


def test_blend_weights_partition_unity() -> None:
    starts = tiling.tile_starts(300, 64, 16)
    assert starts[0] == 0 and starts[-1] == 300 - 64
    total = np.zeros(300 * 2, np.float32)
    for (lo, ro), a in zip(tiling._overlaps(starts, 64), starts):
        total[a * 2 : (a + 64) * 2] += tiling.axis_weights(128, lo * 2, ro * 2)
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_fixed_size_model_is_tiled_at_exactly_its_size(tmp_path) -> None:  # type: ignore[no-untyped-def]
    tiny_model(tmp_path / "fixed.onnx", fixed=32)
    model = SRModel(tmp_path / "fixed.onnx", cpu_only=True)
    assert model.scale == 2 and model.info.fixed_size == (32, 32)
    seen = []
    real_run = model.run
    model.run = lambda x: (seen.append(x.shape), real_run(x))[1]  # type: ignore[method-assign]
    img = photo().resize((70, 45))
    out = tiling.upscale(model, img, tiling.Tiles(overlap=8, fixed_size=model.info.fixed_size))
    assert out.size == (140, 90) and set(seen) == {(1, 3, 32, 32)}
    assert mean_abs(out, img.resize((140, 90), Image.Resampling.NEAREST)) < 0.5
    small = photo().resize((20, 12))  # smaller than the fixed size: padded, then cropped
    assert tiling.upscale(model, small, tiling.Tiles(fixed_size=(32, 32))).size == (40, 24)


def test_model_needing_a_multiple_is_padded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    tiny_model(tmp_path / "m4.onnx", multiple=4)
    model = SRModel(tmp_path / "m4.onnx", cpu_only=True)
    assert model.scale == 2 and model.multiple == 4
    img = photo().resize((37, 23))
    out = tiling.upscale(model, img, tiling.Tiles(tile=16, overlap=4))
    assert out.size == (74, 46)
    assert mean_abs(out, img.resize((74, 46), Image.Resampling.NEAREST)) < 0.5


@pytest.mark.parametrize(("model_scale", "target", "passes"),
                         [(2, 2, 1), (2, 4, 2), (2, 3, 1), (2, 8, 3), (2, 1, 1), (4, 2, 1), (4, 4, 1), (4, 16, 2)])
def test_pass_planning(model_scale: int, target: float, passes: int) -> None:
    assert tiling.plan_passes(model_scale, target) == passes
