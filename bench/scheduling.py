#!/usr/bin/env python3
"""Scheduling benchmark: photogate's strategies against nginx and HAProxy on one fleet.

Starts a fleet of simulated nodes (``gpunode --simulate``: each job takes
megapixels / speed seconds), replays one open-loop arrival schedule per load level
(seeded; photo sizes 0.3-12 MP, most 1-4 MP) against each system, and prints completed
jobs, mean/p50/p95/p99 latency and makespan, next to a reference computed offline from
the same schedule with exact sizes and speeds and no network cost: the better, metric by
metric, of earliest-finish dispatch at arrival and a central FIFO queue handing the head
job to the fastest free node.

    python bench/scheduling.py                      # speeds 1 2 4, loads 0.5 0.7 0.9
    python bench/scheduling.py --time-scale 4 --jobs 120 --systems fastest,haproxy-queue

Latency is from the scheduled arrival to the last byte of the result: photogate is asked
with ``POST /api/v1/enhance?wait=`` then ``GET /download``; the proxies forward the
node's ``POST /v1/enhance`` and answer with the image. Loopback only; bounded in count
and time.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import random
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import (
    NODE_TOKEN,
    SECRET,
    Procs,
    ensure_binary,
    free_port,
    gateway_argv,
    haproxy_conf,
    nginx_conf,
    sim_node_argv,
    wait_for,
)

PHOTOGATE_STRATEGIES = ("round_robin", "least_busy", "weighted", "fastest")
PROXIES = ("nginx", "haproxy", "haproxy-queue")
LABELS = {"nginx": "nginx least_conn", "haproxy": "haproxy leastconn",
          "haproxy-queue": "haproxy leastconn maxconn 1"}


@dataclass(frozen=True)
class Job:
    index: int
    arrival: float
    width: int
    height: int

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


def photo_sizes(rng: random.Random, n: int) -> list[float]:
    """Megapixels: log-normal around 2 MP, clipped to 0.3-12 (most between 1 and 4)."""
    return [min(max(rng.lognormvariate(math.log(2.0), 0.6), 0.3), 12.0) for _ in range(n)]


def make_schedule(seed: int, n: int, load: float, speeds: list[float]) -> list[Job]:
    rng = random.Random(seed)
    sizes = photo_sizes(random.Random(seed + 1), n)
    rate = load * sum(speeds) / statistics.fmean(sizes)  # jobs per second
    jobs, t = [], 0.0
    for i, mp in enumerate(sizes):
        t += rng.expovariate(rate)
        width = max(16, round(math.sqrt(mp * 1e6 * 4 / 3) / 16) * 16)
        height = max(16, round(width * 3 / 4 / 16) * 16)
        jobs.append(Job(i, t, width, height))
    return jobs


# -- the offline reference ---------------------------------------------------------------

def _metrics(latencies: list[float], first: float, last: float) -> dict[str, float]:
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]

    return {"completed": len(ordered), "mean": statistics.fmean(ordered), "p50": pct(50), "p95": pct(95),
            "p99": pct(99), "makespan": last - first}


def simulate_earliest_finish(jobs: list[Job], speeds: list[float]) -> dict[str, float]:
    free = [0.0] * len(speeds)
    lat, last = [], 0.0
    for job in jobs:
        finish, i = min((max(job.arrival, free[i]) + job.megapixels / s, i) for i, s in enumerate(speeds))
        free[i] = finish
        lat.append(finish - job.arrival)
        last = max(last, finish)
    return _metrics(lat, jobs[0].arrival, last)


def simulate_central_fifo(jobs: list[Job], speeds: list[float]) -> dict[str, float]:
    free = [0.0] * len(speeds)
    lat, last = [], 0.0
    for job in jobs:
        start = max(job.arrival, min(free))
        i = max((i for i in range(len(speeds)) if free[i] <= start), key=lambda i: speeds[i])
        free[i] = start + job.megapixels / speeds[i]
        lat.append(free[i] - job.arrival)
        last = max(last, free[i])
    return _metrics(lat, jobs[0].arrival, last)


def reference(jobs: list[Job], speeds: list[float]) -> dict[str, float]:
    a, b = simulate_earliest_finish(jobs, speeds), simulate_central_fifo(jobs, speeds)
    return {k: min(a[k], b[k]) if k != "completed" else a[k] for k in a}


# -- running a schedule ------------------------------------------------------------------

class Photos:
    """Flat JPEGs of the wanted size (cheap to make and to send; nodes read only the header)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int], bytes] = {}

    def get(self, width: int, height: int) -> bytes:
        key = (width, height)
        if key not in self._cache:
            buf = io.BytesIO()
            Image.new("RGB", key, (90, 120, 150)).save(buf, "JPEG", quality=30)
            self._cache[key] = buf.getvalue()
        return self._cache[key]


