"""Real progress and ETA in the status answers (issue 15, item 9).

A queued task says its place in the queue and when it should start; a running one, a
progress that grows with time and an ``eta_seconds`` that shrinks, from its node's speed
(reported in /health, then learned from the jobs it finished) and the photo's size; a
finished one, progress 1 and ETA 0.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

from support import ADMIN_TOKEN, SECRET, Gateway, image_bytes, wait_until

from photogate.admincli import run
from photogate.estimates import fit
from photogate.keys import GATEWAY

#: 400 x 250 = 0.1 megapixels: one second on a node doing 0.1 MP/s.
PHOTO = (400, 250)
SECONDS = 1.0


async def _reported(gateway: Gateway, server_id: str) -> None:
    """Wait for the node's first health report (its speed) to reach the gateway."""
    registry = gateway.app[GATEWAY].registry
    await wait_until(lambda: registry.get(server_id).health.get("throughput") is not None, 10.0,
                     f"{server_id}'s health report")


async def _status_when(gateway: Gateway, task_id: str, check: Any, what: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def holds() -> bool:
        seen.clear()
        seen.update(await gateway.status(task_id))
        return bool(check(seen))

    await wait_until(holds, 15.0, what)
    return seen


async def test_running_task_progress_grows_and_eta_shrinks(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    node = await nodes(delay=2 * SECONDS, throughput=0.1)
    await gateway.register(node)
    await _reported(gateway, node.server_id)
    task_id = await gateway.submit(image_bytes(800, 250))  # 0.2 MP at 0.1 MP/s: 2 s

    first = await _status_when(gateway, task_id, lambda s: s["status"] == "processing", "the task to run")
    assert 0.0 <= first["progress"] < 1.0
    assert 0.0 < first["eta_seconds"] <= 2 * SECONDS
    assert first["queue_position"] is None and first["estimated_start_seconds"] is None

    later = await _status_when(
        gateway, task_id, lambda s: s["status"] != "processing" or s["progress"] >= first["progress"] + 0.2,
        "the progress to grow")
    assert later["status"] == "processing", later
    assert first["progress"] + 0.2 <= later["progress"] < 1.0
    assert later["eta_seconds"] < first["eta_seconds"]
    # The ETA counts down with the clock: progress and ETA tell the same story.
    drift = (later["eta_seconds"] - first["eta_seconds"]) + 2 * SECONDS * (later["progress"] - first["progress"])
    assert abs(drift) < 0.3

    final = await gateway.wait_done(task_id)
    assert final["status"] == "completed"
    assert final["progress"] == 1.0 and final["eta_seconds"] == 0.0
    assert final["queue_position"] is None and final["estimated_start_seconds"] is None


async def _one_running(gateway: Gateway, nodes) -> tuple[bytes, str]:  # type: ignore[no-untyped-def]
    """A node that takes SECONDS a photo, registered and reporting; one photo running on it."""
    node = await nodes(delay=SECONDS, throughput=0.1)
    await gateway.register(node)
    await _reported(gateway, node.server_id)
    photo = image_bytes(*PHOTO)
    running = await gateway.submit(photo)
    await _status_when(gateway, running, lambda s: s["status"] == "processing", "a task to run")
    return photo, running


async def test_queued_tasks_say_their_place_and_start(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    photo, running = await _one_running(gateway, nodes)
    second, third = await gateway.submit(photo), await gateway.submit(photo)

    b, c = await gateway.status(second), await gateway.status(third)
    assert (b["status"], c["status"]) == ("queued", "queued"), (b, c)
    assert (b["queue_position"], c["queue_position"]) == (1, 2)
    assert b["progress"] == 0.0 and c["progress"] == 0.0
    # The second starts when the first is done (within its one second), the third a second later.
    assert 0.0 <= b["estimated_start_seconds"] <= SECONDS
    assert abs(c["estimated_start_seconds"] - b["estimated_start_seconds"] - SECONDS) < 0.3
    assert abs(b["eta_seconds"] - b["estimated_start_seconds"] - SECONDS) < 0.01
    assert abs(c["eta_seconds"] - c["estimated_start_seconds"] - SECONDS) < 0.01

    # Once the first is done, the third moves up to first place.
    moved = await _status_when(gateway, third, lambda s: s["status"] != "queued" or s["queue_position"] == 1,
                               "the third task to move up")
    assert moved["status"] == "queued" and moved["queue_position"] == 1, moved
    assert moved["estimated_start_seconds"] <= SECONDS + 0.3

    for task_id in (running, second, third):
        final = await gateway.wait_done(task_id)
        assert (final["status"], final["progress"], final["eta_seconds"], final["queue_position"]) == (
            "completed", 1.0, 0.0, None)


async def test_speed_learned_from_finished_jobs(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    # A node that reports no speed (a real node before its first photo): no ETA is made up.
    node = await nodes(delay=SECONDS)
    await gateway.register(node)
    photo = image_bytes(*PHOTO)
    first = await gateway.submit(photo)
    unknown = await _status_when(gateway, first, lambda s: s["status"] == "processing", "the first task to run")
    assert unknown["eta_seconds"] is None and unknown["progress"] == 0.0
    await gateway.wait_done(first)

    # Its first photo took about a second: the next one of the same size is expected to.
    second = await gateway.submit(photo)
    known = await _status_when(gateway, second, lambda s: s["status"] == "processing", "the second task to run")
    assert 0.5 * SECONDS < known["eta_seconds"] <= 1.5 * SECONDS
    assert 0.0 <= known["progress"] < 0.5
    final = await gateway.wait_done(second)
    assert (final["progress"], final["eta_seconds"]) == (1.0, 0.0)


async def test_admin_task_listing_carries_the_estimate(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    node = await nodes(delay=SECONDS, throughput=0.1)
    await gateway.register(node)
    await _reported(gateway, node.server_id)
    task_id = await gateway.submit(image_bytes(*PHOTO))
    await _status_when(gateway, task_id, lambda s: s["status"] == "processing", "the task to run")
    resp = await gateway.client.get(f"/api/v1/admin/tasks/{task_id}", headers=gateway.admin_headers())
    answer = await resp.json()
    assert resp.status == 200, answer
    body = answer["task"]
    assert 0.0 < body["eta_seconds"] <= SECONDS and 0.0 <= body["progress"] < 1.0
    await gateway.wait_done(task_id)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_cli_bar_moves_with_the_estimate(gateway: Gateway, nodes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = await nodes(delay=2 * SECONDS, throughput=0.1)
    await gateway.register(node)
    await _reported(gateway, node.server_id)
    photo = tmp_path / "photo.png"
    photo.write_bytes(image_bytes(800, 250))  # 2 s on this node
    out, err = _Tty(), io.StringIO()
    env = {"GATEWAY_URL": str(gateway.client.make_url("")).rstrip("/"), "WEBHOOK_SECRET": SECRET,
           "PHOTOGATE_ADMIN_TOKEN": ADMIN_TOKEN}
    code = await run(["enhance", str(photo), "--wait", "--out", str(tmp_path)], stdout=out, stderr=err, env=env)
    assert code == 0, err.getvalue()
    frames = re.findall(r"\r\[[#-]+\] +(\d+)%  processing on GPU-001 +[\d.]+s  eta ([\d.]+)s", out.getvalue())
    percents = [int(p) for p, _ in frames]
    etas = [float(e) for _, e in frames]
    # The bar fills while the node works (no 50 % jump), and the ETA counts down.
    assert len(set(percents)) >= 2 and percents == sorted(percents) and 0 < max(percents) < 100, out.getvalue()
    assert etas == sorted(etas, reverse=True) and etas[0] <= 2 * SECONDS, out.getvalue()
    assert "100%  completed" in out.getvalue()


async def test_dashboard_state_carries_the_estimate(gateway: Gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    photo, running = await _one_running(gateway, nodes)
    queued = await gateway.submit(photo)
    resp = await gateway.client.get("/dashboard/state", headers=gateway.admin_headers())
    assert resp.status == 200
    tasks = {t["task_id"]: t for t in (await resp.json())["tasks"]}
    assert 0.0 < tasks[running]["eta_seconds"] <= SECONDS and tasks[running]["queue_position"] is None
    assert tasks[queued]["queue_position"] == 1
    assert SECONDS <= tasks[queued]["eta_seconds"] <= 2 * SECONDS
    for task_id in (running, queued):
        await gateway.wait_done(task_id)


def test_pace_fits_an_overhead_and_a_speed() -> None:
    # 0.5 s per photo plus 2 s per megapixel, from photos of three sizes.
    pace = fit([(0.5, 1.5), (1.0, 2.5), (2.0, 4.5), (1.0, 2.5)], 0.7)
    assert abs(pace.overhead - 0.5) < 1e-9 and abs(pace.per_mp - 2.0) < 1e-9
    # All of one size: no way to tell overhead from speed; time proportional to the size.
    same = fit([(1.0, 2.0), (1.0, 3.0)], 0.5)
    assert same.overhead == 0.0 and abs(same.seconds(1.0) - (0.5 * 2.0 + 3.0) / 1.5) < 1e-9
    # A fit that would say a negative overhead is not believed either.
    assert fit([(1.0, 0.5), (2.0, 3.0)], 1.0).overhead == 0.0
