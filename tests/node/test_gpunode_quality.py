"""Quality bar: the bundled model through the HTTP endpoint beats bicubic by >= 2 dB PSNR."""

from __future__ import annotations

import io

import numpy as np
from helpers.photos import encoded
from node_support import IMAGES
from PIL import Image

PHOTOS = ["astronaut_crop.png", "coffee_crop.png", "chelsea_crop.png", "rocket.jpg"]


def psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    return float(10 * np.log10(255.0**2 / np.mean((x - y) ** 2)))


async def test_bundled_model_beats_bicubic_by_2db(start_node, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_node(token="tok", tile_size=128)  # tiled, as a big photo would be
    rows = []
    for name in PHOTOS:
        original = Image.open(IMAGES / name).convert("RGB")
        w, h = original.size
        original = original.crop((0, 0, w // 2 * 2, h // 2 * 2))
        w, h = original.size
        small = original.resize((w // 2, h // 2), Image.Resampling.BICUBIC)
        bicubic = small.resize((w, h), Image.Resampling.BICUBIC)
        async with http.post(f"{node.url}/v1/enhance?format=png", data=encoded(small),
                             headers={"Authorization": "Bearer tok"}) as resp:
            assert resp.status == 200
            enhanced = Image.open(io.BytesIO(await resp.read()))
        assert enhanced.size == (w, h)
        rows.append((name, psnr(bicubic, original), psnr(enhanced, original)))
    for name, b, e in rows:
        print(f"{name:22s} bicubic {b:6.2f} dB  gpunode {e:6.2f} dB  gain {e - b:+.2f}")
    mean_b = sum(r[1] for r in rows) / len(rows)
    mean_e = sum(r[2] for r in rows) / len(rows)
    print(f"{'mean':22s} bicubic {mean_b:6.2f} dB  gpunode {mean_e:6.2f} dB  gain {mean_e - mean_b:+.2f}")
    assert mean_e - mean_b >= 2.0
