"""bench/scheduling.py's accounting: a failed job and a job the time limit cuts off count as
infinite latency and are counted, so no baseline looks better by losing work."""

from __future__ import annotations

import asyncio
import math
import sys

import aiohttp
from support import REPO

sys.path.insert(0, str(REPO / "bench"))
import scheduling  # noqa: E402


async def test_failed_and_cut_off_jobs_count_as_infinite_latency() -> None:
    jobs = [scheduling.Job(i, 0.01 * i, 16, 16) for i in range(4)]
    never = asyncio.Event()

    async def send(http: aiohttp.ClientSession, job: scheduling.Job, body: bytes) -> bool:
        if job.index == 1:
            return False  # the system answered an error
        if job.index == 2:
            raise aiohttp.ClientConnectionError("reset")
        if job.index == 3:
            await never.wait()  # cut off by the time limit
        return True

    m = await scheduling.replay(jobs, scheduling.Photos(), send, time_limit=2.0)
    assert (m["completed"], m["failed"], m["cut_off"]) == (1, 2, 1)
    assert m["p50"] == m["p99"] == m["mean"] == math.inf  # 3 of 4 jobs never finished
    assert m["makespan"] == math.inf


async def test_all_jobs_done_gives_finite_figures() -> None:
    jobs = [scheduling.Job(i, 0.01 * i, 16, 16) for i in range(4)]

    async def send(http: aiohttp.ClientSession, job: scheduling.Job, body: bytes) -> bool:
        return True

    m = await scheduling.replay(jobs, scheduling.Photos(), send, time_limit=10.0)
    assert (m["completed"], m["failed"], m["cut_off"]) == (4, 0, 0)
    assert all(math.isfinite(m[k]) for k in ("mean", "p50", "p95", "p99", "makespan"))


def test_weights_are_proportional_to_speed() -> None:
    from fleet import speed_weights

    assert speed_weights([1.0, 2.0, 4.0]) == [25, 50, 100]
    assert speed_weights([4.0, 8.0, 16.0]) == [25, 50, 100]  # --time-scale keeps the ratios
