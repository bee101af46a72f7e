"""Two gateway processes, one Redis, three simulated nodes (issue 8, acceptance 2): tasks
sent to both gateways in turn all complete; status and download answer on either; SIGKILL
gateway A mid-run and every task still completes through B; and no node ever holds more
jobs than its slots, as the nodes themselves count them."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from faults_support import Procs, sim_node_argv
from helpers.photos import digest, unique_photo
from helpers.polling import eventually
from helpers.public_api import download, servers, status, submit, wait_finished
from redis_support import RedisServer, unique_prefix
from support import GatewayProcess, wait_until

SLOTS = [1, 2, 2]
TASKS = 60


def _config(redis_url: str) -> str:
    return f"""
storage:
  backend: redis
  redis_url: {redis_url}
  redis_prefix: "{unique_prefix()}"
  redis_lease_ttl: 1.0
health_check:
  interval: 0.2
  timeout: 0.5
multi_backend:
  enabled: true
dispatch:
  timeout: 10
  retry_backoff: 0.2
"""


async def test_two_gateways_one_killed_every_task_completes_and_no_node_oversubscribed(
        procs: Procs, session: aiohttp.ClientSession, tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    gateways: list[GatewayProcess] = []
    try:
        config = _config(redis.url)
        shared = tmp_path / "shared"  # the blob directory both gateways mount
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
            gw = GatewayProcess(tmp_path / name, config)
            gw.data_dir = shared
            gw.start()
            gateways.append(gw)
        a, b = gateways
        for gw in gateways:
            await gw.wait_ready(session)

        # 40x30 px at 0.005 MP/s: 0.24 s a photo. Nodes register with either gateway.
        ports = [await procs.serve(f"node{i}", lambda p, i=i, slots=slots: sim_node_argv(
                     p, (a, b)[i % 2].url, tmp_path / f"state{i}", speed=0.005, slots=slots))
                 for i, slots in enumerate(SLOTS)]

        async def fleet_up() -> bool:
            for gw in gateways:
                listed = await servers(session, gw.url)
                if len(listed) != 3 or any(s["status"] != "healthy" for s in listed):
                    return False
            return True

        await eventually(fleet_up, 30, "both gateways to see three healthy nodes")
        ids_a = {s["server_id"] for s in await servers(session, a.url)}
        assert ids_a == {s["server_id"] for s in await servers(session, b.url)} == {"GPU-001", "GPU-002", "GPU-003"}

        photos = {}
        for i in range(TASKS):
            photo = unique_photo(i)
            photos[await submit(session, (a, b)[i % 2].url, photo)] = photo

        async def some_done() -> bool:
            done = [t for t in photos if (await status(session, b.url, t))["status"] == "completed"]
            return len(done) >= 8

        await wait_until(some_done, 30, "a few tasks to complete")
        # Status and download on either gateway, whichever took the task.
        finished = [t for t in photos if (await status(session, b.url, t))["status"] == "completed"]
        for task_id in finished[:4]:
            for gw in gateways:
                assert (await status(session, gw.url, task_id))["status"] == "completed"
                code, body = await download(session, gw.url, task_id)
                assert code == 200 and digest(body) == digest(photos[task_id])

        a.kill()  # SIGKILL mid-run: its claimed and running tasks must come back through B
        left = sum([(await status(session, b.url, t))["status"] != "completed" for t in photos])
        assert left >= 10, "the run was not interrupted mid-way"

        finals = await wait_finished(session, b.url, list(photos), 60)
        assert {f["status"] for f in finals.values()} == {"completed"}, [f for f in finals.values()
                                                                         if f["status"] != "completed"]
        for task_id, photo in photos.items():
            code, body = await download(session, b.url, task_id)
            assert code == 200 and digest(body) == digest(photo), f"task {task_id}: wrong or missing result"

        # The nodes' own count: never more jobs at once than slots, and every photo ran.
        done_on_nodes = 0
        for port, slots in zip(ports, SLOTS):
            async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                report = await resp.json()
            assert report["max_inflight"] <= slots, (port, report)
            done_on_nodes += report["jobs_done"]
        assert done_on_nodes >= TASKS
    finally:
        for gw in gateways:
            gw.stop()
        redis.stop()
