"""The simulated engine (``gpunode --simulate``): it reports only the speed it measured, and
with ``--sim-output mirror`` it answers a result a client can compute and tell from its input."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageOps

from gpunode.errors import BadImage
from gpunode.inference import EnhanceRequest
from gpunode.simulate import SimEngine


def _photo(fmt: str = "PNG", size: tuple[int, int] = (40, 30)) -> bytes:
    """Not symmetric: a mirrored copy differs from the original in every row."""
    img = Image.new("RGB", size, (20, 140, 220))
    img.paste((250, 10, 10), (0, 0, 8, size[1]))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def _pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB").tobytes()


async def test_throughput_is_measured_not_configured() -> None:
    engine = SimEngine(speed=0.1, slots=1, queue_size=1)
    assert engine.throughput() is None  # a real node reports nothing before its first job
    await engine.enhance(_photo(size=(100, 50)), EnhanceRequest())  # 0.005 MP at 0.1 MP/s: 0.05 s
    measured = engine.throughput()
    assert measured is not None
    # A sleep takes at least what it was asked (give or take a timer tick), so what it measured
    # is at most the nominal speed; the lower bound is a generous guard (1 s for a 0.05 s job).
    assert 0.1 / 20 < measured <= 0.1 * 1.01


async def test_echo_answers_the_input_itself() -> None:
    photo = _photo()
    result = await SimEngine(speed=1000, slots=1, queue_size=1).enhance(photo, EnhanceRequest())
    assert result.body == photo and result.content_type == "image/png"


async def test_mirror_answers_the_input_flipped() -> None:
    photo = _photo()
    engine = SimEngine(speed=1000, slots=1, queue_size=1, output="mirror")
    result = await engine.enhance(photo, EnhanceRequest())
    assert result.content_type == "image/png"
    with Image.open(io.BytesIO(photo)) as original:
        expected = ImageOps.mirror(original.convert("RGB")).tobytes()
    assert _pixels(result.body) == expected  # PNG in, PNG out: lossless, exact
    assert _pixels(result.body) != _pixels(photo)  # an echo of the input would not pass


async def test_mirror_honours_the_requested_format() -> None:
    engine = SimEngine(speed=1000, slots=1, queue_size=1, output="mirror")
    result = await engine.enhance(_photo(), EnhanceRequest(format="jpeg"))
    assert result.content_type == "image/jpeg"
    with Image.open(io.BytesIO(result.body)) as im:
        assert im.format == "JPEG" and im.size == (40, 30)
        assert im.convert("RGB").getpixel((39, 15))[0] > 200  # the red stripe is on the right now


async def test_mirror_refuses_what_is_not_an_image() -> None:
    engine = SimEngine(speed=1000, slots=1, queue_size=1, output="mirror")
    with pytest.raises(BadImage):
        await engine.enhance(b"not an image at all", EnhanceRequest())


def test_unknown_output_refused() -> None:
    with pytest.raises(ValueError, match="--sim-output"):
        SimEngine(speed=1, slots=1, queue_size=1, output="flip")


async def test_a_simulated_node_answers_info_and_health(start_node, http) -> None:  # type: ignore[no-untyped-def]
    """/info names no tile size (a simulated node cuts none; it was a 500 before), and /health
    adds the simulated node's own job counts."""
    node = await start_node(simulate_speed=1000.0)
    async with http.get(node.url + "/info") as resp:
        assert resp.status == 200, await resp.text()
        info = await resp.json()
    assert info["tile_size"] is None and info["provider"] == "simulated"
    async with http.get(node.url + "/health") as resp:
        health = await resp.json()
    assert health["jobs_done"] == 0 and health["max_inflight"] == 0 and health["status"] == "ok"
