"""A node's result is checked by its container, not decoded (issue 17, "checks that cost what
they must"): the format asked for, the size the node's scale makes of the input, and the
format's own integrity (PNG chunk CRCs and IEND last, the JPEG segments and EOI last, the
WebP RIFF size). A result that fails is that node's failure, exactly as an unreadable result
always was: the task runs again on another node (or fails after ``max_attempts``), the node
is blamed, and nothing of the bad result is served or kept.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from PIL import Image
from support import SECRET, FakeNode, Gateway, node_factory

from photogate.errors import BadRequest
from photogate.imagecheck import read_header, verify
from photogate.keys import GATEWAY
from photogate.resultcheck import ResultSpec, check_structure

Spoil = Callable[[bytes], bytes]
WIDTH, HEIGHT = 40, 30


def encoded(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _photo(width: int, height: int) -> Image.Image:
    """A photo with texture (its compressed data is not a few bytes of one colour)."""
    return Image.effect_mandelbrot((width, height), (-2.0, -1.5, 1.0, 1.5), 60).convert("RGB")


def _enhanced(fmt: str, width: int = 2 * WIDTH, height: int = 2 * HEIGHT) -> bytes:
    return encoded(_photo(width, height), fmt)


class ResultNode(FakeNode):
    """A node answering the right result (the input at 2x, in the format asked for, else
    ``default``), passed through ``spoil``; or, with ``size`` set, a result of that size."""

    def __init__(self, spoil: Spoil | None = None, default: str = "PNG", size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.spoil, self.default, self.size = spoil, default, size
        self.hits = 0

    async def _enhance(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "bad token"}, status=401)
        await request.read()
        self.hits += 1
        fmt = request.query.get("format", self.default).upper()
        body = _enhanced(fmt, *(self.size or (2 * WIDTH, 2 * HEIGHT)))
        if self.spoil is not None:
            body = self.spoil(body)
        self.jobs += 1
        return web.Response(body=body, content_type=f"image/{fmt.lower()}")


@pytest.fixture
async def result_node() -> AsyncIterator[Callable[..., Awaitable[ResultNode]]]:
    async with node_factory(ResultNode) as make:
        yield make


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x55]) + data[at + 1:]


def _flip_in_idat(data: bytes) -> bytes:
    return _flip(data, data.index(b"IDAT") + 4 + 10)  # ten bytes into the first IDAT's data


def _png_chunks(count: int) -> bytes:
    """A PNG of ``count`` empty private chunks between IHDR and IDAT."""
    data = _enhanced("PNG")
    at = data.index(b"IDAT") - 4
    empty = struct.pack(">I4sI", 0, b"abCd", zlib.crc32(b"abCd"))
    return data[:at] + empty * count + data[at:]


#: (case, format asked for, what the node does to the right result, what the node is blamed for)
BAD: list[tuple[str, str | None, Spoil, str]] = [
    ("png_truncated", "png", lambda d: d[: len(d) * 2 // 3], "runs past the end"),
    ("png_cut_in_iend", "png", lambda d: d[:-2], "runs past the end"),
    ("jpeg_truncated", "jpeg", lambda d: d[: len(d) * 2 // 3], "no EOI marker"),
    ("webp_truncated", "webp", lambda d: d[: len(d) * 2 // 3], "the RIFF header says"),
    ("webp_bit_flip", "webp", lambda d: _flip(d, len(d) - 22), "(WEBP: failed to read next frame)"),
    ("png_idat_bit_flip", "png", _flip_in_idat, "IDAT chunk fails its CRC"),
    ("jpeg_huffman_table_flip", "jpeg", lambda d: _flip(d, d.index(b"\xff\xc4") + 6), "Huffman table"),
    ("jpeg_without_eoi", "jpeg", lambda d: d[:-2], "no EOI marker"),
    ("png_trailing_garbage", "png", lambda d: d + b"\0garbage" * 8, "64 bytes after IEND"),
    ("jpeg_trailing_garbage", "jpeg", lambda d: d + b"\0garbage" * 8, "no EOI marker"),
    ("webp_trailing_garbage", "webp", lambda d: d + b"\0garbage" * 8, "the RIFF header says"),
    ("png_wrong_size", None, lambda d: _enhanced("PNG", 2 * WIDTH + 3, 2 * HEIGHT), "not what scale 2 makes"),
    ("jpeg_wrong_size", "jpeg", lambda d: _enhanced("JPEG", WIDTH, HEIGHT), "not what scale 2 makes"),
    ("wrong_format", "jpeg", lambda d: _enhanced("PNG"), "the result is PNG, the task asked for JPEG"),
    ("webp_for_png", "png", lambda d: _enhanced("WEBP"), "the result is WEBP, the task asked for PNG"),
]


async def _pair(make_gateway: Callable[..., Awaitable[Gateway]], bad: ResultNode, good: ResultNode) -> Gateway:
    # No probes during the test: a good probe would reset the count of failures checked below.
    gateway = await make_gateway(**{"health_check.interval": 3600})
    await gateway.register(bad, scale=2)  # GPU-001: round robin's first choice
    await gateway.register(good, scale=2)
    return gateway


async def _node(gateway: Gateway, server_id: str) -> dict[str, Any]:
    resp = await gateway.client.get("/webhook/servers", headers={"X-Webhook-Secret": SECRET})
    assert resp.status == 200
    return {s["server_id"]: s for s in (await resp.json())["data"]["servers"]}[server_id]


async def _download(gateway: Gateway, final: dict[str, Any]) -> tuple[str, tuple[int, int], str]:
    resp = await gateway.client.get(final["result_url"])
    assert resp.status == 200
    with Image.open(io.BytesIO(await resp.read())) as im:
        return str(im.format), im.size, resp.headers["Content-Type"]


@pytest.mark.parametrize(("case", "asked", "spoil", "blame"), BAD, ids=[c[0] for c in BAD])
async def test_a_bad_result_runs_again_on_another_node(make_gateway, result_node, case: str, asked: str | None,  # type: ignore[no-untyped-def]
                                                       spoil: Spoil, blame: str) -> None:
    bad, good = await result_node(spoil), await result_node()
    gateway = await _pair(make_gateway, bad, good)
    fields = {"format": asked} if asked else {}
    final = await gateway.wait_done(await gateway.submit(encoded(_photo(WIDTH, HEIGHT), "PNG"), **fields))
    assert bad.hits == 1 and good.jobs == 1, (bad.hits, good.jobs)
    assert final["status"] == "completed" and final["server_id"] == "GPU-002" and final["attempts"] == 2, final
    fmt, size, ctype = await _download(gateway, final)
    assert size == (2 * WIDTH, 2 * HEIGHT) and fmt == (asked or "png").upper() and ctype == f"image/{fmt.lower()}"
    # The bad node is blamed (passive health) with what was wrong; only the good result is kept.
    node = await _node(gateway, "GPU-001")
    assert node["consecutive_failures"] == 1, node
    assert "node returned an unreadable image" in node["last_error"] and blame in node["last_error"], node
    assert [p.name for p in gateway.app[GATEWAY].blobs.results.iterdir()] == [final["task_id"]]


async def test_a_node_that_always_answers_the_wrong_size_fails_the_task(make_gateway, result_node) -> None:  # type: ignore[no-untyped-def]
    gateway = await make_gateway(**{"dispatch.max_attempts": 2, "dispatch.retry_backoff": 0.05,
                                    "health_check.failure_threshold": 100})
    await gateway.register(await result_node(size=(2 * WIDTH, 2 * HEIGHT + 1)), scale=2)
    final = await gateway.wait_done(await gateway.submit(encoded(_photo(WIDTH, HEIGHT), "PNG")))
    assert final["status"] == "failed" and final["attempts"] == 2, final
    assert final["error"] == ("enhancement failed after 2 attempts; last error: node returned an unreadable image: "
                              "the result is 80x61, not what scale 2 makes of the 40x30 input"), final
    assert list(gateway.app[GATEWAY].blobs.results.iterdir()) == []


@pytest.mark.parametrize("asked", ["jpeg", "png", "webp", None])
async def test_a_good_result_of_each_format_is_served(make_gateway, result_node, asked: str | None) -> None:  # type: ignore[no-untyped-def]
    gateway = await make_gateway()
    node = await result_node(default="JPEG")
    await gateway.register(node)
    fields = {"format": asked} if asked else {}
    final = await gateway.wait_done(await gateway.submit(encoded(_photo(WIDTH, HEIGHT), "JPEG"), **fields))
    assert final["status"] == "completed" and final["attempts"] == 1, final
    fmt, size, _ = await _download(gateway, final)
    assert fmt == (asked or "jpeg").upper() and size == (2 * WIDTH, 2 * HEIGHT)


async def test_a_result_turned_by_the_inputs_exif_orientation_is_served(make_gateway, result_node) -> None:  # type: ignore[no-untyped-def]
    # gpunode applies the input's EXIF rotation: a 40x30 photo taken upright comes back 60x80.
    gateway = await make_gateway()
    await gateway.register(await result_node(size=(2 * HEIGHT, 2 * WIDTH)))
    final = await gateway.wait_done(await gateway.submit(encoded(_photo(WIDTH, HEIGHT), "PNG")))
    assert final["status"] == "completed" and final["attempts"] == 1, final
    assert (await _download(gateway, final))[1] == (2 * HEIGHT, 2 * WIDTH)


async def test_a_bmp_result_is_decoded_and_its_size_checked(make_gateway, result_node) -> None:  # type: ignore[no-untyped-def]
    # A node echoing a BMP upload's format: no container worth checking, so a full decode
    # under the memory budget, and still the size the scale implies.
    bad, good = await result_node(default="BMP", size=(2 * WIDTH, 2 * HEIGHT + 2)), await result_node(default="BMP")
    gateway = await _pair(make_gateway, bad, good)
    final = await gateway.wait_done(await gateway.submit(encoded(_photo(WIDTH, HEIGHT), "BMP")))
    assert final["status"] == "completed" and final["server_id"] == "GPU-002" and final["attempts"] == 2, final
    assert (await _download(gateway, final))[:2] == ("BMP", (2 * WIDTH, 2 * HEIGHT))
    assert "not what scale 2 makes" in (await _node(gateway, "GPU-001"))["last_error"]


# -- the check itself --------------------------------------------------------------------------


def _spec(scale: float | None = 2.0, fmt: str | None = None, width: int = WIDTH, height: int = HEIGHT) -> ResultSpec:
    return ResultSpec(width, height, scale, fmt, max_pixels=10**8, max_bytes=10**8)


def test_a_scale_nobody_stated_must_still_be_one_scale_for_both_sides() -> None:
    data = _enhanced("PNG")  # 80x60
    assert check_structure(data, _spec(None)) is not None
    assert check_structure(data, _spec(None, width=20, height=15)) is not None  # 4x
    with pytest.raises(BadRequest, match="not what an unknown scale makes of the 40x20 input"):
        check_structure(data, _spec(None, height=20))


def test_a_png_of_empty_chunks_is_refused_after_a_bounded_walk() -> None:
    assert check_structure(_png_chunks(100), _spec()) is not None
    with pytest.raises(BadRequest, match="more than 16,384 pieces"):
        check_structure(_png_chunks(20_000), _spec())


def test_jpeg_fill_bytes_before_a_marker_are_allowed() -> None:
    data = _enhanced("JPEG")
    filled = data[:2] + b"\xff" * 5 + data[2:]
    info = check_structure(filled, _spec())
    assert info is not None and (info.format, info.width, info.height) == ("JPEG", 80, 60)


def test_a_bit_error_in_jpeg_entropy_coded_data_passed_the_full_decode_too() -> None:
    """What the structural check cannot see (JPEG has no checksum over its coded data) the
    old full decode did not see either: libjpeg makes wrong pixels of it, not an error. A
    node that means harm could send wrong pixels in a perfectly valid file anyway."""
    spoilt = _flip(_enhanced("JPEG", 400, 300), 4000)
    verify(spoilt, read_header(spoilt, 10**8))  # the full decode: no error
    info = check_structure(spoilt, _spec(width=200, height=150))
    assert info is not None and info.format == "JPEG"
