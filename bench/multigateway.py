#!/usr/bin/env python3
"""Status polls with one vs two gateway processes sharing Redis (issue 8).

Each setup runs real processes on this machine: ``redis-server`` (temp dir, no
persistence), the gateway process(es) (``python -m photogate``), one simulated node that
completes 64 photos first, then two ``wrk -t1 -c32`` processes (64 pollers in all) sending
``GET /api/v1/status/{id}`` over those 64 task ids, for ``--seconds`` each:

- sqlite, 1 gateway (the reference: the default backend, a write-through cache);
- redis, 1 gateway (both wrk processes on it);
- redis, 2 gateways (one wrk process on each).

It also counts what Redis carries: commands per task (submit, dispatch, complete, a few
polls) and commands per second of an idle gateway (heartbeat, registry refresh).

    python bench/multigateway.py [--seconds 8]    # needs wrk and redis-server

Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from redis.exceptions import RedisError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import (
    GATEWAY_CONFIG,
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

TASKS = 64


def photo(i: int) -> bytes:
    return jpeg(color=(i % 256, 20, 30))


def wrk(binary: str, url: str, script: Path, seconds: int) -> subprocess.Popen[str]:
    argv = [binary, "-t1", "-c32", f"-d{seconds}s", "--latency", "-s", str(script), url]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def parse_wrk(out: str) -> tuple[float, float, float, int]:
    """requests/s, p50 ms, p99 ms, non-2xx + socket errors."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise RuntimeError(f"wrk said: {out}")

    def ms(pct: str) -> float:
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)\b", out)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return float(rps.group(1)), ms("50"), ms("99"), errors


