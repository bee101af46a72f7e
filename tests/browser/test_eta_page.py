"""The try-it page shows the gateway's estimate while a photo is enhanced (issue 15, item 9)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support import FakeNode, Gateway, image_bytes, wait_until

from photogate.keys import GATEWAY

TIMEOUT_MS = 15_000


async def test_try_it_page_shows_progress_and_time_left(gateway: Gateway, nodes, page: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node: FakeNode = await nodes(delay=3.0, throughput=0.1)  # 0.3 MP at 0.1 MP/s: 3 s
    await gateway.register(node)
    registry = gateway.app[GATEWAY].registry
    await wait_until(lambda: registry.get(node.server_id).health.get("throughput") is not None, 10.0,
                     "the node's health report")
    path = tmp_path / "photo.png"
    path.write_bytes(image_bytes(600, 500))
    await page.goto(str(gateway.client.make_url("/")))
    await page.set_input_files("#file", str(path))
    await page.click("#go")
    await page.wait_for_function(
        "() => /Enhancing on GPU-001 \\d+%, about [\\d.]+ s left/.test(document.getElementById('status').textContent)",
        timeout=TIMEOUT_MS)
    first = await page.evaluate("() => [document.getElementById('status').textContent,"
                                " parseFloat(document.getElementById('progress-bar').style.width)]")
    # The bar moves on while the node works: a later poll shows more of it done.
    await page.wait_for_function(
        f"() => parseFloat(document.getElementById('progress-bar').style.width) > {first[1]}"
        " && /Enhancing/.test(document.getElementById('status').textContent)", timeout=TIMEOUT_MS)
    assert 0 <= first[1] < 100, first
    await page.wait_for_selector('#result[data-ready="1"]', timeout=TIMEOUT_MS)
    assert "Done in" in await page.inner_text("#status")
    assert page.js_errors == []
