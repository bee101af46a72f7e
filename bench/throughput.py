#!/usr/bin/env python3
"""Throughput at GPU speed (issue 17): photogate vs a bare aiohttp pass-through vs HAProxy.

Closed loops of clients (one aiohttp ``ClientSession`` in this process drives every system),
each sending one small photo (a 256x192 JPEG), waiting for the whole answer, sending the next.
Every measurement runs ``--seconds`` after a short warm-up; the systems take turns within each
of ``--rounds`` rounds (the order rotates), and the tables give medians over the rounds.

1. Four instant nodes (``gpunode --simulate --speed 100000 --slots 8``), ``--clients`` 32 and 1:
   photogate (SQLite) ``POST /api/v1/enhance?wait=30&result=inline`` (multipart); the bare
   pass-through (``throughput_procs.BARE_APP``, multipart, least outstanding over the nodes);
   HAProxy ``leastconn`` straight to the nodes' ``POST /v1/enhance`` (raw body, as a gateway
   sends it). Ratios photogate / bare: median of the rounds' ratios.
2. Short GPU jobs: one node, ``--slots 1``, ``--speed`` set so the photo takes ``--job-ms``;
   8 clients; photogate (``fastest``, which pipelines short jobs: the node holds the next
   photo while it runs one) and HAProxy vs the ideal, 1 / the node's measured job time; and
   photogate ``fastest`` with ``pipeline_max: 0`` (late binding), the same gateway without it.
3. photogate on Redis (one gateway; then two gateway processes on one Redis, the clients
   alternating between them) vs photogate on SQLite, four instant nodes, 32 clients.

    python bench/throughput.py                           # all sections, 10 s x 3 rounds
    python bench/throughput.py --seconds 2 --rounds 1    # smoke run
    python bench/throughput.py --sections 1 --clients 32,8,1

Needs haproxy (section 1 and 2) and redis-server (section 3). Rate limits off. Loopback only;
every loop is bounded in time and in count; every process started is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import NODE_TOKEN, Procs, ensure_binary
from throughput_procs import Launcher, Setup, cpu_seconds, listening_ports, tree_pids

INSTANT = 100_000.0  # MP/s per slot: a job takes microseconds
PHOTO_SIZE = (256, 192)

Send = Callable[[aiohttp.ClientSession, str, bytes], Awaitable[bool]]


def photo() -> bytes:
    """A 256x192 JPEG that looks like a photo to an encoder (gradients and mild noise)."""
    w, h = PHOTO_SIZE
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(17)
    rgb = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h) + 64], axis=-1)
    rgb += rng.normal(0, 8, rgb.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


async def send_photogate(http: aiohttp.ClientSession, url: str, body: bytes) -> bool:
    form = aiohttp.FormData()
    form.add_field("file", body, filename="p.jpg", content_type="image/jpeg")
    async with http.post(url + "/api/v1/enhance?wait=30&result=inline", data=form) as r:
        data = await r.read()
        return r.status == 200 and r.headers.get("X-Task-Status") == "completed" and len(data) > 0


def send_owned(owners: int) -> Send:
    """``send_photogate`` as one of ``owners`` owners at random (X-Forwarded-For 10.0.0.N through
    a trusted proxy: the open API's owner is the client address)."""
    rng = random.Random(18)

    async def send(http: aiohttp.ClientSession, url: str, body: bytes) -> bool:
        form = aiohttp.FormData()
        form.add_field("file", body, filename="p.jpg", content_type="image/jpeg")
        headers = {"X-Forwarded-For": f"10.0.0.{rng.randrange(owners) + 1}"}
        async with http.post(url + "/api/v1/enhance?wait=30&result=inline", data=form, headers=headers) as r:
            data = await r.read()
            return r.status == 200 and r.headers.get("X-Task-Status") == "completed" and len(data) > 0

    return send


async def send_bare(http: aiohttp.ClientSession, url: str, body: bytes) -> bool:
    form = aiohttp.FormData()
    form.add_field("file", body, filename="p.jpg", content_type="image/jpeg")
    async with http.post(url + "/api/v1/enhance", data=form) as r:
        return r.status == 200 and len(await r.read()) > 0


NODE_HEADERS = {"Authorization": f"Bearer {NODE_TOKEN}", "Content-Type": "image/jpeg"}


async def send_node(http: aiohttp.ClientSession, url: str, body: bytes) -> bool:
    async with http.post(url + "/v1/enhance", data=body, headers=NODE_HEADERS) as r:
        return r.status == 200 and len(await r.read()) > 0


@dataclass
class Target:
    label: str
    setup: Setup
    send: Send


@dataclass
class Run:
    tasks_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    front_cpu_ms: float  # per task: gateway(s) / proxy (and Redis), their child processes too
    front_own_cpu_ms: float  # per task: the gateway / proxy processes alone (no children)
    node_cpu_ms: float
    client_cpu_ms: float


def pct(sorted_ms: list[float], p: float) -> float:
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, int(p / 100 * len(sorted_ms)))]


