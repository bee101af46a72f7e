#!/usr/bin/env python3
"""Two photogate source trees side by side: small-job latency, interleaved job by job.

Each tree runs its own gateway (``PYTHONPATH=TREE``) with its own simulated node; small jobs
go straight to a node, then through each gateway in turn (the order alternates), so that the
machine's drifts fall on every path alike. With ``--clients N``, each gateway then takes
``N`` concurrent clients in a closed loop (``?wait=30&result=inline``) for ``--seconds``,
the trees taking turns for ``--rounds`` rounds: tasks/s and p50, medians over the rounds.
Use it to measure a change:

    git archive HEAD~3 src | tar -x -C /tmp/before
    python bench/compare.py --tree before=/tmp/before/src --tree after=src --jobs 200 --clients 32

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
                    config.write_text(GATEWAY_CONFIG + "rate_limit: {enabled: false}\n")
                    env = {"PYTHONPATH": str(Path(tree).resolve())}
                    procs.start(f"gateway-{name}", gateway_argv(config, port, work / f"data-{name}"), env=env)

                    async def up(url: str = url) -> bool:
                        async with http.get(url + "/api/v1/health") as r:
                            return r.status == 200

                    await wait_for(up, f"gateway {name}")
                    procs.start(f"node-{name}", sim_node_argv(node_port, 100_000, max(64, args.clients), gateway=url,
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
                loads = await _concurrent(http, {n: g[0] for n, g in gateways.items()}, photo, args)
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
    if loads:
        print(f"\n| path | tasks/s, {args.clients} clients | p50 | rounds |\n| --- | --- | --- | --- |")
        for name, rounds in loads.items():
            rate = statistics.median(r[0] for r in rounds)
            p50 = statistics.median(r[1] for r in rounds)
            figures[f"{name}_tasks_per_s"], figures[f"{name}_p50_ms"] = rate, p50
            print(f"| through `{name}` (`?wait=30&result=inline`) | {rate:.0f} | {p50:.1f} ms | "
                  + ", ".join(f"{r[0]:.0f}" for r in rounds) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


async def _concurrent(http: aiohttp.ClientSession, urls: dict[str, str], photo: bytes,
                      args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    """``args.clients`` clients in a closed loop on each gateway in turn, ``args.rounds`` times
    (the order alternating): per round, tasks/s and p50 ms."""
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in urls}
    if args.clients <= 0:
        return results
    for i in range(args.rounds + 1):  # round 0 warms every path
        for name in (list(urls) if i % 2 == 0 else list(reversed(urls))):
            rate, p50 = await _closed_loop(http, urls[name], photo, args.clients, args.seconds)
            if i > 0:
                results[name].append((rate, p50))
    return results


async def _closed_loop(http: aiohttp.ClientSession, url: str, photo: bytes, clients: int,
                       seconds: float) -> tuple[float, float]:
    deadline = time.monotonic() + seconds
    latencies: list[float] = []

    async def client() -> None:
        for _ in range(100_000):  # bounded; the deadline ends it first
            if time.monotonic() >= deadline:
                return
            form = aiohttp.FormData()
            form.add_field("file", photo, filename="p.jpg", content_type="image/jpeg")
            t = time.perf_counter()
            async with http.post(url + "/api/v1/enhance?wait=30&result=inline", data=form) as r:
                await r.read()
                if r.status != 200 or r.headers.get("X-Task-Status") != "completed":
                    raise RuntimeError(f"a job did not complete inline: HTTP {r.status}")
            latencies.append((time.perf_counter() - t) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return len(latencies) / (time.perf_counter() - started), statistics.median(latencies)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=SRC",
                        help="a name and a source tree holding the photogate package (repeat)")
    parser.add_argument("--jobs", type=int, default=100, help="small jobs per path (bounded)")
    parser.add_argument("--clients", type=int, default=0, help="concurrent clients of the closed loop (0: none)")
    parser.add_argument("--seconds", type=float, default=3.0, help="each closed-loop measurement (seconds)")
    parser.add_argument("--rounds", type=int, default=3, help="closed-loop rounds, the trees taking turns")
    parser.add_argument("--json", help="also write the figures to this file")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
