"""A misbehaving GPU node as a real process: ``python faults_node.py --port P [--mode M]``.

It speaks the node protocol (``GET /health``, ``POST /v1/enhance`` answering the input
image itself, any bearer token accepted) and can be switched at runtime with
``POST /_control {"mode": ..., "delay": ..., "period": ...}``:

- ``ok``: echo the input (``delay`` s per job); with ``--output mirror``, the input flipped
  left to right, as ``gpunode --simulate --sim-output mirror`` answers (the soak checks it);
- ``error500``: every job answers 500;
- ``hang``: jobs never answer; health still answers (the worst case);
- ``garbage``: answers a PNG signature and junk; ``truncated``: the first half of the input;
- ``mislabel``: the input, labelled ``image/jpeg`` whatever it is;
- ``down``: health 503 and jobs 500; ``flap``: ``down`` and ``ok`` every ``period`` s.

``GET /_stats`` answers the jobs done and the modes seen. Loopback only; a test tool.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time

from aiohttp import web

from gpunode.simulate import mirror

MODES = ("ok", "error500", "hang", "garbage", "truncated", "mislabel", "down", "flap")


class FaultNode:
    def __init__(self, mode: str, delay: float, period: float, output: str = "echo") -> None:
        self.mode, self.delay, self.period, self.output = mode, delay, period, output
        self.since = time.monotonic()
        self.jobs = 0
        self.answers: dict[str, int] = {}

    def effective(self) -> str:
        if self.mode != "flap":
            return self.mode
        return "down" if int((time.monotonic() - self.since) / self.period) % 2 == 0 else "ok"

    async def health(self, request: web.Request) -> web.Response:
        if self.effective() == "down":
            return web.json_response({"status": "down"}, status=503)
        return web.json_response({"status": "ok", "busy": 0, "queued": 0, "slots": 4, "model": "faults",
                                  "scale": 1, "provider": "none"})

    async def enhance(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        mode = self.effective()
        self.answers[mode] = self.answers.get(mode, 0) + 1
        if mode == "hang":
            await asyncio.sleep(3600)
        if self.delay:
            await asyncio.sleep(self.delay)
        if mode in ("error500", "down"):
            return web.json_response({"error": "CUDA error: an illegal memory access was encountered"}, status=500)
        ctype = request.headers.get("Content-Type", "application/octet-stream")
        if mode == "garbage":
            return web.Response(body=b"\x89PNG\r\n\x1a\n" + b"\0junk" * 50, content_type="image/png")
        if mode == "mislabel":
            self.jobs += 1
            return web.Response(body=body, headers={"Content-Type": "image/jpeg"})
        if mode == "truncated":
            return web.Response(body=body[: len(body) // 2], headers={"Content-Type": ctype})
        self.jobs += 1
        if self.output == "mirror":
            body, ctype = await asyncio.get_running_loop().run_in_executor(
                None, lambda: mirror(body, request.query.get("format"), 95, max_pixels=50_000_000))
        return web.Response(body=body, headers={"Content-Type": ctype})

    async def control(self, request: web.Request) -> web.Response:
        body = await request.json()
        if "mode" in body:
            if body["mode"] not in MODES:
                return web.json_response({"error": f"mode: one of {MODES}"}, status=400)
            self.mode, self.since = body["mode"], time.monotonic()
        self.delay = float(body.get("delay", self.delay))
        self.period = float(body.get("period", self.period))
        return web.json_response({"mode": self.mode, "delay": self.delay})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"jobs": self.jobs, "answers": self.answers, "mode": self.mode})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--mode", choices=MODES, default="ok")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--period", type=float, default=1.0)
    parser.add_argument("--output", choices=("echo", "mirror"), default="echo")
    args = parser.parse_args()
    node = FaultNode(args.mode, args.delay, args.period, args.output)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/health", node.health)
    app.router.add_post("/v1/enhance", node.enhance)
    app.router.add_post("/_control", node.control)
    app.router.add_get("/_stats", node.stats)
    # Bound here so that --port 0 works: the port is reported (as gpunode does) once it serves.
    sock = socket.create_server((args.host, args.port))
    port = sock.getsockname()[1]

    def started(*_: object) -> None:
        sys.stdout.write(json.dumps({"event": "starting", "port": port}) + "\n")
        sys.stdout.flush()

    web.run_app(app, sock=sock, print=started, access_log=None)


if __name__ == "__main__":
    main()
