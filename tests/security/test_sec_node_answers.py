"""What the gateway reads from a GPU node, and how it dispatches around a node's answers
(issue 13, items 12, 14(a) and 15).

- A hostile or broken node cannot exhaust the gateway: an error body is read up to a few
  KB, a result up to a bound derived from the expected output (and ``limits.max_result_bytes``);
  a result over it is that node's failure, retried elsewhere, and nothing oversized is stored.
- A node's 503 "busy" is not a failure: it spends no attempt and does not count against the
  node's health, and the node is offered no work until it has a free slot again.
- A task retried after ``dispatch.retry_backoff`` runs when its backoff ends, with no other
  event needed to wake the dispatcher.
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from PIL import Image
from support import SECRET, FakeNode, Gateway, image_bytes, node_factory, wait_until

from photogate.keys import GATEWAY

MiB = 1024 * 1024


class HostileNode(FakeNode):
    """A fake node with the answers of a hostile or overloaded GPU server.

    ``huge_error``: 400 with a ``junk_bytes`` plain-text body, streamed.
    ``png_junk``: 200 with a valid PNG followed by ``junk_bytes`` of junk, streamed (chunked).
    ``png_declared``: 200 declaring ``Content-Length`` of a valid PNG plus ``junk_bytes``.
    ``busy503``: 503 "busy" (``Retry-After: retry_after``) to every job, and ``/health``
    reports every slot taken.
    ``fail_once``: 500 to the first job, then ``ok``.
    ``huge_health``: ``/health`` answers a valid JSON object of ``junk_bytes``, streamed.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.junk_bytes = 80 * MiB
        self.hits = 0  # every POST /v1/enhance, whatever it was answered
        self.sent = 0  # bytes of a streamed answer that got out before the gateway hung up
        self.retry_after = "3600"
        #: When set, an ``ok`` job waits for it before answering.
        self.gate: asyncio.Event | None = None

    async def _health(self, request: web.Request) -> web.StreamResponse:
        self.health_hits += 1
        if self.mode == "huge_health":
            return await self._stream(request, 200, "application/json", b'{"status": "ok", "pad": "', None,
                                      tail=b'"}')
        busy = self.slots if self.mode == "busy503" else self.busy
        return web.json_response({"status": "ok", "busy": busy, "queued": 0, "slots": self.slots,
                                  "model": "fake", "scale": 2, "provider": "none"})

    async def _enhance(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response({"error": "bad token"}, status=401)
        body = await request.read()
        self.hits += 1
        if self.mode == "busy503":
            return web.json_response({"error": "node busy: 1 running, 4 queued; try another node"}, status=503,
                                     headers={"Retry-After": self.retry_after})
        if self.mode == "fail_once":
            self.mode = "ok"
            return web.json_response({"error": "CUDA out of memory"}, status=500)
        if self.mode == "huge_error":
            return await self._stream(request, 400, "text/plain", b"image rejected: ", None)
        if self.mode in ("png_junk", "png_declared"):
            png = _enhanced(body)
            length = len(png) + self.junk_bytes if self.mode == "png_declared" else None
            return await self._stream(request, 200, "image/png", png, length)
        if self.gate is not None:
            self.busy += 1
            try:
                await self.gate.wait()
            finally:
                self.busy -= 1
        return await super()._enhance(request)

    async def _stream(self, request: web.Request, status: int, ctype: str, head: bytes,
                      length: int | None, tail: bytes = b"") -> web.StreamResponse:
        resp = web.StreamResponse(status=status, headers={"Content-Type": ctype})
        if length is not None:
            resp.content_length = length
        await resp.prepare(request)
        chunk = b"A" * MiB
        try:
            await resp.write(head)
            self.sent = len(head)
            while self.sent < len(head) + self.junk_bytes:
                await resp.write(chunk)
                self.sent += len(chunk)
            await resp.write_eof(tail)
        except (ConnectionError, RuntimeError):
            pass  # the gateway hung up: what it should do
        return resp


def _enhanced(body: bytes) -> bytes:
    with Image.open(io.BytesIO(body)) as im:
        out = im.convert("RGB").resize((im.width * 2, im.height * 2))
    buf = io.BytesIO()
    out.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
async def hostile() -> AsyncIterator[Callable[..., Awaitable[HostileNode]]]:
    async with node_factory(HostileNode) as make:
        yield make


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """The highest RSS of this process (gateway and nodes run in it), sampled every 10 ms."""

    def __init__(self) -> None:
        self.base = _rss()
        self.peak = self.base
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, _rss())
            await asyncio.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self._task = asyncio.ensure_future(self._sample())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, _rss())

    @property
    def growth(self) -> int:
        return self.peak - self.base


