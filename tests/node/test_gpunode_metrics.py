"""The node's GET /metrics: per-photo inference time and tiles, live engine state, provider."""

from __future__ import annotations

from helpers.photos import encoded
from node_support import photo
from prometheus_client.parser import text_string_to_metric_families

from gpunode import tiling
from gpunode.keys import ENGINE
from gpunode.metrics import count_tiles

AUTH = {"Authorization": "Bearer tok"}


async def scrape(http, node) -> dict[str, dict[tuple, float]]:  # type: ignore[no-untyped-def]
    async with http.get(f"{node.url}/metrics") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


async def test_metrics_count_photos_tiles_and_refusals(start_node, http) -> None:  # type: ignore[no-untyped-def]
    node = await start_node(token="tok")
    engine = node.app[ENGINE]
    for size in ((40, 30), (300, 200)):
        async with http.post(f"{node.url}/v1/enhance", data=encoded(photo().resize(size)), headers=AUTH) as resp:
            assert resp.status == 200
    async with http.post(f"{node.url}/v1/enhance", data=b"x", headers={"Authorization": "Bearer wrong"}) as resp:
        assert resp.status == 401
    m = await scrape(http, node)
    assert m["gpunode_inference_seconds_count"][()] == 2
    assert m["gpunode_request_seconds_sum"][()] >= m["gpunode_inference_seconds_sum"][()] > 0
    expected = count_tiles(engine, 40, 30, None) + count_tiles(engine, 300, 200, None)
    assert expected > 2 and m["gpunode_tiles_total"][()] == expected
    assert abs(m["gpunode_megapixels_total"][()] - (40 * 30 + 300 * 200) / 1e6) < 1e-9
    assert m["gpunode_requests_total"][(("route", "/v1/enhance"), ("status", "200"))] == 2
    assert m["gpunode_requests_total"][(("route", "/v1/enhance"), ("status", "401"))] == 1
    assert m["gpunode_slots"][()] == 1 and m["gpunode_busy"][()] == 0
    assert m["gpunode_throughput_megapixels_per_second"][()] > 0
    (labels,) = m["gpunode_info"]
    assert dict(labels)["provider"] == "CPUExecutionProvider" and dict(labels)["scale"] == "2"


def test_count_tiles_matches_the_tiler(sr_model) -> None:  # type: ignore[no-untyped-def]
    class Engine:
        tile_size, tile_overlap = 64, 16
        model = sr_model

    for size, scale in (((150, 70), None), ((40, 30), None), ((50, 40), "4")):
        ran: list[int] = []
        tiling.enhance_rgb(sr_model, photo().resize(size), float(scale or 2),
                           tiling.Tiles(tile=64, overlap=16, on_tile=lambda ran=ran: ran.append(1)))
        assert count_tiles(Engine(), *size, scale) == len(ran), size
