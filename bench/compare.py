#!/usr/bin/env python3
"""Two photogate source trees side by side: small-job latency, interleaved job by job.

Each tree runs its own gateway (``PYTHONPATH=TREE``) with its own simulated node; small jobs
go straight to a node, then through each gateway in turn (the order alternates), so that the
machine's drifts fall on every path alike. Use it to measure a change:

    git worktree add /tmp/before HEAD~3
    python bench/compare.py --tree before=/tmp/before/src --tree after=src --jobs 200

Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import (
    GATEWAY_CONFIG,
    SECRET,
    Procs,
    free_port,
    gateway_argv,
    jpeg,
    sim_node_argv,
    wait_for,
)


async def run(args: argparse.Namespace) -> int:
    trees = dict(t.split("=", 1) for t in args.tree)
    photo = jpeg()
    with tempfile.TemporaryDirectory(prefix="photogate-compare-") as tmp:
        work = Path(tmp)
        procs = Procs(work)
        gateways: dict[str, tuple[str, int, str]] = {}
        try:
            async with aiohttp.ClientSession() as http:
                for name, tree in trees.items():
                    port, node_port = free_port(), free_port()
                    url = f"http://127.0.0.1:{port}"
                    config = work / f"{name}.yaml"
                    config.write_text(GATEWAY_CONFIG)
                    env = {"PYTHONPATH": str(Path(tree).resolve())}
                    procs.start(f"gateway-{name}", gateway_argv(config, port, work / f"data-{name}"), env=env)

                    async def up(url: str = url) -> bool:
                        async with http.get(url + "/api/v1/health") as r:
                            return r.status == 200

                    await wait_for(up, f"gateway {name}")
                    procs.start(f"node-{name}", sim_node_argv(node_port, 100_000, 64, gateway=url,
                                                              state_dir=work / f"node-{name}"))

                    async def registered(url: str = url) -> bool:
                        async with http.get(url + "/webhook/servers", headers={"X-Webhook-Secret": SECRET}) as r:
                            return (await r.json())["data"]["healthy_servers"] == 1

                    await wait_for(registered, f"the node of {name} to register")
                    token = sqlite3.connect(work / f"data-{name}" / "photogate.db").execute(
                        "SELECT node_token FROM nodes").fetchone()[0]
                    gateways[name] = (url, node_port, token)

                async def direct(node_port: int, token: str) -> None:
                    headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/jpeg"}
                    async with http.post(f"http://127.0.0.1:{node_port}/v1/enhance", data=photo, headers=headers) as r:
                        await r.read()

                async def through(url: str) -> None:
                    form = aiohttp.FormData()
                    form.add_field("file", photo, filename="p.jpg", content_type="image/jpeg")
                    async with http.post(url + "/api/v1/enhance?wait=30", data=form) as r:
                        status = await r.json()
                    if status.get("status") != "completed":
                        raise RuntimeError(f"a job did not complete: {status}")
                    async with http.get(url + status["result_url"]) as r:
                        await r.read()

                times: dict[str, list[float]] = {name: [] for name in gateways}
                direct_ms: list[float] = []
                first = next(iter(gateways.values()))
                for i in range(args.jobs + 20):  # the first 20 warm every path
                    t = time.perf_counter()
                    await direct(first[1], first[2])
                    elapsed = (time.perf_counter() - t) * 1000
                    if i >= 20:
                        direct_ms.append(elapsed)
                    for name in (list(gateways) if i % 2 == 0 else list(reversed(gateways))):
                        t = time.perf_counter()
                        await through(gateways[name][0])
                        if i >= 20:
                            times[name].append((time.perf_counter() - t) * 1000)
        finally:
            procs.stop()
    base = statistics.median(direct_ms)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}\n")
    print("| path | median | overhead over direct |\n| --- | --- | --- |")
    print(f"| straight to the node | {base:.2f} ms | |")
    figures = {"direct_ms": base}
    for name, values in times.items():
        med = statistics.median(values)
        figures[f"{name}_ms"] = med
        print(f"| through `{name}` (`?wait=` + download) | {med:.2f} ms | {med - base:.2f} ms |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=SRC",
                        help="a name and a source tree holding the photogate package (repeat)")
    parser.add_argument("--jobs", type=int, default=100, help="small jobs per path (bounded)")
    parser.add_argument("--json", help="also write the figures to this file")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
