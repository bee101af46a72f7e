#!/usr/bin/env python3
"""Decode bombs: the gateway's memory and health while clients upload them without pause.

Starts a photogate process and ``--nodes`` simulated GPU nodes (``gpunode --simulate``,
registering themselves; they answer the input as the result, so every bomb is checked
twice: as an upload and as a node's result). ``--clients`` clients then upload, for
``--seconds``, one bomb after another of every accepted format at the ``max_pixels`` limit
(bench/bomb_images.py: lossless and lossy WebP, progressive and baseline JPEG, PNG, BMP), and
the CPU bombs of 20 MiB (a PNG of 1.7 million empty chunks, a JPEG of 5 million empty
segments, an RLE BMP of one-pixel runs), which photogate refuses after a bounded walk.
Meanwhile the gateway's RSS is sampled from /proc every 50 ms (its own VmHWM, and the VmRSS
of it and its image-check process together: the larger is the peak) and
``GET /api/v1/health`` is polled back to back. Prints peak RSS, health latency p50/p99/max
and uploads accepted/refused per format.

``--tree NAME=SRC`` (repeatable) runs the same load against each source tree in turn
(``PYTHONPATH=SRC``), e.g. the commit before the budget:

    git worktree add /tmp/before HEAD~5
    python bench/bombs.py --tree before=/tmp/before/src --tree after=src --seconds 10

A gateway whose RSS passes ``--kill-rss-mib`` is killed (its peak is then reported as at
least that). Loopback only; every loop is bounded by ``--seconds`` and per-request timeouts.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bomb_images import bombs as make_bombs
from bomb_images import cpu_bombs
from fleet import SECRET, Procs, free_port, gateway_argv, sim_node_argv, wait_for

GATEWAY_CONFIG = """
webhook: {{allowed_node_networks: [127.0.0.0/8]}}  # the nodes run on this machine
health_check: {{interval: 0.5, timeout: 2}}
limits: {{max_queue: 100000, max_pixels: {max_pixels}}}
logging: {{level: warning}}
"""


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in KiB; (0, 0) once it has gone."""
    rss = hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return rss, hwm