async def closed_loop(http: aiohttp.ClientSession, target: Target, body: bytes, clients: int,
                      seconds: float, max_requests: int) -> tuple[list[float], int, float]:
    """(latencies in ms of the good answers, errors, elapsed s): ``clients`` loops until
    ``seconds`` pass or ``max_requests`` have been sent; the last answers are waited for."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    deadline = time.monotonic() + seconds

    async def client(i: int) -> None:
        nonlocal errors, sent
        url = target.setup.urls[i % len(target.setup.urls)]
        while time.monotonic() < deadline and sent < max_requests:
            sent += 1
            t = time.perf_counter()
            try:
                ok = await target.send(http, url, body)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                ok = False
            if ok:
                latencies.append((time.perf_counter() - t) * 1000)
            else:
                errors += 1
                await asyncio.sleep(0.01)  # no hot loop against a refusing server

    async def all_clients() -> None:
        async with asyncio.TaskGroup() as group:
            for i in range(clients):
                group.create_task(client(i))

    t0 = time.perf_counter()
    await asyncio.wait_for(all_clients(), seconds + 90)
    return latencies, errors, time.perf_counter() - t0


async def measure(target: Target, body: bytes, clients: int, args: argparse.Namespace) -> Run:
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as http:
        await closed_loop(http, target, body, clients, args.warmup, args.max_requests)
        front = [p for pid in target.setup.front for p in tree_pids(pid)]
        own = target.setup.front
        cpu0 = (cpu_seconds(front), cpu_seconds(target.setup.nodes), resource.getrusage(resource.RUSAGE_SELF),
                cpu_seconds(own))
        latencies, errors, elapsed = await closed_loop(http, target, body, clients, args.seconds, args.max_requests)
        me = resource.getrusage(resource.RUSAGE_SELF)
        n = max(1, len(latencies))
        client_cpu = me.ru_utime + me.ru_stime - cpu0[2].ru_utime - cpu0[2].ru_stime
        run = Run(len(latencies) / elapsed, 0.0, 0.0, errors,
                  (cpu_seconds(front) - cpu0[0]) * 1000 / n, (cpu_seconds(own) - cpu0[3]) * 1000 / n,
                  (cpu_seconds(target.setup.nodes) - cpu0[1]) * 1000 / n, client_cpu * 1000 / n)
    latencies.sort()
    run.p50_ms, run.p99_ms = pct(latencies, 50), pct(latencies, 99)
    return run


async def rounds(targets: list[Target], body: bytes, clients: int, args: argparse.Namespace
                 ) -> dict[str, list[Run]]:
    """Every target measured once per round; the order rotates so none always goes first."""
    runs: dict[str, list[Run]] = {t.label: [] for t in targets}
    for r in range(args.rounds):
        for target in targets[r % len(targets):] + targets[:r % len(targets)]:
            run = await measure(target, body, clients, args)
            runs[target.label].append(run)
            print(f"  round {r + 1}, {clients} clients, {target.label}: {run.tasks_per_s:,.0f} tasks/s, "
                  f"p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms, {run.errors} errors", file=sys.stderr)
    return runs


def med(runs: list[Run], attr: str) -> float:
    return float(statistics.median(getattr(r, attr) for r in runs))


def ratio(a: list[Run], b: list[Run], attr: str) -> float:
    """Median over the rounds of a's figure / b's figure in the same round."""
    return float(statistics.median(getattr(x, attr) / getattr(y, attr) for x, y in zip(a, b)))


def cell(runs: list[Run]) -> str:
    errors = sum(r.errors for r in runs)
    return (f"{med(runs, 'tasks_per_s'):,.0f} tasks/s (p50 {med(runs, 'p50_ms'):.1f} ms, "
            f"p99 {med(runs, 'p99_ms'):.1f} ms{f', {errors} errors' if errors else ''})")


def cpu_notes(runs: dict[str, list[Run]], what: str) -> list[str]:
    return [f"- {what}, {label}: CPU per task {med(rs, 'front_cpu_ms'):.2f} ms in the gateway/proxy "
            f"processes and their children ({med(rs, 'front_own_cpu_ms'):.2f} ms without the children), "
            f"{med(rs, 'node_cpu_ms'):.2f} ms in the nodes, {med(rs, 'client_cpu_ms'):.2f} ms in the client "
            "(medians)" for label, rs in runs.items()]


async def section1(launch: Launcher, haproxy: str, body: bytes, args: argparse.Namespace) -> list[str]:
    pg = await launch.photogate("s1-photogate", 1, 4, INSTANT, 8)
    ports, pids = await launch.nodes("s1-direct", 4, INSTANT, 8, gateway=None)
    bare_url, bare_pid = await launch.bare(ports)
    hap_url, hap_pid = await launch.haproxy(haproxy, ports)
    targets = [Target("photogate", pg, send_photogate),
               Target("bare", Setup("bare", [bare_url], [bare_pid], pids), send_bare),
               Target("haproxy", Setup("haproxy", [hap_url], [hap_pid], pids), send_node)]
    out = ["## 1. Closed loop, small jobs, four instant nodes (`--speed 100000 --slots 8`)", "",
           "| clients | photogate (SQLite) | bare aiohttp pass-through | HAProxy `leastconn` "
           "| photogate / bare, tasks/s | photogate / bare, p50 |",
           "| --- | --- | --- | --- | --- | --- |"]
    notes = []
    for clients in args.clients:
        runs = await rounds(targets, body, clients, args)
        out.append(f"| {clients} | {cell(runs['photogate'])} | {cell(runs['bare'])} | {cell(runs['haproxy'])} "
                   f"| {ratio(runs['photogate'], runs['bare'], 'tasks_per_s'):.2f}x "
                   f"| {ratio(runs['photogate'], runs['bare'], 'p50_ms'):.2f}x |")
        notes += cpu_notes(runs, f"{clients} clients")
    return out + [""] + notes


async def job_time(http: aiohttp.ClientSession, url: str, body: bytes, jobs: int = 30) -> tuple[float, float]:
    """Median (node-measured inference ms, client round trip ms) of ``jobs`` direct jobs, one at a time."""
    infer, trip = [], []
    for _ in range(jobs):
        t = time.perf_counter()
        async with http.post(url + "/v1/enhance", data=body, headers=NODE_HEADERS) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"a direct job failed: {r.status}")
            infer.append(float(r.headers["X-Inference-Ms"]))
        trip.append((time.perf_counter() - t) * 1000)
    return statistics.median(infer), statistics.median(trip)


#: Section 2's gateways (YAML appended to their config): the strategy that pipelines, and the same without.
FASTEST = "balancer: {strategy: fastest}\n"
LATE_BINDING = "balancer: {strategy: fastest, options: {pipeline_max: 0}}\n"


async def most_held(http: aiohttp.ClientSession, setup: Setup) -> str:
    """The most jobs the setup's node held at once (a simulated node's /health), as text."""
    for port in listening_ports(setup.nodes[0]):
        async with http.get(f"http://127.0.0.1:{port}/health") as r:
            if r.status == 200:
                return str((await r.json()).get("max_inflight", "?"))
    return "?"


async def section2(launch: Launcher, haproxy: str, body: bytes, args: argparse.Namespace) -> list[str]:
    megapixels = PHOTO_SIZE[0] * PHOTO_SIZE[1] / 1e6
    speed = megapixels / (args.job_ms / 1000)  # simulate.py: a job holds its slot megapixels / speed s
    pg = await launch.photogate("s2-photogate", 1, 1, speed, 1, storage=FASTEST)
    late = await launch.photogate("s2-late", 1, 1, speed, 1, storage=LATE_BINDING)
    ports, pids = await launch.nodes("s2-direct", 1, speed, 1, gateway=None)
    hap_url, hap_pid = await launch.haproxy(haproxy, ports)
    infer_ms, trip_ms = await job_time(launch.http, f"http://127.0.0.1:{ports[0]}", body)
    ideal = 1000 / infer_ms
    targets = [Target("photogate", pg, send_photogate),
               Target("haproxy", Setup("haproxy", [hap_url], [hap_pid], pids), send_node),
               Target("late", late, send_photogate)]
    runs = await rounds(targets, body, args.short_clients, args)
    out = [f"## 2. Short GPU jobs: one node, `--slots 1 --speed {speed:.4g}` ({megapixels:.4f} MP: "
           f"{args.job_ms:g} ms nominal), {args.short_clients} clients", "",
           f"Direct job time, measured (median of 30, one at a time): {infer_ms:.2f} ms inference "
           f"(the node's X-Inference-Ms), {trip_ms:.2f} ms round trip; ideal = 1 / inference time.", "",
           "| system | tasks/s | p50 ms | p99 ms | errors | ratio to ideal |", "| --- | --- | --- | --- | --- | --- |",
           f"| ideal (GPU always busy) | {ideal:.1f} | {infer_ms:.1f} | - | - | 1.00x |"]
    for label, name in (("photogate", "photogate `fastest` (pipelined)"), ("haproxy", "HAProxy `leastconn`"),
                        ("late", "photogate `fastest`, `pipeline_max: 0`")):
        rs = runs[label]
        out.append(f"| {name} | {med(rs, 'tasks_per_s'):.1f} | {med(rs, 'p50_ms'):.1f} | {med(rs, 'p99_ms'):.1f} "
                   f"| {sum(r.errors for r in rs)} | {med(rs, 'tasks_per_s') / ideal:.3f}x |")
    held = [await most_held(launch.http, setup) for setup in (pg, late)]
    return out + ["", f"Most jobs the node held at once: {held[0]} behind the pipelined photogate, "
                  f"{held[1]} behind the late-binding one.", ""] + cpu_notes(runs, f"{args.short_clients} clients")


async def section3(launch: Launcher, redis_bin: str, body: bytes, args: argparse.Namespace) -> list[str]:
    redis_url, redis_pid = await launch.redis(redis_bin)
    sqlite = await launch.photogate("s3-sqlite", 1, 4, INSTANT, 8)
    redis1 = await launch.photogate("s3-redis1", 1, 4, INSTANT, 8,
                                    f"storage: {{backend: redis, redis_url: '{redis_url}', redis_prefix: 'r1:'}}\n")
    redis2 = await launch.photogate("s3-redis2", 2, 4, INSTANT, 8,
                                    f"storage: {{backend: redis, redis_url: '{redis_url}', redis_prefix: 'r2:'}}\n")
    redis1.front.append(redis_pid)
    redis2.front.append(redis_pid)
    targets = [Target("sqlite", sqlite, send_photogate), Target("redis1", redis1, send_photogate),
               Target("redis2", redis2, send_photogate)]
    runs = await rounds(targets, body, args.redis_clients, args)
    cores = os.cpu_count()
    out = [f"## 3. Redis vs SQLite, four instant nodes, {args.redis_clients} clients", "",
           f"All processes (client, gateways, Redis, nodes) share this machine's {cores} CPU cores; nothing is "
           "pinned. With two gateways, client i sends to gateway i mod 2; nodes registered with the first "
           "and serve both. Redis: one redis-server, no persistence; each setup its own key prefix.", "",
           "| setup | gateways | result | ratio |", "| --- | --- | --- | --- |",
           f"| SQLite | 1 | {cell(runs['sqlite'])} | 1.00x |",
           f"| Redis | 1 | {cell(runs['redis1'])} | {ratio(runs['redis1'], runs['sqlite'], 'tasks_per_s'):.2f}x "
           "of SQLite |",
           f"| Redis | 2 | {cell(runs['redis2'])} | {ratio(runs['redis2'], runs['redis1'], 'tasks_per_s'):.2f}x "
           "of Redis with 1 gateway |"]
    return out + [""] + cpu_notes(runs, f"{args.redis_clients} clients (Redis CPU counted with the gateways)") + [
        ceiling(runs, cores or 1, "redis2", "redis1")]


async def section4(launch: Launcher, _binary: str, body: bytes, args: argparse.Namespace) -> list[str]:
    """Issue 18: what fair share costs. The same gateway (SQLite, four instant nodes) with
    ``access.fair_share`` on and off; each upload from one of as many owners as clients
    (X-Forwarded-For through a trusted proxy), so the fair queue has that many owners."""
    proxies = "server: {trusted_proxies: [127.0.0.1]}\n"
    fair = await launch.photogate("s4-fair", 1, 4, INSTANT, 8, proxies + "access: {fair_share: true}\n")
    fifo = await launch.photogate("s4-fifo", 1, 4, INSTANT, 8, proxies + "access: {fair_share: false}\n")
    send = send_owned(args.redis_clients)
    targets = [Target("fair", fair, send), Target("fifo", fifo, send)]
    runs = await rounds(targets, body, args.redis_clients, args)
    return [f"## 4. Fair share on vs off, four instant nodes, {args.redis_clients} clients and owners", "",
            "| access.fair_share | result | ratio |", "| --- | --- | --- |",
            f"| false (first come, first served) | {cell(runs['fifo'])} | 1.00x |",
            f"| true (deficit round robin) | {cell(runs['fair'])} | "
            f"{ratio(runs['fair'], runs['fifo'], 'tasks_per_s'):.2f}x |", ""] + cpu_notes(runs, "fair share")


def ceiling(runs: dict[str, list[Run]], cores: int, label: str, base: str) -> str:
    """What this machine's cores allow ``label`` at most: every process's CPU per task together
    (client and nodes included), against ``base``'s measured tasks/s."""
    rs = runs[label]
    per_task = med(rs, "front_cpu_ms") + med(rs, "node_cpu_ms") + med(rs, "client_cpu_ms")
    most = cores * 1000 / per_task if per_task > 0 else float("inf")
    return (f"- ceiling: {label} spends {per_task:.2f} ms of CPU per task in all its processes, so {cores} "
            f"cores allow it at most {most:,.0f} tasks/s, {most / med(runs[base], 'tasks_per_s'):.2f}x {base}'s "
            "measured figure, with nothing else running on the machine")


