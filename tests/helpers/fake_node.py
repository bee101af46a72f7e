"""A fake GPU node: a real aiohttp app speaking the node protocol, that can be told to be slow,
fail or vanish."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image


class FakeNode:
    """A real aiohttp GPU node speaking the node protocol; its result is the input at the scale asked
    for (2x by default) in the format asked for (PNG by default)."""

    def __init__(self, *, delay: float = 0.0, slots: int = 1, throughput: float | None = None) -> None:
        self.delay = delay
        self.slots = slots
        #: MP/s reported in /health (a prior for the ``fastest`` strategy); None: not reported.
        self.throughput = throughput
        #: The scale reported in /health, and the result's when the job asks none.
        self.scale = 2.0
        self.mode = "ok"  # ok | error500 | reject400 | hang | garbage
        self.token: str | None = None
        self.server_id: str | None = None
        self.jobs = 0
        self.busy = 0
        self.max_busy = 0
        self.health_hits = 0
        self.seen_tokens: list[str] = []
        self.server: TestServer | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_post("/v1/enhance", self._enhance)
        return app

    async def start(self) -> None:
        self.server = TestServer(self.app(), host="127.0.0.1", port=self.port or 0)
        await self.server.start_server()
        self.port = self.server.port

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None

    async def _health(self, request: web.Request) -> web.Response:
        self.health_hits += 1
        return web.json_response({"status": "ok", "busy": self.busy, "queued": 0, "slots": self.slots,
                                  "model": "fake", "scale": self.scale, "provider": "none",
                                  "throughput": self.throughput})

    async def _enhance(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        self.seen_tokens.append(auth)
        if self.token is None or auth != f"Bearer {self.token}":
            return web.json_response({"error": "bad token"}, status=401)
        body = await request.read()
        self.busy += 1
        self.max_busy = max(self.max_busy, self.busy)
        try:
            if self.mode == "hang":
                await asyncio.sleep(3600)
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.mode == "error500":
                return web.json_response({"error": "CUDA out of memory"}, status=500)
            if self.mode == "reject400":
                return web.json_response({"error": "cannot decode image"}, status=400)
            if self.mode == "garbage":
                return web.Response(body=b"\x89PNG\r\n\x1a\n not really", content_type="image/png")
            scale, fmt = float(request.query.get("scale", self.scale)), request.query.get("format", "png").upper()
            with Image.open(io.BytesIO(body)) as im:
                out = im.convert("RGB").resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))))
            buf = io.BytesIO()
            out.save(buf, fmt)
            self.jobs += 1
            return web.Response(body=buf.getvalue(), content_type=f"image/{fmt.lower()}",
                                headers={"X-Node-Port": str(self.port)})
        finally:
            self.busy -= 1


class _Node(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...


N = TypeVar("N", bound=_Node)


@asynccontextmanager
async def node_factory(cls: Callable[..., N]) -> AsyncIterator[Callable[..., Awaitable[N]]]:
    """``make(**kwargs)`` starts a ``cls`` node; every node it started is stopped on exit
    (the body of a fixture: ``async with node_factory(FakeNode) as make: yield make``)."""
    started: list[N] = []

    async def make(*args: Any, **kwargs: Any) -> N:
        node = cls(*args, **kwargs)
        await node.start()
        started.append(node)
        return node

    try:
        yield make
    finally:
        for node in started:
            await node.stop()
