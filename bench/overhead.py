#!/usr/bin/env python3
"""Gateway overhead: what photogate costs on top of the node, in one run on one machine.

1. Latency of one small job through photogate (``POST /api/v1/enhance?wait=`` then
   ``GET /download``; and in one request, ``?wait=&result=inline``) vs straight to the same
   node (``POST /v1/enhance``), sequentially and interleaved.
2. ``GET /api/v1/status/{id}`` requests/s with ``wrk -t2 -c64`` over 64 known task ids,
   vs a bare aiohttp app answering a constant JSON of the same size (same run, same wrk).
3. The gateway's peak RSS while 50 clients upload 10 MB photos at once and until all 50
   jobs have finished (sent to the node, result received, checked and stored): sampled
   every 50 ms over the whole run (its own VmHWM, and the VmRSS of it and its image-check
   process together), not only once the uploads are accepted.

    python bench/overhead.py            # needs wrk (installed from Debian when root)

Loopback only; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bombs import memory_kib, tree_rss_kib
from fleet import (
    GATEWAY_CONFIG,
    PY,
    SECRET,
    WRK_SCRIPT,
    Procs,
    ensure_binary,
    free_port,
    gateway_argv,
    jpeg,
    sim_node_argv,
    wait_for,
)

BARE_APP = '''
import sys
from aiohttp import web
body = sys.argv[2].encode()
async def handle(request):
    return web.Response(body=body, content_type="application/json")
app = web.Application()
app.router.add_get("/api/v1/status/{task_id}", handle)
try:
    import uvloop
    runner = uvloop.run
except ImportError:
    runner = None
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None,
            **({"loop": __import__("uvloop").new_event_loop()} if runner else {}))
'''



class PeakRss:
    """The gateway's peak RSS in MiB, sampled every ``period`` s in a thread until stopped:
    the larger of its own VmHWM and the VmRSS of its process tree."""

    def __init__(self, pid: int, period: float = 0.05) -> None:
        self.pid, self.period = pid, period
        self.peak = 0.0
        self.samples = 0
        self._stop = False

    def sample(self) -> float:
        now = max(memory_kib(self.pid)[1], tree_rss_kib(self.pid)) / 1024
        self.peak = max(self.peak, now)
        self.samples += 1
        return now

    def run(self) -> None:
        while not self._stop:
            self.sample()
            time.sleep(self.period)

    def stop(self) -> None:
        self._stop = True


def wrk(binary: str, url: str, script: Path | None, seconds: int) -> float:
    argv = [binary, "-t2", "-c64", f"-d{seconds}s", "--latency"]
    if script:
        argv += ["-s", str(script)]
    out = subprocess.run(argv + [url], capture_output=True, text=True, timeout=seconds + 60,
                         check=False).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"wrk said: {out}")
    return float(match.group(1))


def small_photo() -> bytes:
    return jpeg()


def big_photo(target_bytes: int) -> bytes:
    """A noisy JPEG of about ``target_bytes`` (noise does not compress)."""
    rng = np.random.default_rng(1)
    side = 1000
    while True:
        pixels = rng.integers(0, 256, (side * 3 // 4, side, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=95)
        if buf.tell() >= target_bytes:
            return buf.getvalue()
        side = int(side * (target_bytes / buf.tell()) ** 0.5) + 16


async def wait_jobs(http: aiohttp.ClientSession, url: str, ids: list[str], deadline: float) -> dict[str, str]:
    """Poll until every task is completed or failed (or ``deadline`` s pass); their statuses."""
    finals: dict[str, str] = {}
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        for task_id in ids:
            if finals.get(task_id) not in ("completed", "failed"):
                async with http.get(f"{url}/api/v1/status/{task_id}") as r:
                    finals[task_id] = (await r.json())["status"]
        if all(finals.get(t) in ("completed", "failed") for t in ids):
            break
        await asyncio.sleep(0.2)
    return finals


async def run(args: argparse.Namespace) -> int:
    wrk_bin = ensure_binary("wrk", "wrk")
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="photogate-overhead-") as tmp:
        work = Path(tmp)
        procs = Procs(work)
        port, node_port, bare_port = free_port(), free_port(), free_port()
        url = f"http://127.0.0.1:{port}"
        config = work / "gateway.yaml"
        config.write_text(GATEWAY_CONFIG + "limits: {max_upload_bytes: 16777216}\n")
        gateway = procs.start("photogate", gateway_argv(config, port, work / "data"))
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                async def up() -> bool:
                    async with http.get(url + "/api/v1/health") as r:
                        return r.status == 200

                await wait_for(up, "photogate")
                procs.start("node", sim_node_argv(node_port, 100_000, 64, gateway=url, state_dir=work / "n"))

                async def registered() -> bool:
                    async with http.get(url + "/webhook/servers", headers={"X-Webhook-Secret": SECRET}) as r:
                        return (await r.json())["data"]["healthy_servers"] == 1

                await wait_for(registered, "the node to register")
                token = sqlite3.connect(work / "data" / "photogate.db").execute(
                    "SELECT node_token FROM nodes").fetchone()[0]

                # 1. one small job, sequentially, through photogate and direct.
                photo = small_photo()

                async def via_gateway() -> dict:
                    form = aiohttp.FormData()
                    form.add_field("file", photo, filename="p.jpg", content_type="image/jpeg")
                    async with http.post(url + "/api/v1/enhance?wait=30", data=form) as r:
                        status = await r.json()
                    async with http.get(url + status["result_url"]) as r:
                        await r.read()
                    return status

                async def via_gateway_inline() -> str:
                    form = aiohttp.FormData()
                    form.add_field("file", photo, filename="p.jpg", content_type="image/jpeg")
                    async with http.post(url + "/api/v1/enhance?wait=30&result=inline", data=form) as r:
                        await r.read()
                        return r.headers.get("X-Task-Status", "")

                async def direct() -> None:
                    async with http.post(f"http://127.0.0.1:{node_port}/v1/enhance", data=photo,
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "image/jpeg"}) as r:
                        await r.read()

                gw_ms, inline_ms, direct_ms = [], [], []
                for _ in range(10):  # warm every path
                    await via_gateway()
                    await via_gateway_inline()
                    await direct()
                for _ in range(args.jobs):  # interleaved, so that the machine's drifts hit all three
                    t = time.perf_counter()
                    await direct()
                    direct_ms.append((time.perf_counter() - t) * 1000)
                    t = time.perf_counter()
                    status = await via_gateway()
                    if status.get("status") != "completed":
                        raise RuntimeError(f"a job through photogate did not complete: {status}")
                    gw_ms.append((time.perf_counter() - t) * 1000)
                    t = time.perf_counter()
                    if await via_gateway_inline() != "completed":
                        raise RuntimeError("a job through photogate (result=inline) did not complete")
                    inline_ms.append((time.perf_counter() - t) * 1000)
                med_gw, med_direct = statistics.median(gw_ms), statistics.median(direct_ms)
                med_inline = statistics.median(inline_ms)
                rows += [("small job, straight to the node (median)", f"{med_direct:.2f} ms"),
                         ("small job through photogate: ?wait= then GET /download (median)", f"{med_gw:.2f} ms"),
                         ("photogate overhead, two requests (median difference)", f"{med_gw - med_direct:.2f} ms"),
                         ("small job through photogate: ?wait=&result=inline, one request (median)",
                          f"{med_inline:.2f} ms"),
                         ("photogate overhead, one request (median difference)", f"{med_inline - med_direct:.2f} ms")]

                # 2. status polling: photogate vs a bare aiohttp app with the same body size.
                ids = []
                for _ in range(64):
                    ids.append((await via_gateway())["task_id"])
                async with http.get(f"{url}/api/v1/status/{ids[0]}") as r:
                    sample = await r.read()
                if wrk_bin:
                    id_file = work / "ids.txt"
                    id_file.write_text("\n".join(ids) + "\n")
                    script = work / "ids.lua"
                    script.write_text(WRK_SCRIPT % id_file)
                    procs.start("bare", [PY, "-c", BARE_APP, str(bare_port), sample.decode()])

                    async def bare_up() -> bool:
                        async with http.get(f"http://127.0.0.1:{bare_port}/api/v1/status/x") as r:
                            return r.status == 200

                    await wait_for(bare_up, "the bare app")
                    loop = asyncio.get_running_loop()
                    # Alternating rounds, so that the machine's drifts (large on a shared VM)
                    # hit both; the ratio is the median of the rounds' ratios.
                    gw_runs, bare_runs = [], []
                    for _ in range(args.rounds):
                        gw_runs.append(await loop.run_in_executor(None, wrk, wrk_bin, url, script, args.seconds))
                        bare_runs.append(await loop.run_in_executor(
                            None, wrk, wrk_bin, f"http://127.0.0.1:{bare_port}/api/v1/status/{ids[0]}", None,
                            args.seconds))
                    ratios = [g / b for g, b in zip(gw_runs, bare_runs)]
                    label = (f"status polls/s, photogate (wrk -t2 -c64, {len(sample)} B body; "
                             f"median of {args.rounds} rounds)")
                    rows += [(label, f"{statistics.median(gw_runs):,.0f}"),
                             ("status polls/s, bare aiohttp constant JSON (same rounds)",
                              f"{statistics.median(bare_runs):,.0f}"),
                             ("ratio photogate / bare (median of the rounds' ratios)",
                              f"{statistics.median(ratios):.2f} (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")]
                else:
                    rows.append(("status polls/s", "skipped: wrk not installed"))

                # 3. peak RSS under 50 concurrent 10 MB uploads, until their 50 jobs are done.
                big = big_photo(10 * 1024 * 1024)
                rss = PeakRss(gateway.pid)
                before = rss.sample()
                sampler = asyncio.get_running_loop().run_in_executor(None, rss.run)

                async def upload() -> str | None:
                    form = aiohttp.FormData()
                    form.add_field("file", big, filename="big.jpg", content_type="image/jpeg")
                    async with http.post(url + "/api/v1/enhance", data=form) as r:
                        body = await r.json()
                        return body.get("task_id") if r.status == 200 else None

                try:
                    ids = [t for t in await asyncio.gather(*(upload() for _ in range(50))) if t]
                    at_accept = rss.peak
                    finals = await wait_jobs(http, url, ids, deadline=300)
                finally:
                    rss.stop()
                    await sampler
                rss.sample()
                done = sum(1 for f in finals.values() if f == "completed")
                rows += [("gateway RSS before the uploads", f"{before:.0f} MiB"),
                         ((f"gateway peak RSS, 50 concurrent {len(big) / 2**20:.1f} MiB uploads, "
                           f"once accepted ({len(ids)} accepted)"), f"{at_accept:.0f} MiB"),
                         ((f"gateway peak RSS over the whole run, until every job finished ({done} completed, "
                           f"{len(ids) - done} not; {rss.samples} samples)"), f"{rss.peak:.0f} MiB")]
        finally:
            procs.stop()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}\n")
    print("| measure | value |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(rows), indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100, help="small jobs per path (bounded)")
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per target and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating wrk rounds per target")
    parser.add_argument("--json", help="also write the figures to this file")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