Send = Callable[[aiohttp.ClientSession, Job, bytes], Awaitable[bool]]


async def replay(jobs: list[Job], photos: Photos, send: Send, time_limit: float) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    ends: list[float] = []
    failures = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=time_limit)) as http:
        t0 = loop.time() + 0.5

        async def one(job: Job) -> None:
            nonlocal failures
            body = photos.get(job.width, job.height)
            await asyncio.sleep(max(0.0, t0 + job.arrival - loop.time()))
            try:
                ok = await send(http, job, body)
            except (TimeoutError, aiohttp.ClientError):
                ok = False
            now = loop.time()
            if ok:
                latencies.append(now - (t0 + job.arrival))
                ends.append(now - t0)
            else:
                failures += 1

        for job in jobs:  # make the photos before the clock starts
            photos.get(job.width, job.height)
        try:
            await asyncio.wait_for(asyncio.gather(*(one(j) for j in jobs)), time_limit)
        except TimeoutError:
            pass
    if not latencies:
        return {"completed": 0, "failed": failures}
    result = _metrics(latencies, jobs[0].arrival, max(ends))
    result["failed"] = failures
    return result


def photogate_send(url: str) -> Send:
    async def send(http: aiohttp.ClientSession, job: Job, body: bytes) -> bool:
        form = aiohttp.FormData()
        form.add_field("file", body, filename=f"{job.index}.jpg", content_type="image/jpeg")
        async with http.post(url + "/api/v1/enhance?wait=300", data=form) as resp:
            status = await resp.json()
        if status.get("status") != "completed":
            return False
        async with http.get(url + status["result_url"]) as resp:
            await resp.read()
            return resp.status == 200

    return send


def proxy_send(url: str) -> Send:
    headers = {"Authorization": f"Bearer {NODE_TOKEN}", "Content-Type": "image/jpeg"}

    async def send(http: aiohttp.ClientSession, job: Job, body: bytes) -> bool:
        async with http.post(url + "/v1/enhance", data=body, headers=headers) as resp:
            await resp.read()
            return resp.status == 200

    return send


async def run_system(system: str, jobs: list[Job], speeds: list[float], photos: Photos, workdir: Path,
                     time_limit: float) -> dict[str, float]:
    workdir.mkdir(parents=True, exist_ok=True)
    procs = Procs(workdir)
    node_ports = [free_port() for _ in speeds]
    try:
        async with aiohttp.ClientSession() as http:
            if system in PHOTOGATE_STRATEGIES:
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                config = workdir / "gateway.yaml"
                config.write_text(f"webhook: {{secret: {SECRET}, allowed_node_networks: [127.0.0.0/8]}}\nbalancer: {{strategy: {system}}}\n"
                                  "health_check: {interval: 2, timeout: 2}\nlogging: {level: warning}\n"
                                  "limits: {max_queue: 100000}\n")
                procs.start("photogate", gateway_argv(config, port, workdir / "data"))

                async def gateway_up() -> bool:
                    async with http.get(url + "/api/v1/health") as r:
                        return r.status == 200

                await wait_for(gateway_up, "photogate")
                # Register in speed order so GPU-001 is the slowest, as in the table.
                for i, (p, s) in enumerate(zip(node_ports, speeds)):
                    procs.start(f"node{i}", sim_node_argv(p, s, 1, gateway=url, state_dir=workdir / f"n{i}"))

                    async def registered(n: int = i + 1) -> bool:
                        async with http.get(url + "/webhook/servers", headers={"X-Webhook-Secret": SECRET}) as r:
                            servers = (await r.json())["data"]["servers"]
                            return sum(1 for x in servers if x["healthy"]) >= n

                    await wait_for(registered, f"node {i} to register")
                send = photogate_send(url)
            else:
                for i, (p, s) in enumerate(zip(node_ports, speeds)):
                    procs.start(f"node{i}", sim_node_argv(p, s, 1, gateway=None, state_dir=workdir / f"n{i}"))
                for p in node_ports:
                    async def node_up(p: int = p) -> bool:
                        async with http.get(f"http://127.0.0.1:{p}/health") as r:
                            return r.status == 200

                    await wait_for(node_up, f"node on {p}")
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                if system == "nginx":
                    binary = ensure_binary("nginx", "nginx-light")
                    if binary is None:
                        return {"skipped": "nginx not installed"}  # type: ignore[dict-item]
                    procs.start("nginx", [binary, "-p", str(workdir), "-c", str(nginx_conf(workdir, port, node_ports))])
                else:
                    binary = ensure_binary("haproxy", "haproxy")
                    if binary is None:
                        return {"skipped": "haproxy not installed"}  # type: ignore[dict-item]
                    conf = haproxy_conf(workdir, port, node_ports, 1 if system == "haproxy-queue" else None)
                    procs.start(system, [binary, "-db", "-f", str(conf)])

                async def proxy_up() -> bool:
                    async with http.get(url + "/health") as r:
                        return r.status == 200

                await wait_for(proxy_up, system)
                send = proxy_send(url)
        return await replay(jobs, photos, send, time_limit)
    finally:
        procs.stop()