def _results(gw: Any) -> list[Path]:
    return sorted(gw.blobs.results.iterdir())


async def _servers(gateway: Gateway) -> dict[str, dict[str, Any]]:
    resp = await gateway.client.get("/webhook/servers", headers={"X-Webhook-Secret": SECRET})
    assert resp.status == 200
    body = await resp.json()
    return {s["server_id"]: s for s in body["data"]["servers"]}


# -- item 12: what is read from a node is capped ----------------------------------------------


async def test_huge_error_body_is_read_up_to_a_few_kb(make_gateway, hostile) -> None:  # type: ignore[no-untyped-def]
    gateway = await make_gateway()
    node = await hostile()
    await gateway.register(node)
    node.mode = "huge_error"
    with PeakRss() as rss:
        final = await gateway.wait_done(await gateway.submit(), timeout=60)
    assert final["status"] == "failed" and final["attempts"] == 1, final
    # The user reads what the node said, short, not 80 MB of it.
    assert final["error"].startswith("the GPU server could not process this image: image rejected: AAA"), final
    assert len(final["error"]) < 1000
    assert rss.growth < 32 * MiB, f"gateway RSS grew {rss.growth / MiB:.0f} MiB reading an error"
    # The gateway hung up long before the end of the 80 MB.
    assert node.sent < 40 * MiB, node.sent


async def test_valid_png_followed_by_junk_is_the_nodes_failure(make_gateway, hostile) -> None:  # type: ignore[no-untyped-def]
    # No probes during the test: a good probe would reset the count of failures checked below.
    gateway = await make_gateway(**{"health_check.interval": 3600})
    bad, good = await hostile(), await hostile()
    await gateway.register(bad)  # GPU-001: round robin's first choice
    await gateway.register(good)
    bad.junk_bytes = 40 * MiB
    bad.mode = "png_junk"
    gw = gateway.app[GATEWAY]
    with PeakRss() as rss:
        final = await gateway.wait_done(await gateway.submit(image_bytes(40, 30)), timeout=60)
    assert bad.hits == 1 and good.jobs == 1
    assert final["status"] == "completed" and final["server_id"] == "GPU-002" and final["attempts"] == 2, final
    resp = await gateway.client.get(final["result_url"])
    assert resp.status == 200
    data = await resp.read()
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (80, 60)
    assert len(data) < 64 * 1024
    # Nothing oversized stored, no .part left behind; the bad node was blamed (passive health).
    assert [p.name for p in _results(gw)] == [final["task_id"]]
    assert _results(gw)[0].stat().st_size == len(data)
    servers = await _servers(gateway)
    assert servers["GPU-001"]["consecutive_failures"] == 1 and servers["GPU-002"]["consecutive_failures"] == 0
    assert "too large" in servers["GPU-001"]["last_error"], servers["GPU-001"]
    assert bad.sent < 20 * MiB, bad.sent
    assert rss.growth < 32 * MiB, f"gateway RSS grew {rss.growth / MiB:.0f} MiB reading a result"