def tree_rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` and of every process under it (the gateway's image-check process)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += memory_kib(current)[0]
        todo += children.get(current, [])
    return total


@dataclass
class LoadResult:
    rss_before_mib: float = 0.0
    peak_rss_mib: float = 0.0
    rss_after_mib: float = 0.0
    killed: bool = False
    health_ms: list[float] = field(default_factory=list)
    health_failures: int = 0
    accepted: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)

    def health_quantile(self, q: float) -> float:
        if not self.health_ms:
            return float("nan")
        ordered = sorted(self.health_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> dict[str, Any]:
        return {
            "rss_before_mib": round(self.rss_before_mib, 1), "peak_rss_mib": round(self.peak_rss_mib, 1),
            "rss_after_mib": round(self.rss_after_mib, 1), "killed": self.killed,
            "health_polls": len(self.health_ms), "health_failures": self.health_failures,
            "health_p50_ms": round(statistics.median(self.health_ms), 1) if self.health_ms else None,
            "health_p99_ms": round(self.health_quantile(0.99), 1),
            "health_max_ms": round(max(self.health_ms or [0]), 1),
            "accepted": dict(self.accepted), "refused": dict(self.refused),
        }


async def hammer(url: str, pid: int, bombs: dict[str, tuple[bytes, str]], *, clients: int, seconds: float,
                 kill_rss_mib: float = 4096.0, kill: Any = None) -> LoadResult:
    """``clients`` uploaders send ``bombs`` round robin for ``seconds`` while RSS and health are watched."""
    result = LoadResult()
    result.rss_before_mib = memory_kib(pid)[0] / 1024
    stop = time.monotonic() + seconds
    names = list(bombs)
    timeout = aiohttp.ClientTimeout(total=max(30.0, seconds * 2))

    async def sample() -> None:
        while time.monotonic() < stop:
            rss, hwm = memory_kib(pid)
            result.peak_rss_mib = max(result.peak_rss_mib, hwm / 1024, tree_rss_kib(pid) / 1024)
            if rss / 1024 > kill_rss_mib and kill is not None:
                result.killed = True
                kill()
                return
            await asyncio.sleep(0.05)

    async def poll_health(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < stop and not result.killed:
            started = time.monotonic()
            try:
                async with session.get(url + "/api/v1/health", timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    await resp.read()
                    ok = resp.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                ok = False
            result.health_ms.append((time.monotonic() - started) * 1000)
            result.health_failures += not ok
            await asyncio.sleep(0.01)

    async def client(session: aiohttp.ClientSession, index: int) -> None:
        turn = index
        while time.monotonic() < stop and not result.killed:
            name = names[turn % len(names)]
            turn += 1
            data, mime = bombs[name]
            form = aiohttp.FormData()
            form.add_field("file", io.BytesIO(data), filename=f"bomb.{mime.split('/')[1]}", content_type=mime)
            try:
                async with session.post(url + "/api/v1/enhance", data=form, timeout=timeout) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                status = type(exc).__name__
            if status == 200:
                result.accepted[name] += 1
            else:
                result.refused[f"{name}:{status}"] += 1

    async with aiohttp.ClientSession() as health_session, aiohttp.ClientSession() as session:
        await asyncio.gather(sample(), poll_health(health_session), *(client(session, i) for i in range(clients)))
    rss, hwm = memory_kib(pid)
    result.peak_rss_mib = max(result.peak_rss_mib, hwm / 1024)
    result.rss_after_mib = rss / 1024
    return result


async def run_tree(name: str, src: str, args: argparse.Namespace, bombs: dict[str, tuple[bytes, str]]) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix=f"bombs-{name}-") as tmp:
        work = Path(tmp)
        procs = Procs(work)
        env = {"PYTHONPATH": str(Path(src).resolve()), "WEBHOOK_SECRET": SECRET,
               "PHOTOGATE_ADMIN_TOKEN": "bench-admin-token-0123456789"}
        try:
            config = work / "gateway.yaml"
            config.write_text(GATEWAY_CONFIG.format(max_pixels=args.max_pixels))
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            gateway = procs.start("gateway", gateway_argv(config, port, work / "data"), env)
            for i in range(args.nodes):
                procs.start(f"node{i}", sim_node_argv(free_port(), args.node_speed, 2, gateway=url,
                                                      state_dir=work / f"node{i}"), env)
            async with aiohttp.ClientSession() as session:
                async def fleet_up() -> bool:
                    async with session.get(url + "/api/v1/health") as resp:
                        return (await resp.json())["fleet"]["healthy"] >= args.nodes

                await wait_for(fleet_up, f"{name}: gateway and {args.nodes} nodes", 60)
            return await hammer(url, gateway.pid, bombs, clients=args.clients, seconds=args.seconds,
                                kill_rss_mib=args.kill_rss_mib, kill=gateway.kill)
        finally:
            procs.stop()


def table(results: dict[str, LoadResult], args: argparse.Namespace, names: list[str]) -> str:
    lines = [
        f"{args.clients} clients, {args.seconds:g} s, bombs at {args.max_pixels / 1e6:g} MP, "
        f"{args.nodes} simulated nodes",
        "",
        "| tree | peak RSS MiB | RSS before / after MiB | health p50 / p99 / max ms | health failed "
        "| accepted | refused |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        s = r.summary()
        peak = f"{s['peak_rss_mib']:.0f}" + (" (killed)" if r.killed else "")
        lines.append(
            f"| {name} | {peak} | {s['rss_before_mib']:.0f} / {s['rss_after_mib']:.0f} | "
            f"{s['health_p50_ms']} / {s['health_p99_ms']} / {s['health_max_ms']} | "
            f"{r.health_failures}/{len(r.health_ms)} | {sum(r.accepted.values())} | {sum(r.refused.values())} |"
        )
    lines += ["", "| tree | " + " | ".join(f"{k} acc/ref" for k in names) + " |",
              "| --- |" + " --- |" * len(names)]
    for name, r in results.items():
        refused: Counter[str] = Counter()
        for key, count in r.refused.items():
            refused[key.split(":")[0]] += count
        lines.append(f"| {name} | " + " | ".join(f"{r.accepted[k]}/{refused[k]}" for k in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--node-speed", type=float, default=2000.0, help="MP/s per slot of each simulated node")
    parser.add_argument("--max-pixels", type=int, default=36_000_000)
    parser.add_argument("--tree", action="append", default=[], help="NAME=SRC (default: this=src)")
    parser.add_argument("--kill-rss-mib", type=float, default=4096.0)
    parser.add_argument("--formats", help="comma-separated subset of the bombs (default: all)")
    parser.add_argument("--no-cpu-bombs", action="store_true", help="leave out the CPU bombs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    trees = [t.split("=", 1) for t in args.tree] or [["this", str(Path(__file__).resolve().parent.parent / "src")]]
    bombs = make_bombs(args.max_pixels)
    if not args.no_cpu_bombs:
        bombs.update(cpu_bombs(20 * 1024 * 1024))
    if args.formats:
        bombs = {name: bombs[name] for name in args.formats.split(",")}
    print("bombs: " + ", ".join(f"{k} {len(v[0]):,} B" for k, v in bombs.items()), flush=True)
    results = {name: asyncio.run(run_tree(name, src, args, bombs)) for name, src in trees}
    print(table(results, args, list(bombs)))
    if args.json:
        args.json.write_text(json.dumps({n: r.summary() for n, r in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