class Redis:
    def __init__(self, workdir: Path, binary: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "",
             "--appendonly", "no", "--logfile", str(workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


_CLIENTS: dict[str, object] = {}


async def commands(url: str) -> int:
    """Commands Redis has processed so far (our own INFO calls included: one each)."""
    import redis.asyncio as aioredis

    client = _CLIENTS.get(url)
    if client is None:
        client = _CLIENTS[url] = aioredis.Redis.from_url(url)
    return int((await client.info("stats"))["total_commands_processed"])  # type: ignore[attr-defined]


def proc_cpu(pid: int) -> float:
    """CPU seconds process ``pid`` has used (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def redis_cpu(url: str) -> float:
    """CPU seconds Redis has used so far (user + system, all its threads)."""
    info = await _CLIENTS[url].info("cpu")  # type: ignore[attr-defined]
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def command_stats(url: str) -> dict[str, int]:
    client = _CLIENTS[url]
    stats = await client.info("commandstats")  # type: ignore[attr-defined]
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


async def setup(work: Path, name: str, gateways: int, redis_url: str | None, wrk_bin: str,
                seconds: int) -> dict[str, object]:
    procs = Procs(work / name)
    (work / name).mkdir()
    config = work / name / "gateway.yaml"
    storage = (f"storage: {{backend: redis, redis_url: '{redis_url}', redis_prefix: '{name}:'}}\n"
               if redis_url else "")
    config.write_text(GATEWAY_CONFIG + storage)
    ports = [free_port() for _ in range(gateways)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    result: dict[str, object] = {"setup": name, "gateways": gateways}
    try:
        gw_pids = [procs.start(f"photogate{i}", gateway_argv(config, port, work / name / "data")).pid
                   for i, port in enumerate(ports)]
        async with aiohttp.ClientSession() as http:
            for url in urls:
                async def up(url: str = url) -> bool:
                    async with http.get(url + "/api/v1/health") as r:
                        return r.status == 200

                await wait_for(up, f"photogate at {url}")
            procs.start("node", sim_node_argv(free_port(), 100_000, 8, gateway=urls[0],
                                              state_dir=work / name / "node"))

            async def registered() -> bool:
                for url in urls:
                    async with http.get(url + "/webhook/servers", headers={"X-Webhook-Secret": SECRET}) as r:
                        if (await r.json())["data"]["healthy_servers"] != 1:
                            return False
                return True

            await wait_for(registered, "the node to register")
            if redis_url:  # an idle second: what the gateways' heartbeats and refreshes cost
                before = await commands(redis_url)
                await asyncio.sleep(2.0)
                result["idle_cmds_per_s"] = (await commands(redis_url) - before - 1) / 2.0
                before = await commands(redis_url)
                stats_before = await command_stats(redis_url)
                cpu_before = await redis_cpu(redis_url)
            t0 = time.monotonic()
            ids = []
            for i in range(TASKS):
                form = aiohttp.FormData()
                form.add_field("file", photo(i), filename="p.jpg", content_type="image/jpeg")
                async with http.post(urls[i % gateways] + "/api/v1/enhance", data=form) as r:
                    body = await r.json()
                    assert r.status == 200, body
                    ids.append(body["task_id"])

            async def all_done() -> bool:  # one count a poll, not one status per task
                async with http.get(f"{urls[0]}/api/v1/health") as r:
                    return int((await r.json())["tasks"]["completed"]) == len(ids)

            await wait_for(all_done, f"{TASKS} tasks to complete")
            if redis_url:
                spent = time.monotonic() - t0
                used = await commands(redis_url) - before
                result["cpu_us_per_task"] = (await redis_cpu(redis_url) - cpu_before) / TASKS * 1e6
                stats = await command_stats(redis_url)
                result["breakdown"] = {k: n - stats_before.get(k, 0) for k, n in stats.items()
                                       if n - stats_before.get(k, 0)}
                # Per task: everything Redis did meanwhile, less the idle background rate.
                result["cmds_per_task"] = (used - float(result["idle_cmds_per_s"]) * spent) / TASKS
                before, t1 = await commands(redis_url), time.monotonic()
                for _ in range(100):
                    async with http.get(f"{urls[0]}/api/v1/status/{ids[0]}") as r:
                        await r.read()
                used = await commands(redis_url) - before - 1  # less our own INFO
                result["cmds_per_poll"] = (used - float(result["idle_cmds_per_s"]) * (time.monotonic() - t1)) / 100
        id_file = work / name / "ids.txt"
        id_file.write_text("\n".join(ids) + "\n")
        script = work / name / "ids.lua"
        script.write_text(WRK_SCRIPT % id_file)
        # Two wrk processes, 32 connections each: on one gateway, or one per gateway.
        cpu_before = await redis_cpu(redis_url) if redis_url else 0.0
        gw_before = sum(proc_cpu(pid) for pid in gw_pids)
        children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        runs = [wrk(wrk_bin, urls[i % gateways], script, seconds) for i in range(2)]
        outs = [p.communicate(timeout=seconds + 60)[0] for p in runs]
        children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the two wrk processes, reaped
        result["wrk_cpu"] = (children.ru_utime + children.ru_stime - children_before.ru_utime
                             - children_before.ru_stime) / seconds
        result["gateway_cpu"] = (sum(proc_cpu(pid) for pid in gw_pids) - gw_before) / seconds
        parsed = [parse_wrk(o) for o in outs]
        if redis_url:
            result["redis_cpu_share"] = (await redis_cpu(redis_url) - cpu_before) / seconds
        result["rps"] = sum(p[0] for p in parsed)
        result["p50"] = max(p[1] for p in parsed)
        result["p99"] = max(p[2] for p in parsed)
        result["errors"] = sum(p[3] for p in parsed)
    finally:
        procs.stop()
    return result


async def run(args: argparse.Namespace) -> int:
    wrk_bin = ensure_binary("wrk", "wrk")
    redis_bin = shutil.which("redis-server") or ensure_binary("redis-server", "redis-server")
    if not wrk_bin or not redis_bin:
        print("needs wrk and redis-server (apt-get install wrk redis-server)", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="photogate-multigw-") as tmp:
        work = Path(tmp)
        redis = Redis(work, redis_bin)
        try:
            async def redis_up() -> bool:
                try:
                    await commands(redis.url)
                    return True
                except (OSError, RedisError):
                    return False

            await wait_for(redis_up, "redis-server")
            rows.append(await setup(work, "sqlite", 1, None, wrk_bin, args.seconds))
            rows.append(await setup(work, "redis1", 1, redis.url, wrk_bin, args.seconds))
            rows.append(await setup(work, "redis2", 2, redis.url, wrk_bin, args.seconds))
        finally:
            for client in _CLIENTS.values():
                await client.aclose()  # type: ignore[attr-defined]
            redis.stop()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"machine: {os.cpu_count()} vCPU ({cpu}), Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}; wrk: 2 processes x 32 connections, {args.seconds} s\n")
    print("| backend | gateways | status polls/s | p50 ms | p99 ms | errors | Redis cmds/task (in scripts too) "
          "| Redis cmds/poll | Redis cmds/s idle |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        backend = "sqlite" if r["setup"] == "sqlite" else "redis"
        per_task = f"{r['cmds_per_task']:.1f}" if "cmds_per_task" in r else "-"
        idle = f"{r['idle_cmds_per_s']:.0f}" if "idle_cmds_per_s" in r else "-"
        poll = f"{r['cmds_per_poll']:.1f}" if "cmds_per_poll" in r else "-"
        print(f"| {backend} | {r['gateways']} | {r['rps']:,.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} "
              f"| {per_task} | {poll} | {idle} |")
    print()
    for r in rows:
        print(f"- {r['setup']}: during the polls the gateway process(es) used {r['gateway_cpu']:.2f} cores, "
              f"the two wrk processes {r['wrk_cpu']:.2f}")
    for r in rows:
        if "cpu_us_per_task" in r:
            print(f"- {r['setup']}: Redis CPU {r['cpu_us_per_task']:.0f} µs per task (submit to completed, "
                  f"background included); during the polls Redis used {r['redis_cpu_share']:.0%} of a core")
    for r in rows:
        if "breakdown" in r:
            print(f"- {r['setup']}: Redis commands while {TASKS} tasks ran (background included): {r['breakdown']}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8, help="wrk duration per setup (bounded)")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