def fmt_row(name: str, load: float, m: dict[str, float], ref: dict[str, float] | None) -> str:
    if "skipped" in m:
        return f"| {name} | {load:.0%} | skipped: {m['skipped']} | | | | | | |"
    if not m.get("completed"):
        return f"| {name} | {load:.0%} | 0 (failed {m.get('failed', 0)}) | | | | | | |"
    ratio = f"{m['p99'] / ref['p99']:.2f}" if ref else "1.00"
    done = f"{m['completed']}" + (f" (+{m['failed']} failed)" if m.get("failed") else "")
    return (f"| {name} | {load:.0%} | {done} | {m['mean']:.2f} | {m['p50']:.2f} | {m['p95']:.2f} | {m['p99']:.2f} "
            f"| {ratio} | {m['makespan']:.1f} |")


async def main_async(args: argparse.Namespace) -> int:
    speeds = [s * args.time_scale for s in args.speeds]
    systems = args.systems.split(",")
    unknown = set(systems) - set(PHOTOGATE_STRATEGIES) - set(PROXIES)
    if unknown:
        print(f"unknown systems: {sorted(unknown)}; known: {', '.join(PHOTOGATE_STRATEGIES + PROXIES)}")
        return 2
    photos = Photos()
    results: dict[str, dict[str, dict[str, float]]] = {}
    print(f"fleet: {len(speeds)} simulated nodes at {', '.join(f'{s:g}' for s in speeds)} MP/s, 1 slot each; "
          f"{args.jobs} jobs per run; seed {args.seed}\n")
    print("| system | load | completed | mean s | p50 s | p95 s | p99 s | p99 / ref | makespan s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="photogate-bench-") as tmp:
        for load in args.loads:
            jobs = make_schedule(args.seed, args.jobs, load, speeds)
            ref = reference(jobs, speeds)
            results[f"{load}"] = {"reference": ref}
            print(fmt_row("reference (offline)", load, ref, None), flush=True)
            limit = jobs[-1].arrival * 3 + 120
            for system in systems:
                m = await run_system(system, jobs, speeds, photos, Path(tmp) / f"{system}-{load}", limit)
                results[f"{load}"][system] = m
                name = LABELS.get(system, f"photogate {system}")
                print(fmt_row(name, load, m, ref), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"speeds": speeds, "jobs": args.jobs, "seed": args.seed,
                                               "results": results}, indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speeds", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="MP/s of each node")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="multiply every speed (and so divide every time) to finish sooner")
    parser.add_argument("--loads", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    parser.add_argument("--jobs", type=int, default=200, help="jobs per run (bounded)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--systems", default=",".join(PHOTOGATE_STRATEGIES + PROXIES))
    parser.add_argument("--json", help="also write the figures to this file")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
