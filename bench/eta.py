#!/usr/bin/env python3
"""ETA benchmark: how far the status answers' ``eta_seconds`` is from the real finish.

Starts a photogate process and its nodes, submits photos, polls each task's status until it
finishes, and compares, at the midpoint of each job (halfway from upload to completion, on
the poll nearest it), the ``eta_seconds`` the gateway said with the time the task really
took from then on (its completion is the ``updated_at`` of its completed status). Prints a
table: median, p90 and relative absolute error, split by whether the task was queued or
running at the midpoint, and how many midpoints had no estimate (``eta_seconds: null``).

Fleets:

- ``sim``: simulated nodes (``gpunode --simulate``, one slot each, ±10 % jitter per job) at
  1, 2 and 4 MP/s, an open-loop seeded schedule of photos of 0.3-12 MP (as
  ``scheduling.py``) at 70 % of capacity and at 120 % (a queue builds up);
- ``cpu``: one real gpunode with the bundled model on the CPU: a warm-up photo of a quarter
  the pixels (no history: its ETA is unknown, counted apart), then, each once the one before
  is done, three photos at once (one runs, two queue), then three of mixed sizes at once.

    python bench/eta.py                   # both fleets, about 2 minutes on 2 cores
    python bench/eta.py --fleets sim --jobs 40 --loads 0.7

Loopback only; bounded in jobs and time (``--time-limit`` per run).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet import PY, SECRET, Procs, free_port, gateway_argv, sim_node_argv, wait_for  # noqa: E402
from scheduling import make_schedule  # noqa: E402


@dataclass
class Result:
    """One task: what its status said at its midpoint, and when it really finished."""

    submitted: float
    finished: float | None = None
    samples: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def midpoint(self) -> tuple[str, float | None, float] | None:
        """(status then, eta said, seconds it really had left) at the poll nearest the midpoint."""
        if self.finished is None:
            return None
        middle = (self.submitted + self.finished) / 2
        open_ = [(t, s) for t, s in self.samples if s.get("status") in ("queued", "processing") and t < self.finished]
        if not open_:
            return None
        t, status = min(open_, key=lambda ts: abs(ts[0] - middle))
        return status["status"], status.get("eta_seconds"), self.finished - t


def photo(width: int, height: int, seed: int) -> bytes:
    """A noisy JPEG (the CPU model costs the same on any content; noise keeps decode honest)."""
    rng = random.Random(seed)
    small = Image.frombytes("RGB", (max(width // 8, 1), max(height // 8, 1)),
                            bytes(rng.randrange(256) for _ in range(max(width // 8, 1) * max(height // 8, 1) * 3)))
    buf = io.BytesIO()
    small.resize((width, height)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


async def follow(http: aiohttp.ClientSession, url: str, body: bytes, at: float, poll: float,
                 deadline: float) -> Result:
    """Upload at loop time ``at``, then poll the task's status until it finishes."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(at - loop.time(), 0.0))
    form = aiohttp.FormData()
    form.add_field("file", body, filename="photo.jpg", content_type="image/jpeg")
    result = Result(submitted=time.time())
    async with http.post(url + "/api/v1/enhance", data=form) as resp:
        task_id = (await resp.json())["task_id"]
    while loop.time() < deadline:
        async with http.get(f"{url}/api/v1/status/{task_id}") as resp:
            status = await resp.json()
        result.samples.append((time.time(), status))
        if status["status"] == "completed":
            result.finished = float(status["updated_at"])
            break
        if status["status"] == "failed":
            break
        await asyncio.sleep(poll)
    return result


async def run_fleet(workdir: Path, nodes: list[list[str]], strategy: str,
                    phases: list[list[tuple[float, bytes]]], poll: float, time_limit: float) -> list[Result]:
    """Start a gateway and ``nodes`` (argv with ``{gateway}`` to fill in), run each phase's
    jobs (arrival second, photo) once the one before has finished, stop everything."""
    workdir.mkdir(parents=True, exist_ok=True)
    procs = Procs(workdir)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = workdir / "gateway.yaml"
    config.write_text(f"webhook: {{secret: {SECRET}, allowed_node_networks: [127.0.0.0/8]}}\n"
                      f"balancer: {{strategy: {strategy}}}\nhealth_check: {{interval: 1, timeout: 2}}\n"
                      "logging: {level: warning}\nlimits: {max_queue: 100000}\n"
                      f"dispatch: {{timeout: {time_limit}}}\n")
    try:
        procs.start("photogate", gateway_argv(config, port, workdir / "data"))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=time_limit)) as http:
            async def gateway_up() -> bool:
                async with http.get(url + "/api/v1/health") as r:
                    return r.status == 200

            await wait_for(gateway_up, "photogate")
            for i, argv in enumerate(nodes):
                procs.start(f"node{i}", [a.replace("{gateway}", url) for a in argv])

                async def reported(n: int = i + 1) -> bool:
                    # Registered, healthy, and its first health report in (its speed, if it says one).
                    async with http.get(url + "/webhook/servers", headers={"X-Webhook-Secret": SECRET}) as r:
                        servers = (await r.json())["data"]["servers"]
                    return sum(1 for s in servers if s["healthy"] and s.get("last_check")) >= n

                await wait_for(reported, f"node {i} to register", timeout=120)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + time_limit
            results: list[Result] = []
            for jobs in phases:
                t0 = loop.time() + 0.5
                results += await asyncio.gather(*(follow(http, url, body, t0 + at, poll, deadline)
                                                  for at, body in jobs))
            return results
    finally:
        procs.stop()


