#!/usr/bin/env python3
"""Scheduling benchmark: photogate's strategies against nginx and HAProxy on one fleet.

Starts a fleet of simulated nodes (``gpunode --simulate``: each job takes
megapixels / speed seconds; like a real node, a simulated one reports in /health only the
throughput it has measured, nothing before its first job), replays one open-loop arrival
schedule per load level (seeded; photo sizes 0.3-12 MP, most 1-4 MP) against each system,
``--runs`` times (the systems interleaved run by run), and prints for each system the median
and the min-max over the runs of mean/p50/p95/p99 latency and makespan, next to a reference
computed offline from the same schedule with exact sizes and speeds and no network cost: the
better, metric by metric, of earliest-finish dispatch at arrival and a central FIFO queue
handing the head job to the fastest free node.

Every baseline knows the speeds: nginx and HAProxy get ``weight`` proportional to each
node's speed, and photogate ``weighted`` the same weights. A job that fails, or that the
time limit cuts off, counts as an infinite latency (so a percentile that reaches it is
infinite) and is counted in the table.

    python bench/scheduling.py                      # speeds 1 2 4, loads 0.5 0.7 0.9, 3 runs
    python bench/scheduling.py --time-scale 4 --jobs 120 --systems fastest,haproxy-queue

Latency is from the scheduled arrival to the last byte of the result: photogate is asked
with ``POST /api/v1/enhance?wait=`` then ``GET /download``; the proxies forward the
node's ``POST /v1/enhance`` and answer with the image. Loopback only; bounded in count
and time.
"""

from __future__ import annotations

import argparse
import asyncio
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import (
    NODE_TOKEN,
    SECRET,
    Procs,
    ensure_binary,
    free_port,
    gateway_argv,
    haproxy_conf,
    jpeg,
    nginx_conf,
    sim_node_argv,
    speed_weights,
    wait_for,
)

PHOTOGATE_STRATEGIES = ("round_robin", "least_busy", "weighted", "fastest")
#: Not run unless named: ``fastest`` without pipelining (late binding only), to compare.
VARIANTS = {"fastest-late": ("fastest", {"pipeline_max": 0})}
PROXIES = ("nginx", "haproxy", "haproxy-queue")
LABELS = {"fastest-late": "photogate fastest, pipeline_max 0",
          "nginx": "nginx least_conn, weight", "haproxy": "haproxy leastconn, weight",
          "haproxy-queue": "haproxy leastconn, weight, maxconn 1", "weighted": "photogate weighted (same weights)"}
STATS = ("mean", "p50", "p95", "p99", "p99_ratio", "makespan")


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
    """Latencies of every job offered: a failed or cut-off one is ``math.inf``."""
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]

    done = sum(1 for x in ordered if math.isfinite(x))
    return {"completed": done, "mean": statistics.fmean(ordered), "p50": pct(50), "p95": pct(95),
            "p99": pct(99), "makespan": last - first if done == len(ordered) else math.inf}


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
            self._cache[key] = jpeg(width, height, (90, 120, 150), quality=30)
        return self._cache[key]


Send = Callable[[aiohttp.ClientSession, Job, bytes], Awaitable[bool]]


