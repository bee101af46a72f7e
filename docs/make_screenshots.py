#!/usr/bin/env python3
"""Regenerate docs/try-it.png and docs/dashboard.png.

Runs a gateway in-process on 127.0.0.1, one real gpunode (the bundled model, on the CPU)
for the try-it page, then two simulated nodes for the dashboard, one of which is killed
so the dashboard shows three nodes, one down. Screenshots are taken with Debian's
Chromium through Playwright (``apt-get install chromium``; ``pip install playwright``).

    .venv/bin/python docs/make_screenshots.py
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from playwright.async_api import async_playwright

from photogate.app import create_app
from photogate.config import load_config
from photogate.keys import GATEWAY

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
PHOTO = REPO / "tests" / "gpunode" / "images" / "chelsea_crop.png"
SECRET = "screenshot-secret-0123456789"
ADMIN_TOKEN = "screenshot-admin-token-0123456789"
CHROMIUM = os.environ.get("PHOTOGATE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def start_node(gateway: str, state: Path, *extra: str) -> subprocess.Popen[bytes]:
    state.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "gpunode"), "--gateway", gateway, "--secret", SECRET, "--port", "0",
         "--host", "127.0.0.1", "--advertise-ip", "127.0.0.1", "--state-dir", str(state), *extra],
        stdout=(state / "log").open("wb"), stderr=subprocess.STDOUT)


async def run(tmp: Path) -> None:
    config = load_config(None, env={}, overrides={
        "webhook.secret": SECRET, "admin.token": ADMIN_TOKEN, "storage.data_dir": str(tmp / "gateway"),
        "health_check.interval": 0.5, "health_check.timeout": 1.0, "ui.refresh": 0.5,
        "webhook.allowed_node_networks": ["127.0.0.0/8"],  # the nodes run here
    })
    app = create_app(config)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    base = f"http://127.0.0.1:{port}"
    registry = app[GATEWAY].registry
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        nodes.append(start_node(base, tmp / "node1", "--cpu"))
        await wait_until(lambda: _healthy(registry, 1), "the real gpunode to register", 120)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = await browser.new_page(viewport={"width": 1100, "height": 900})
            await page.goto(base + "/")
            await page.set_input_files("#file", str(PHOTO))
            await page.click("#go")
            await page.wait_for_selector('#result[data-ready="1"]', timeout=120_000)
            await page.fill("#slider", "50")
            await page.screenshot(path=str(DOCS / "try-it.png"), full_page=True)
            print("wrote docs/try-it.png")

            # One after the other, so that the node killed below is GPU-003.
            nodes.append(start_node(base, tmp / "node2", "--simulate", "--speed", "2", "--slots", "2"))
            await wait_until(lambda: _registered(registry, 2), "GPU-002 to register")
            nodes.append(start_node(base, tmp / "node3", "--simulate", "--speed", "1", "--slots", "1"))
            await wait_until(lambda: _registered(registry, 3), "GPU-003 to register")
            async with aiohttp.ClientSession() as http:
                for size in ((480, 320), (400, 300), (320, 240), (480, 360), (360, 240), (256, 256)):
                    await _submit(http, base, size)
                await wait_until(lambda: _all_done(app), "the photos to be enhanced")
            nodes[2].send_signal(signal.SIGKILL)  # gone without unregistering: GPU-003 goes down
            nodes[2].wait()
            await wait_until(lambda: _down(registry, "GPU-003"), "GPU-003 to be marked down")
            await page.goto(base + "/dashboard")
            await page.fill("#token", ADMIN_TOKEN)
            await page.click("#login button[type=submit]")
            await page.wait_for_selector('tr[data-node="GPU-003"] .pill.unhealthy')
            await page.wait_for_selector("#live.live")
            await page.screenshot(path=str(DOCS / "dashboard.png"), full_page=True)
            print("wrote docs/dashboard.png")
            await browser.close()
    finally:
        for proc in nodes:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(15)
        await runner.cleanup()


async def _healthy(registry, count: int) -> bool:  # type: ignore[no-untyped-def]
    return sum(1 for s in registry.all() if s.healthy) == count


async def _registered(registry, count: int) -> bool:  # type: ignore[no-untyped-def]
    return len(registry.all()) == count


async def _down(registry, server_id: str) -> bool:  # type: ignore[no-untyped-def]
    state = registry.get(server_id)
    return state is not None and not state.healthy


async def _all_done(app: web.Application) -> bool:
    gw = app[GATEWAY]
    return gw.dispatcher.queued == 0 and gw.dispatcher.in_flight == 0


async def _submit(http: aiohttp.ClientSession, base: str, size: tuple[int, int]) -> None:
    from io import BytesIO

    from PIL import Image

    with Image.open(PHOTO) as im:
        buf = BytesIO()
        im.convert("RGB").resize(size).save(buf, "JPEG", quality=90)
    form = aiohttp.FormData()
    form.add_field("file", buf.getvalue(), filename="photo.jpg", content_type="image/jpeg")
    async with http.post(base + "/api/v1/enhance", data=form) as resp:
        resp.raise_for_status()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="photogate-screenshots-") as tmp:
        asyncio.run(run(Path(tmp)))


if __name__ == "__main__":
    main()