def summarize(name: str, results: list[Result]) -> dict[str, Any]:
    points = [p for p in (r.midpoint() for r in results) if p is not None]
    known = [(state, abs(eta - left), left) for state, eta, left in points if eta is not None]
    errors = sorted(e for _, e, _ in known)

    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    durations = [r.finished - r.submitted for r in results if r.finished is not None]
    return {
        "fleet": name,
        "jobs": len(results),
        "completed": len(durations),
        "mean_job_s": statistics.fmean(durations) if durations else None,
        "median_abs_err_s": median(errors),
        "p90_abs_err_s": errors[min(int(0.9 * len(errors)), len(errors) - 1)] if errors else None,
        "median_rel_err": median([e / left for _, e, left in known if left > 0]),
        "queued_median_abs_err_s": median([e for s, e, _ in known if s == "queued"]),
        "queued_points": sum(1 for s, _, _ in known if s == "queued"),
        "running_median_abs_err_s": median([e for s, e, _ in known if s == "processing"]),
        "running_points": sum(1 for s, _, _ in known if s == "processing"),
        "unknown": len(points) - len(known),
    }


def fmt(value: Any, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def row(m: dict[str, Any]) -> str:
    return (f"| {m['fleet']} | {m['completed']}/{m['jobs']} | {fmt(m['mean_job_s'])} "
            f"| **{fmt(m['median_abs_err_s'])}** "
            f"| {fmt(m['p90_abs_err_s'])} | {fmt(m['median_rel_err'], '.0%')} "
            f"| {fmt(m['queued_median_abs_err_s'])} ({m['queued_points']}) "
            f"| {fmt(m['running_median_abs_err_s'])} ({m['running_points']}) | {m['unknown']} |")


async def main_async(args: argparse.Namespace) -> int:
    print("| fleet | completed | mean job s | median abs err s | p90 abs err s | median rel err "
          "| queued: median s (n) | running: median s (n) | no estimate |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    with tempfile.TemporaryDirectory(prefix="photogate-eta-") as tmp:
        if "sim" in args.fleets:
            speeds = args.speeds
            nodes = [sim_node_argv(free_port(), s, 1, gateway="{gateway}", state_dir=Path(tmp) / f"sim{i}",
                                   jitter=args.jitter) for i, s in enumerate(speeds)]
            for load in args.loads:
                schedule = make_schedule(args.seed, args.jobs, load, speeds)
                jobs = [(j.arrival, photo(j.width, j.height, j.index)) for j in schedule]
                results = await run_fleet(Path(tmp) / f"sim-{load}", nodes, args.strategy, [jobs], args.poll,
                                          args.time_limit)
                name = f"simulated {'/'.join(f'{s:g}' for s in speeds)} MP/s, {args.strategy}, {load:.0%} load"
                rows.append(summarize(name, results))
                print(row(rows[-1]), flush=True)
        if "cpu" in args.fleets:
            argv = [PY, "-m", "gpunode", "--cpu", "--host", "127.0.0.1", "--port", str(free_port()),
                    "--gateway", "{gateway}", "--secret", SECRET, "--advertise-ip", "127.0.0.1",
                    "--state-dir", str(Path(tmp) / "cpu")]
            w, h = args.cpu_size
            # The warm-up alone first: its answer is what the gateway learns the node's pace from.
            warm = [(0.0, photo(w // 2, h // 2, 100))]
            three = [(0.0, photo(w, h, 101 + i)) for i in range(3)]
            mixed = [(0.0, photo(w, h, 104)), (0.0, photo(w // 2, h // 2, 105)), (0.0, photo(w, h, 106))]
            results = await run_fleet(Path(tmp) / "cpu", [argv], "round_robin", [warm, three, mixed],
                                      max(args.poll, 0.5), args.time_limit)
            warm_unknown = all(r.midpoint() is None or r.midpoint()[1] is None for r in results[:1])  # type: ignore[index]
            rows.append(summarize(f"CPU model, 3 × {w}x{h} after one {w // 2}x{h // 2}", results[1:4]))
            rows[-1]["warm_up_eta_unknown"] = warm_unknown
            print(row(rows[-1]), flush=True)
            rows.append(summarize(f"CPU model, then {w}x{h}, {w // 2}x{h // 2}, {w}x{h}", results[4:]))
            print(row(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fleets", default="sim,cpu", help="sim, cpu or both (default %(default)s)")
    parser.add_argument("--speeds", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="MP/s of each simulated node")
    parser.add_argument("--jitter", type=float, default=0.1, help="simulated nodes: each job's time varies by this")
    parser.add_argument("--loads", type=float, nargs="+", default=[0.7, 1.2])
    parser.add_argument("--jobs", type=int, default=40, help="photos per simulated run (bounded)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--strategy", default="fastest")
    parser.add_argument("--poll", type=float, default=0.25, help="seconds between status polls of a task")
    parser.add_argument("--cpu-size", type=int, nargs=2, default=[480, 320], metavar=("W", "H"),
                        help="the CPU fleet's photos (the warm-up is half each side)")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds per run, at most")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.jobs > 1000:
        parser.error("--jobs: at most 1000")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