async def replay(jobs: list[Job], photos: Photos, send: Send, time_limit: float) -> dict[str, float]:
    """Every job's latency; a failed job and one the time limit cut off count as infinite."""
    loop = asyncio.get_running_loop()
    latency: dict[int, float] = {}  # job index -> seconds, math.inf if it failed
    ends: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=time_limit)) as http:
        t0 = loop.time() + 0.5

        async def one(job: Job) -> None:
            body = photos.get(job.width, job.height)
            await asyncio.sleep(max(0.0, t0 + job.arrival - loop.time()))
            try:
                ok = await send(http, job, body)
            except (TimeoutError, aiohttp.ClientError):
                ok = False
            now = loop.time()
            latency[job.index] = now - (t0 + job.arrival) if ok else math.inf
            if ok:
                ends.append(now - t0)

        for job in jobs:  # make the photos before the clock starts
            photos.get(job.width, job.height)
        try:
            await asyncio.wait_for(asyncio.gather(*(one(j) for j in jobs)), time_limit)
        except TimeoutError:
            pass
    cut_off = len(jobs) - len(latency)
    failed = sum(1 for x in latency.values() if math.isinf(x))
    result = _metrics([*latency.values(), *[math.inf] * cut_off], jobs[0].arrival, max(ends, default=math.inf))
    result.update(failed=failed, cut_off=cut_off)
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
    weights = speed_weights(speeds)
    workdir.mkdir(parents=True, exist_ok=True)
    procs = Procs(workdir)
    node_ports = [free_port() for _ in speeds]
    try:
        async with aiohttp.ClientSession() as http:
            if system in PHOTOGATE_STRATEGIES or system in VARIANTS:
                port = free_port()
                url = f"http://127.0.0.1:{port}"
                config = workdir / "gateway.yaml"
                # The nodes register one by one below, so GPU-00(i+1) runs at speeds[i].
                strategy, options = VARIANTS.get(system, (system, {}))
                if system == "weighted":
                    options = {"weights": {f"GPU-{i + 1:03d}": w for i, w in enumerate(weights)}}
                config.write_text(f"webhook: {{secret: {SECRET}, allowed_node_networks: [127.0.0.0/8]}}\n"
                                  f"balancer: {{strategy: {strategy}, options: {json.dumps(options)}}}\n"
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
                    conf = nginx_conf(workdir, port, node_ports, weights)
                    procs.start("nginx", [binary, "-p", str(workdir), "-c", str(conf)])
                else:
                    binary = ensure_binary("haproxy", "haproxy")
                    if binary is None:
                        return {"skipped": "haproxy not installed"}  # type: ignore[dict-item]
                    conf = haproxy_conf(workdir, port, node_ports, 1 if system == "haproxy-queue" else None, weights)
                    procs.start(system, [binary, "-db", "-f", str(conf)])

                async def proxy_up() -> bool:
                    async with http.get(url + "/health") as r:
                        return r.status == 200

                await wait_for(proxy_up, system)
                send = proxy_send(url)
        return await replay(jobs, photos, send, time_limit)
    finally:
        procs.stop()


def summarize(runs: list[dict[str, float]], ref: dict[str, float]) -> dict[str, object]:
    """Median and min-max over the runs of each statistic; jobs completed, failed, cut off."""
    for m in runs:
        m["p99_ratio"] = m["p99"] / ref["p99"]
    out: dict[str, object] = {"runs": len(runs), "completed_min": min(m["completed"] for m in runs),
                              "failed": sum(m["failed"] for m in runs), "cut_off": sum(m["cut_off"] for m in runs)}
    for key in STATS:
        values = sorted(m[key] for m in runs)
        out[key] = {"median": statistics.median(values), "min": values[0], "max": values[-1]}
    return out


def _num(x: float, digits: int) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "inf"


def _cell(stat: dict[str, float], digits: int = 2) -> str:
    """``median (min-max)``."""
    return f"{_num(stat['median'], digits)} ({_num(stat['min'], digits)}–{_num(stat['max'], digits)})"


HEADER = ("| system | load | runs | completed (worst run) | failed + cut off (all runs) | mean s | p50 s | p95 s "
          "| p99 s | p99 / ref | makespan s |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def fmt_ref(load: float, ref: dict[str, float], jobs: int) -> str:
    return (f"| reference (offline) | {load:.0%} | – | {jobs} | 0 | {ref['mean']:.2f} | {ref['p50']:.2f} "
            f"| {ref['p95']:.2f} | {ref['p99']:.2f} | 1.00 | {ref['makespan']:.1f} |")


def fmt_row(name: str, load: float, s: dict[str, object], jobs: int) -> str:
    if "skipped" in s:
        return f"| {name} | {load:.0%} | skipped: {s['skipped']} | | | | | | | | |"
    stat = {k: s[k] for k in STATS}
    return (f"| {name} | {load:.0%} | {s['runs']} | {s['completed_min']} / {jobs} | {s['failed']} + {s['cut_off']} "
            f"| {_cell(stat['mean'])} | {_cell(stat['p50'])} | {_cell(stat['p95'])} | {_cell(stat['p99'])} "  # type: ignore[arg-type]
            f"| {_cell(stat['p99_ratio'])} | {_cell(stat['makespan'], 1)} |")  # type: ignore[arg-type]


async def main_async(args: argparse.Namespace) -> int:
    speeds = [s * args.time_scale for s in args.speeds]
    systems = args.systems.split(",")
    unknown = set(systems) - set(PHOTOGATE_STRATEGIES) - set(VARIANTS) - set(PROXIES)
    if unknown:
        known = PHOTOGATE_STRATEGIES + tuple(VARIANTS) + PROXIES
        print(f"unknown systems: {sorted(unknown)}; known: {', '.join(known)}")
        return 2
    if args.runs < 1:
        print("--runs must be at least 1")
        return 2
    photos = Photos()
    results: dict[str, dict[str, object]] = {}
    print(f"fleet: {len(speeds)} simulated nodes at {', '.join(f'{s:g}' for s in speeds)} MP/s, 1 slot each, "
          f"weights {':'.join(map(str, speed_weights(speeds)))}; {args.jobs} jobs per run; seed {args.seed}; "
          f"{args.runs} runs per system, median (min–max)\n")
    lines = [HEADER]
    with tempfile.TemporaryDirectory(prefix="photogate-bench-") as tmp:
        for load in args.loads:
            jobs = make_schedule(args.seed, args.jobs, load, speeds)
            ref = reference(jobs, speeds)
            limit = jobs[-1].arrival * 3 + 120
            runs: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
            skipped: dict[str, str] = {}
            for run in range(args.runs):  # interleaved: the machine's drifts hit every system
                for system in systems:
                    if system in skipped:
                        continue
                    m = await run_system(system, jobs, speeds, photos, Path(tmp) / f"{system}-{load}-{run}", limit)
                    if "skipped" in m:
                        skipped[system] = str(m["skipped"])
                        continue
                    runs[system].append(m)
                    print(f"  load {load:.0%} run {run + 1}/{args.runs} {system}: p99 {_num(m['p99'], 2)} s, "
                          f"completed {m['completed']}, failed {m['failed']}, cut off {m['cut_off']}",
                          file=sys.stderr, flush=True)
            lines.append(fmt_ref(load, ref, args.jobs))
            results[f"{load}"] = {"reference": ref}
            for system in systems:
                summary = {"skipped": skipped[system]} if system in skipped else summarize(runs[system], ref)
                results[f"{load}"][system] = {"summary": summary, "runs": runs[system]}  # type: ignore[index]
                lines.append(fmt_row(LABELS.get(system, f"photogate {system}"), load, summary, args.jobs))
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"speeds": speeds, "jobs": args.jobs, "seed": args.seed,
                                               "runs": args.runs, "results": results}, indent=2, default=str))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speeds", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="MP/s of each node")
    parser.add_argument("--time-scale", type=float, default=1.0,
                        help="multiply every speed (and so divide every time) to finish sooner")
    parser.add_argument("--loads", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    parser.add_argument("--jobs", type=int, default=200, help="jobs per run (bounded)")
    parser.add_argument("--runs", type=int, default=3, help="runs per system and load (median and min-max shown)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--systems", default=",".join(PHOTOGATE_STRATEGIES + PROXIES))
    parser.add_argument("--json", help="also write the figures to this file")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