async def test_declared_oversized_result_is_refused_before_reading(make_gateway, hostile) -> None:  # type: ignore[no-untyped-def]
    # Alone, a node that always answers too much fails the task clearly after max_attempts.
    gateway = await make_gateway(**{"dispatch.max_attempts": 2, "dispatch.retry_backoff": 0.05,
                                    "health_check.failure_threshold": 100})
    node = await hostile()
    await gateway.register(node)
    node.junk_bytes = 30 * MiB
    node.mode = "png_declared"
    gw = gateway.app[GATEWAY]
    final = await gateway.wait_done(await gateway.submit(), timeout=60)
    assert final["status"] == "failed" and final["attempts"] == 2, final
    assert "failed after 2 attempts" in final["error"] and "result too large" in final["error"], final
    # Refused on its Content-Length, before any of it was read (not by the cap while streaming).
    declared = len(_enhanced(image_bytes())) + node.junk_bytes
    assert f"the node declared {declared} bytes" in final["error"], final
    assert _results(gw) == []
    assert node.sent < 20 * MiB, node.sent


async def test_result_ceiling_is_configurable(make_gateway, hostile) -> None:  # type: ignore[no-untyped-def]
    # A result within the pixel bound but over limits.max_result_bytes is refused too.
    gateway = await make_gateway(**{"limits.max_result_bytes": 2048, "dispatch.max_attempts": 1})
    node = await hostile()
    await gateway.register(node)
    gw = gateway.app[GATEWAY]
    noisy = Image.effect_noise((64, 48), 100).convert("RGB")
    buf = io.BytesIO()
    noisy.save(buf, "PNG")
    final = await gateway.wait_done(await gateway.submit(buf.getvalue()), timeout=30)
    assert final["status"] == "failed" and "result too large" in final["error"], final
    assert "2048" in final["error"]
    assert _results(gw) == []


async def test_huge_health_answer_is_a_failed_check(make_gateway, hostile) -> None:  # type: ignore[no-untyped-def]
    gateway = await make_gateway(**{"health_check.failure_threshold": 2})
    node = await hostile()
    node.junk_bytes = 20 * MiB
    await gateway.register(node)
    node.mode = "huge_health"

    async def refused() -> bool:
        server = (await _servers(gateway))["GPU-001"]
        return not server["healthy"]

    with PeakRss() as rss:
        await wait_until(refused, 20, "the node's oversized health answers to mark it down")
    server = (await _servers(gateway))["GPU-001"]
    assert "larger than 65536 bytes" in server["last_error"], server
    assert rss.growth < 32 * MiB, f"gateway RSS grew {rss.growth / MiB:.0f} MiB reading health answers"


async def test_a_retry_avoids_the_node_that_failed_it_even_when_the_strategy_prefers_it(  # type: ignore[no-untyped-def]
        make_gateway, nodes) -> None:
    # weighted at 10:1 would send the retry back to GPU-001; passive health is kept out of it
    # (a high threshold), so only the task's own record of the node that failed it moves it on.
    gateway = await make_gateway(**{"balancer.strategy": "weighted", "health_check.failure_threshold": 100})
    bad, good = await nodes(), await nodes()
    await gateway.register(bad, weight=10)
    await gateway.register(good, weight=1)
    bad.mode = "error500"
    for _ in range(3):
        final = await gateway.wait_done(await gateway.submit())
        assert final["status"] == "completed" and final["server_id"] == "GPU-002" and final["attempts"] == 2, final
    assert good.jobs == 3


# -- item 14(a): busy is not failure --------------------------------------------------------------


async def test_busy_node_spends_no_attempt_and_gets_no_work_until_free(make_gateway, hostile) -> None:  # type: ignore[no-untyped-def]
    gateway = await make_gateway(**{"dispatch.max_attempts": 1, "health_check.failure_threshold": 1})
    node = await hostile()
    await gateway.register(node)
    node.mode = "busy503"
    task_id = await gateway.submit()
    await wait_until(lambda: node.hits == 1, 10, "the node to answer busy")
    # While its health says every slot is taken, the node is offered nothing (no retry
    # storm) and the task waits, queued, its one attempt unspent.
    probes = node.health_hits
    await wait_until(lambda: node.health_hits >= probes + 3, 10, "three more health probes")
    status = await gateway.status(task_id)
    assert status["status"] == "queued" and status["attempts"] == 0, status
    assert node.hits == 1
    servers = await _servers(gateway)
    assert servers["GPU-001"]["healthy"] and servers["GPU-001"]["consecutive_failures"] == 0, servers
    # Its next probe says a slot is free: the task runs there, on its only attempt.
    node.mode = "ok"
    final = await gateway.wait_done(task_id)
    assert final["status"] == "completed" and final["attempts"] == 1 and final["server_id"] == "GPU-001", final
    assert node.hits == 2


