"""Decode bombs (issue 13, item 4 and acceptance 3): small files whose check would need a lot
of memory. The gateway (a real process, its RSS read from /proc) must accept them as the valid
images they are, keep every check within ``limits.check_memory_bytes``, and keep answering
``GET /api/v1/health`` meanwhile; node results go through the same bound."""

from __future__ import annotations

import asyncio
import functools
import io
import sys
import time
from typing import Any

import aiohttp
from aiohttp import web
from support import REPO, SECRET, FakeNode, wait_until

sys.path.insert(0, str(REPO / "bench"))
from bomb_images import bombs as make_bombs  # noqa: E402
from bomb_images import webp_lossless  # noqa: E402
from bombs import hammer, memory_kib, tree_rss_kib  # noqa: E402

MIB = 1024 * 1024
#: The smallest budget config.py allows at the default 36 MP: one progressive JPEG at a time.
TIGHT_BUDGET = 230_000_000
CONFIG = "health_check: {interval: 0.3, timeout: 2}\nlogging: {level: info}  # gateway_listening reports the port\n"


@functools.lru_cache(maxsize=1)
def _bombs() -> dict[str, tuple[bytes, str]]:
    return make_bombs(36_000_000)


class EchoNode(FakeNode):
    """A node whose result is its input, byte for byte: each bomb comes back to be checked."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = 1.0  # what it does to the input, as a real node reports it

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * MIB)
        app.router.add_get("/health", self._health)
        app.router.add_post("/v1/enhance", self._enhance)
        return app

    async def _enhance(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "bad token"}, status=401)
        body = await request.read()
        self.jobs += 1
        return web.Response(body=body, content_type=request.headers["Content-Type"])


async def _gateway(gateway_process: Any, session: aiohttp.ClientSession, fleet: list[FakeNode],
                   extra: str = "") -> Any:
    gw = gateway_process(CONFIG + extra)
    gw.start()
    await gw.wait_ready(session)
    for node in fleet:
        async with session.post(gw.url + "/webhook/register",
                                json={"ip": "127.0.0.1", "port": node.port, "secret": SECRET}) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            node.token = body["node_token"]

    async def healthy() -> bool:
        async with session.get(gw.url + "/api/v1/health") as resp:
            return (await resp.json())["fleet"]["healthy"] == len(fleet)

    await wait_until(healthy, 15, "the nodes to be healthy")
    return gw


async def _burst(session: aiohttp.ClientSession, url: str, pid: int,
                 files: list[tuple[bytes, str]]) -> tuple[list[Any], list[float], float]:
    """Upload ``files`` all at once while health is polled: (answers, health seconds, RSS growth
    MiB of the gateway and its image-check process)."""
    before = memory_kib(pid)[0]
    health: list[float] = []
    done = asyncio.Event()
    peak = [0]

    async def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss_kib(pid))
            await asyncio.sleep(0.02)

    async def poll() -> None:
        while not done.is_set():
            started = time.monotonic()
            async with session.get(url + "/api/v1/health", timeout=aiohttp.ClientTimeout(total=30)) as resp:
                assert resp.status == 200
                await resp.read()
            health.append(time.monotonic() - started)
            await asyncio.sleep(0.01)

    async def upload(data: bytes, mime: str) -> Any:
        form = aiohttp.FormData()
        form.add_field("file", io.BytesIO(data), filename="bomb", content_type=mime)
        async with session.post(url + "/api/v1/enhance", data=form, timeout=aiohttp.ClientTimeout(total=60)) as resp:
            return resp.status, await resp.json()

    poller, sampler = asyncio.create_task(poll()), asyncio.create_task(sample())
    try:
        answers = await asyncio.gather(*(upload(d, m) for d, m in files))
    finally:
        done.set()
        await poller
        await sampler
    return answers, health, (max(peak[0], memory_kib(pid)[1]) - before) / 1024


async def test_lossless_webp_bombs_leave_memory_and_health_alone(gateway_process, nodes) -> None:  # type: ignore[no-untyped-def]
    # Before: each 5999x5999 lossless WebP was decoded in full on the store's thread
    # (+550 MiB each, health blocked about a second per bomb).
    node = await nodes()
    node.mode = "reject400"
    async with aiohttp.ClientSession() as session:
        gw = await _gateway(gateway_process, session, [node])
        bomb = webp_lossless(5999)
        answers, health, grown = await _burst(session, gw.url, gw.proc.pid, [(bomb, "image/webp")] * 8)
    assert [status for status, _ in answers] == [200] * 8, answers
    assert grown < 64, f"gateway RSS grew by {grown:.0f} MiB for eight {len(bomb)}-byte WebPs"
    assert health and max(health) < 2.0, f"health took up to {max(health):.2f} s"


async def test_concurrent_bombs_hold_no_more_than_the_check_budget(gateway_process, nodes) -> None:  # type: ignore[no-untyped-def]
    # Before: lossy WebPs and progressive JPEGs over 64 KiB were decoded in the default
    # executor, six at once: gigabytes.
    node = await nodes()
    node.mode = "reject400"
    b = _bombs()
    files = [b["jpeg_progressive"]] * 6 + [b["webp_lossy"]] * 6 + [b["bmp"]] * 2 + [b["jpeg_baseline"]] * 2
    async with aiohttp.ClientSession() as session:
        gw = await _gateway(gateway_process, session, [node], f"limits: {{check_memory_bytes: {TIGHT_BUDGET}}}\n")
        answers, health, grown = await _burst(session, gw.url, gw.proc.pid, files)
    assert [status for status, _ in answers] == [200] * len(files), answers
    assert grown < TIGHT_BUDGET / MIB + 48, f"gateway RSS grew by {grown:.0f} MiB; the check budget is " \
                                            f"{TIGHT_BUDGET / MIB:.0f} MiB"
    assert health and max(health) < 2.0, f"health took up to {max(health):.2f} s"


async def test_node_results_are_checked_within_the_same_budget(gateway_process) -> None:  # type: ignore[no-untyped-def]
    # A node answering progressive JPEG bombs: before, each result was decoded in the
    # default executor, up to six at once.
    echo = [EchoNode() for _ in range(2)]
    for node in echo:
        await node.start()
    try:
        bomb = _bombs()["jpeg_progressive"][0]
        async with aiohttp.ClientSession() as session:
            gw = await _gateway(gateway_process, session, echo, f"limits: {{check_memory_bytes: {TIGHT_BUDGET}}}\n")
            before = memory_kib(gw.proc.pid)[0]
            answers, _, _ = await _burst(session, gw.url, gw.proc.pid, [(bomb, "image/jpeg")] * 6)
            ids = [body["task_id"] for _, body in answers]
            finals: dict[str, Any] = {}

            async def finished() -> bool:
                for task_id in ids:
                    async with session.get(f"{gw.url}/api/v1/status/{task_id}") as resp:
                        finals[task_id] = await resp.json()
                return all(f["status"] in ("completed", "failed") for f in finals.values())

            await wait_until(finished, 60, "every bomb's result to be checked")
            grown = (memory_kib(gw.proc.pid)[1] - before) / 1024
            assert [f["status"] for f in finals.values()] == ["completed"] * 6, finals
            async with session.get(f"{gw.url}/api/v1/download/{ids[0]}") as resp:
                assert resp.status == 200 and await resp.read() == bomb
        assert sum(n.jobs for n in echo) == 6
        assert grown < TIGHT_BUDGET / MIB + 48, f"gateway RSS grew by {grown:.0f} MiB checking six results"
    finally:
        for node in echo:
            await node.stop()


async def test_short_bomb_load_keeps_rss_under_400_mib_and_health_answering(gateway_process) -> None:  # type: ignore[no-untyped-def]
    # Acceptance 3, short: bench/bombs.py's load (every format at the 36 MP limit) for 5 s.
    echo = [EchoNode() for _ in range(2)]
    for node in echo:
        await node.start()
    try:
        async with aiohttp.ClientSession() as session:
            gw = await _gateway(gateway_process, session, echo)
            result = await hammer(gw.url, gw.proc.pid, _bombs(), clients=6, seconds=5.0, kill_rss_mib=1500,
                                  kill=gw.kill)
    finally:
        for node in echo:
            await node.stop()
    summary = result.summary()
    print(f"short bomb load: {summary}")
    assert not result.killed and result.peak_rss_mib < 400, summary
    assert result.health_failures == 0 and len(result.health_ms) >= 10, summary
    assert result.health_quantile(0.99) < 1000, summary  # the bench's target is 100 ms on a quiet machine
    assert set(result.accepted) == set(_bombs()), summary
    assert not result.refused, summary