def machine_info(body: bytes, args: argparse.Namespace) -> list[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    try:
        import uvloop  # noqa: F401
        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    return [f"machine: {os.cpu_count()} cores ({cpu}), load average {os.getloadavg()[0]:.2f} at the end; "
            f"{platform.system()} {platform.release()}; Python {platform.python_version()}, aiohttp "
            f"{aiohttp.__version__}; client event loop {loop}",
            f"photo: {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} JPEG, {len(body):,} B; {args.seconds:g} s per measurement "
            f"after {args.warmup:g} s of warm-up, {args.rounds} interleaved rounds, medians; gateways and nodes "
            f"log at {args.log_level}; rate limits off", ""]


async def run(args: argparse.Namespace) -> int:
    haproxy = ensure_binary("haproxy", "haproxy")
    redis_bin = shutil.which("redis-server") or ensure_binary("redis-server", "redis-server")
    if (1 in args.sections or 2 in args.sections) and not haproxy:
        print("sections 1 and 2 need haproxy (apt-get install haproxy)", file=sys.stderr)
        return 2
    if 3 in args.sections and not redis_bin:
        print("section 3 needs redis-server (apt-get install redis-server)", file=sys.stderr)
        return 2
    body = photo()
    out: list[str] = []
    with tempfile.TemporaryDirectory(prefix="photogate-throughput-") as tmp:
        procs = Procs(Path(tmp))
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
                launch = Launcher(procs, http, args.log_level)
                for number, section in ((1, section1), (2, section2), (3, section3), (4, section4)):
                    if number in args.sections:
                        binary = (redis_bin if number == 3 else haproxy) or ""
                        out += await section(launch, binary, body, args) + [""]
                        procs.stop()  # each section on a machine with only its own processes
        finally:
            procs.stop()
    print("\n".join(machine_info(body, args) + out))
    return 0


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each measurement (default %(default)s)")
    p.add_argument("--warmup", type=float, default=None, help="warm-up before each measurement (default: "
                   "a quarter of --seconds, at most 2)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians over them (default %(default)s)")
    p.add_argument("--sections", type=int_list, default=[1, 2, 3], help="which sections, e.g. 1,3 (default 1,2,3; "
                   "4: fair share on vs off)")
    p.add_argument("--clients", type=int_list, default=[32, 1], help="section 1's client counts (default 32,1)")
    p.add_argument("--short-clients", type=int, default=8, help="section 2's clients (default %(default)s)")
    p.add_argument("--redis-clients", type=int, default=32, help="section 3's clients (default %(default)s)")
    p.add_argument("--job-ms", type=float, default=20.0, help="section 2's job time (default %(default)s)")
    p.add_argument("--max-requests", type=int, default=1_000_000, help="bound on requests per measurement")
    p.add_argument("--log-level", default="warning", choices=("info", "warning"),
                   help="gateways' and nodes' log level (default %(default)s, as the other benchmarks)")
    args = p.parse_args(argv)
    if args.warmup is None:
        args.warmup = min(2.0, args.seconds / 4)
    if not set(args.sections) <= {1, 2, 3, 4} or args.rounds < 1 or args.seconds <= 0:
        p.error("--sections takes 1, 2, 3, 4; --rounds >= 1; --seconds > 0")
    return args


def main() -> int:
    args = parse_args()

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)  # clean up the children as on Ctrl-C
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        print("interrupted: every process started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