async def test_busy_node_frees_when_one_of_its_jobs_ends(make_gateway, hostile) -> None:  # type: ignore[no-untyped-def]
    # Probes far apart and a long Retry-After: only the end of a job of ours on the busy
    # node can free it here.
    gateway = await make_gateway(**{"dispatch.max_attempts": 1, "health_check.interval": 3600})
    node = await hostile(slots=2)
    await gateway.register(node, slots=2)
    node.gate = asyncio.Event()
    first = await gateway.submit()
    await wait_until(lambda: node.busy == 1, 10, "the first job to start")
    node.mode = "busy503"  # the node's other slot went to another client meanwhile
    with structlog.testing.capture_logs() as logs:
        second = await gateway.submit()
        await wait_until(lambda: any(e["event"] == "node_busy" for e in logs), 10, "the node's busy answer")
    assert node.hits == 2
    node.mode = "ok"
    node.gate.set()
    assert (await gateway.wait_done(first))["status"] == "completed"
    final = await gateway.wait_done(second)
    assert final["status"] == "completed" and final["attempts"] == 1, final
    assert node.hits == 3


async def test_busy_node_without_probes_is_offered_work_after_its_retry_after(make_gateway, hostile) -> None:  # type: ignore[no-untyped-def]
    gateway = await make_gateway(**{"dispatch.max_attempts": 1, "health_check.interval": 3600})
    node = await hostile()
    await gateway.register(node)
    node.mode, node.retry_after = "busy503", "0.3"
    task_id = await gateway.submit()
    await wait_until(lambda: node.hits == 1, 10, "the node to answer busy")
    node.mode = "ok"
    final = await gateway.wait_done(task_id)
    assert final["status"] == "completed" and final["attempts"] == 1, final
    assert node.hits == 2


# -- item 15: a retry's wake-up is exact ------------------------------------------------------------


async def test_retry_wakes_on_time_in_the_gateway_process(gateway_process, hostile) -> None:  # type: ignore[no-untyped-def]
    # The gateway as it runs in production (uvloop, whose timers may fire up to a millisecond
    # early), with a backoff that is no whole number of milliseconds.
    gw = gateway_process("webhook:\n  allowed_node_networks: [127.0.0.0/8]\n"
                         "dispatch:\n  retry_backoff: 0.1234\nhealth_check:\n  interval: 3600\n")
    gw.start()
    node = await hostile()
    async with aiohttp.ClientSession() as session:
        await gw.wait_ready(session)
        async with session.post(gw.url + "/webhook/register",
                                json={"ip": "127.0.0.1", "port": node.port, "secret": SECRET}) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            node.token = body["node_token"]
        for _ in range(8):
            node.mode = "fail_once"
            form = aiohttp.FormData()
            form.add_field("file", image_bytes(32, 24), filename="p.png", content_type="image/png")
            async with session.post(gw.url + "/api/v1/enhance", data=form) as resp:
                task_id = (await resp.json())["task_id"]
            final: dict[str, Any] = {}

            async def done(task_id: str = task_id, final: dict[str, Any] = final) -> bool:
                async with session.get(f"{gw.url}/api/v1/status/{task_id}") as resp:
                    final.update(await resp.json())
                return final["status"] in ("completed", "failed")

            await wait_until(done, 10, f"task {task_id} to run after its backoff")
            assert final["status"] == "completed" and final["attempts"] == 2, final
