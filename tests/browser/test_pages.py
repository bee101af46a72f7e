"""The pages in a real browser: try a photo on /, drain a node on /dashboard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers.photos import encoded
from PIL import Image, ImageDraw
from support import ADMIN_TOKEN, FakeNode, Gateway

from photogate.keys import GATEWAY

TIMEOUT_MS = 15_000


def photo(path: Path, width: int = 160, height: int = 120) -> Path:
    im = Image.new("RGB", (width, height), (40, 90, 160))
    draw = ImageDraw.Draw(im)
    for i in range(0, width, 16):
        draw.line([(i, 0), (width - i, height)], fill=(240, 200, 60), width=2)
    draw.ellipse([width // 4, height // 4, width * 3 // 4, height * 3 // 4], outline=(255, 255, 255), width=3)
    path.write_bytes(encoded(im, "PNG"))
    return path


def url(gateway: Gateway, path: str) -> str:
    return str(gateway.client.make_url(path))


async def test_try_a_photo_and_compare(gateway: Gateway, nodes, page: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node: FakeNode = await nodes()
    await gateway.register(node)
    await page.goto(url(gateway, "/"))
    await page.set_input_files("#file", str(photo(tmp_path / "photo.png")))
    await page.click("#go")
    await page.wait_for_selector('#result[data-ready="1"]', timeout=TIMEOUT_MS)
    sizes = await page.evaluate("""() => ['before', 'after'].map(id => {
        const img = document.getElementById(id);
        const box = img.getBoundingClientRect();
        return [img.naturalWidth, img.naturalHeight, Math.round(box.width), Math.round(box.height)];
    })""")
    (before_w, before_h, box_w, box_h), (after_w, after_h, after_box_w, after_box_h) = sizes
    assert (before_w, before_h) == (160, 120)
    assert (after_w, after_h) == (320, 240)  # the fake node doubles the photo
    assert (box_w, box_h) == (after_box_w, after_box_h) and box_w > 320  # shown over each other, same size
    assert "160×120" in await page.inner_text("#sizes") and "320×240" in await page.inner_text("#sizes")
    href = await page.get_attribute("#download", "href")
    assert href and href.startswith("/api/v1/download/")
    await page.fill("#slider", "20")
    assert "20%" in await page.evaluate("getComputedStyle(document.getElementById('after-clip')).clipPath")
    await page.screenshot(path=str(tmp_path / "try-it.png"), full_page=True)
    assert (tmp_path / "try-it.png").stat().st_size > 1000
    assert node.jobs == 1
    assert page.js_errors == []


async def test_dashboard_shows_nodes_and_drains_one(gateway: Gateway, nodes, page: Any, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fleet = [await nodes(slots=2) for _ in range(3)]
    for n in fleet:
        await gateway.register(n)
    await gateway.wait_done(await gateway.submit())

    resp = await page.goto(url(gateway, "/dashboard"))
    assert resp.status == 401  # the login form, until the token is given
    page.js_errors.clear()  # Chromium logs that 401 as a console error
    await page.fill("#token", ADMIN_TOKEN)
    await page.click("#login button[type=submit]")
    for sid in ("GPU-001", "GPU-002", "GPU-003"):
        await page.wait_for_selector(f'tr[data-node="{sid}"] .pill.healthy', timeout=TIMEOUT_MS)
    assert "live" in await page.inner_text("#live")
    assert await page.locator("#tasks tbody tr").count() == 1
    cookies = await page.context.cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [("photogate_dashboard", True, "Strict")]
    assert ADMIN_TOKEN not in page.url

    row = page.locator('tr[data-node="GPU-002"]')
    await row.locator("button[data-action=drain]").click()
    assert "Drain GPU-002?" in await page.inner_text("#confirm-text")
    await page.click("#confirm-cancel")  # cancelling does nothing
    assert not gateway.app[GATEWAY].registry.get("GPU-002").record.draining
    await row.locator("button[data-action=drain]").click()
    await page.click("#confirm-ok")
    await page.wait_for_selector('tr[data-node="GPU-002"] .pill.draining', timeout=TIMEOUT_MS)
    assert gateway.app[GATEWAY].registry.get("GPU-002").record.draining
    assert await row.locator("button[data-action=undrain]").count() == 1
    assert await page.locator(".pill.healthy").count() == 2
    await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
    assert (tmp_path / "dashboard.png").stat().st_size > 1000
    assert page.js_errors == []
