#!/usr/bin/env python3
"""gpunode ``/health`` latency while the node is idle and while it runs an inference.

The property (health answers during inference: inference never blocks the event loop) is
asserted by ``tests/node/test_gpunode_http.py`` with states and a generous guard; the
figures live here, where a loaded machine makes a slower number, not a failed test.

A real ``gpunode`` process (standalone, ``--token``, ``--port 0``: it reports the port it bound)
runs the bundled model; ``/health`` is asked every ``--interval`` s, one request at a time,
first while idle, then while ``--jobs`` photos are enhanced one after another. Example::

    python bench/health_latency.py --size 640x480 --jobs 2

Runs only on loopback; contacts nothing else.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from node_throughput import gpunode_command, test_photo  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def reported_port(log: Path, proc: subprocess.Popen[bytes], timeout: float = 120) -> int:
    """The port from gpunode's ``starting`` log line (JSON on stderr)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gpunode exited during start-up: {log.read_text()[-2000:]}")
        for line in log.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == "starting":
                return int(record["port"])
        await asyncio.sleep(0.05)
    raise SystemExit("gpunode did not report its port")


async def sample(http: aiohttp.ClientSession, url: str, interval: float, until: asyncio.Future[object] | None,
                 count: int) -> list[float]:
    """Latencies (ms) of sequential /health requests: ``count`` of them, or until ``until`` is done
    (only answers that said ``busy`` then)."""
    out: list[float] = []
    while (until is None and len(out) < count) or (until is not None and not until.done()):
        t0 = time.perf_counter()
        async with http.get(f"{url}/health") as resp:
            data = await resp.json()
        ms = (time.perf_counter() - t0) * 1000
        if until is None or data["busy"] >= 1:
            out.append(ms)
        await asyncio.sleep(interval)
    return out


async def run(url: str, body: bytes, jobs: int, interval: float, idle: int) -> tuple[list[float], list[float], float]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/health") as resp:  # warm the connection
            await resp.read()
        idle_ms = await sample(http, url, interval, None, idle)

        async def enhance() -> None:
            for _ in range(jobs):
                async with http.post(f"{url}/v1/enhance?format=jpeg", data=body,
                                     headers={"Authorization": "Bearer bench", "Content-Type": "image/jpeg"},
                                     timeout=aiohttp.ClientTimeout(total=3600)) as resp:
                    if resp.status != 200:
                        raise SystemExit(f"enhance failed: {resp.status} {await resp.text()}")
                    await resp.read()

        t0 = time.perf_counter()
        job = asyncio.ensure_future(enhance())
        busy_ms = await sample(http, url, interval, job, 0)
        await job
        return idle_ms, busy_ms, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="640x480", help="input image WxH (default %(default)s)")
    ap.add_argument("--jobs", type=int, default=2, help="photos enhanced one after another (default %(default)s)")
    ap.add_argument("--interval", type=float, default=0.05, help="pause between health requests, s")
    ap.add_argument("--idle", type=int, default=50, help="health requests while idle (default %(default)s)")
    ap.add_argument("--cpu", action="store_true", help="force the CPU provider")
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    buf = io.BytesIO()
    test_photo(width, height).save(buf, format="JPEG", quality=92)

    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"health_latency.{os.getpid()}.log"
    cmd = [*gpunode_command(), "--host", "127.0.0.1", "--port", "0", "--token", "bench"]
    if args.cpu:
        cmd.append("--cpu")
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        port = asyncio.run(reported_port(log, proc))
        idle_ms, busy_ms, seconds = asyncio.run(run(f"http://127.0.0.1:{port}", buf.getvalue(), args.jobs,
                                                    args.interval, args.idle))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.unlink(missing_ok=True)
    print(f"input {width}x{height}, {args.jobs} job(s) in {seconds:.1f} s | one /health request every "
          f"{args.interval * 1000:.0f} ms | Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print()
    print("| node | requests | median ms | p95 ms | max ms |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, values in (("idle", idle_ms), ("inference running", busy_ms)):
        if values:
            print(f"| {name} | {len(values)} | {percentile(values, 0.5):.1f} | {percentile(values, 0.95):.1f} | "
                  f"{max(values):.1f} |")
        else:
            print(f"| {name} | 0 | | | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
