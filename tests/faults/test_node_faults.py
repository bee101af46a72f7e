"""Node faults with real node processes: killed, stopped (hanging), 500s, corrupt results,
flapping, changing IP. Every test ends with each task completed (or failed with a reason)
and every downloaded result byte-identical to the photo its task was given."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from faults_support import Procs, control, fault_node_argv, node_stats, sim_node_argv, wait_answers
from helpers.photos import digest, unique_photo
from helpers.polling import eventually
from helpers.public_api import download, register, servers, status, submit, wait_finished
from support import wait_until

from photogate.keys import GATEWAY

FAST = {"health_check.interval": 0.1, "health_check.timeout": 0.5, "dispatch.timeout": 10.0}


def base_url(gw: Any) -> str:
    return str(gw.client.make_url("")).rstrip("/")


async def _start_sim_nodes(procs: Procs, gw: Any, tmp_path: Path, count: int, speed: float,
                           ip: str = "127.0.0.1") -> dict[str, int]:
    """Start ``count`` simulated nodes that register themselves; answer {server_id: port}."""
    for i in range(count):
        await procs.serve(f"node{i}", lambda p, i=i: sim_node_argv(p, base_url(gw), tmp_path / f"state{i}",
                                                                   speed=speed, ip=ip))
    registry = gw.app[GATEWAY].registry
    await wait_until(lambda: len([s for s in registry.all() if s.healthy]) == count, 30, f"{count} nodes to register")
    return {s.server_id: s.record.port for s in registry.all()}


def _check_content(finals: dict[str, dict[str, Any]], sent: dict[str, bytes]) -> None:
    assert {f["status"] for f in finals.values()} == {"completed"}, finals


async def _check_downloads(session: Any, base: str, sent: dict[str, bytes]) -> None:
    for task_id, photo in sent.items():
        code, body = await download(session, base, task_id)
        assert code == 200 and digest(body) == digest(photo), f"task {task_id}: wrong or missing result"


async def test_node_sigkilled_mid_inference(make_gateway, procs: Procs, session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gw = await make_gateway(**FAST)
    base = base_url(gw)
    # 40x30 px = 0.0012 MP at 0.0015 MP/s: 0.8 s a job, long enough to be killed in.
    by_id = await _start_sim_nodes(procs, gw, tmp_path, 2, speed=0.0015)
    sent = {await submit(session, base, unique_photo(i)): unique_photo(i) for i in range(6)}
    victim_id: dict[str, str] = {}

    async def one_processing() -> bool:
        for task_id in sent:
            body = await status(session, base, task_id)
            if body["status"] == "processing" and body["server_id"]:
                victim_id["server"], victim_id["task"] = body["server_id"], task_id
                return True
        return False

    await wait_until(one_processing, 10, "a task to be processing")
    port = by_id[victim_id["server"]]
    name = next(n for n, argv in procs.argv.items() if str(port) in argv)
    procs.kill(name)  # SIGKILL mid-inference

    finals = await wait_finished(session, base, list(sent), 30)
    _check_content(finals, sent)
    await _check_downloads(session, base, sent)
    assert finals[victim_id["task"]]["attempts"] >= 2, "the killed node's task was not run again"

    async def victim_down() -> bool:
        node = next(s for s in await servers(session, base) if s["server_id"] == victim_id["server"])
        return node["status"] == "unhealthy" and bool(node["last_error"])

    await eventually(victim_down, 10, "the killed node to be shown unhealthy with its last error")
    # It comes back on its own: same id (its node key), healthy, taking work again.
    procs.restart(name)

    async def victim_back() -> bool:
        listed = await servers(session, base)
        return len(listed) == 2 and all(s["status"] == "healthy" for s in listed)

    await eventually(victim_back, 20, "the restarted node to be healthy under its old id")
    more = {await submit(session, base, unique_photo(100 + i)): unique_photo(100 + i) for i in range(4)}
    _check_content(await wait_finished(session, base, list(more), 20), more)


async def test_stopped_node_hits_the_per_job_timeout(make_gateway, procs: Procs, session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gw = await make_gateway(**{**FAST, "dispatch.timeout": 1.5, "health_check.timeout": 0.3})
    base = base_url(gw)
    by_id = await _start_sim_nodes(procs, gw, tmp_path, 2, speed=0.0015)  # 0.8 s a job
    sent = {await submit(session, base, unique_photo(i)): unique_photo(i) for i in range(6)}
    seen: dict[str, str] = {}

    async def on_first() -> bool:
        for task_id in sent:
            body = await status(session, base, task_id)
            if body["status"] == "processing" and body["server_id"] == "GPU-001":
                seen["task"] = task_id
                return True
        return False

    await wait_until(on_first, 10, "a task processing on GPU-001")
    name = next(n for n, argv in procs.argv.items() if str(by_id["GPU-001"]) in argv)
    procs.signal(name, signal.SIGSTOP)  # the kernel still accepts connections; nothing answers
    try:
        finals = await wait_finished(session, base, list(sent), 30)
        _check_content(finals, sent)
        await _check_downloads(session, base, sent)
        assert finals[seen["task"]]["server_id"] == "GPU-002" and finals[seen["task"]]["attempts"] >= 2

        async def shown_down() -> bool:
            node = (await servers(session, base))[0]
            return node["status"] == "unhealthy" and bool(node["last_error"])

        await eventually(shown_down, 10, "the stopped node to be unhealthy")
    finally:
        procs.signal(name, signal.SIGCONT)

    async def back() -> bool:
        return (await servers(session, base))[0]["status"] == "healthy"

    await eventually(back, 10, "the node to come back once it answers again")


async def test_500s_and_corrupt_results_retried_elsewhere(make_gateway, procs: Procs, session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gw = await make_gateway(**{**FAST, "dispatch.max_attempts": 4})
    base = base_url(gw)
    ports = {mode: await procs.serve(mode, lambda p, mode=mode: fault_node_argv(p, mode))
             for mode in ("error500", "garbage", "truncated", "ok")}
    for port in ports.values():
        await wait_answers(session, f"http://127.0.0.1:{port}/_stats")
        await register(session, base, port)
    sent = {await submit(session, base, unique_photo(i)): unique_photo(i) for i in range(12)}
    finals = await wait_finished(session, base, list(sent), 30)
    _check_content(finals, sent)
    await _check_downloads(session, base, sent)
    assert {f["server_id"] for f in finals.values()} == {"GPU-004"}
    for mode in ("error500", "garbage", "truncated"):
        assert (await node_stats(session, ports[mode]))["answers"].get(mode, 0) >= 1, f"no job reached {mode}"

    # With no good node left, a task fails with a reason; no corrupt result is ever served.
    await control(session, ports["ok"], mode="truncated")
    task_id = await submit(session, base, unique_photo(999))
    final = (await wait_finished(session, base, [task_id], 20))[task_id]
    assert final["status"] == "failed"
    error = final["error"]
    assert "after 4 attempts" in error and ("unreadable image" in error or "HTTP 500" in error)
    code, body = await download(session, base, task_id)
    assert code == 409 and b"failed" in body
    results = Path(gw.app[GATEWAY].config.data_path) / "blobs" / "results"
    assert not list(results.glob(task_id + "*")), "a corrupt result was kept"


async def test_flapping_node_loses_nothing(make_gateway, procs: Procs, session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gw = await make_gateway(**{**FAST, "health_check.failure_threshold": 1, "health_check.interval": 0.05})
    base = base_url(gw)
    flap = await procs.serve("flap", lambda p: fault_node_argv(p, "flap", delay=0.05, period=0.4))
    steady = await procs.serve("steady", lambda p: fault_node_argv(p, "ok", delay=0.05))
    for port in (flap, steady):
        await wait_answers(session, f"http://127.0.0.1:{port}/_stats")
    flap_id = (await register(session, base, flap))["server_id"]
    await register(session, base, steady)
    registry = gw.app[GATEWAY].registry
    states: set[bool] = set()
    sent: dict[str, bytes] = {}
    # Photos keep coming (at most 200, over at most 15 s) until the flapping node has been
    # seen up and down and has finished work while up: a short burst can fall entirely in
    # one of its down periods.
    deadline = asyncio.get_running_loop().time() + 15
    for i in range(200):
        sent[await submit(session, base, unique_photo(i))] = unique_photo(i)
        states.add(registry.get(flap_id).healthy)  # type: ignore[union-attr]
        if i >= 30 and states == {True, False} and (await node_stats(session, flap))["jobs"] >= 1:
            break
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.01)
    assert states == {True, False}, "the flapping node was not seen up and down"
    finals = await wait_finished(session, base, list(sent), 30)
    _check_content(finals, sent)
    await _check_downloads(session, base, sent)
    assert (await node_stats(session, flap))["jobs"] >= 1, "the flapping node never got work while up"


async def test_node_changes_ip_while_jobs_run(make_gateway, procs: Procs, session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    gw = await make_gateway(**FAST)
    base = base_url(gw)
    state = tmp_path / "node-state"
    port = await procs.serve("node", lambda p: sim_node_argv(p, base, state, speed=0.004, ip="127.0.0.2"))
    registry = gw.app[GATEWAY].registry
    await wait_until(lambda: [s.healthy for s in registry.all()] == [True], 20, "the node to register")
    sent = {await submit(session, base, unique_photo(i)): unique_photo(i) for i in range(8)}

    async def some_done() -> bool:
        return any([(await status(session, base, t))["status"] == "completed" for t in sent])

    await wait_until(some_done, 15, "a first task to complete")
    # The node comes back on another address (a new DHCP lease): same key, same port.
    procs.restart("node", sim_node_argv(port, base, state, speed=0.004, ip="127.0.0.3"))
    await wait_until(lambda: [s.record.ip for s in registry.all()] == ["127.0.0.3"], 20, "the address to change")
    finals = await wait_finished(session, base, list(sent), 30)
    _check_content(finals, sent)
    await _check_downloads(session, base, sent)
    listed = await servers(session, base)
    assert [(s["server_id"], s["ip"]) for s in listed] == [("GPU-001", "127.0.0.3")]


async def test_node_that_accepts_and_never_answers(make_gateway, procs: Procs, session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Its health still answers, its jobs never do: each job is cut at dispatch.timeout."""
    gw = await make_gateway(**{**FAST, "dispatch.timeout": 1.0})
    base = base_url(gw)
    hang = await procs.serve("hang", lambda p: fault_node_argv(p, "hang"))
    good = await procs.serve("good", lambda p: fault_node_argv(p, "ok"))
    for port in (hang, good):
        await wait_answers(session, f"http://127.0.0.1:{port}/_stats")
    await register(session, base, hang)
    await register(session, base, good)
    started = asyncio.get_running_loop().time()
    sent = {await submit(session, base, unique_photo(i)): unique_photo(i) for i in range(4)}
    finals = await wait_finished(session, base, list(sent), 20)
    _check_content(finals, sent)
    await _check_downloads(session, base, sent)
    assert {f["server_id"] for f in finals.values()} == {"GPU-002"}
    assert any(f["attempts"] == 2 for f in finals.values()), "no job was sent to the hanging node"
    assert (await node_stats(session, hang))["answers"].get("hang", 0) >= 1
    assert asyncio.get_running_loop().time() - started < 8, "a hanging node held tasks past the per-job timeout"


async def test_result_type_comes_from_its_bytes_not_the_nodes_label(make_gateway, procs: Procs, session) -> None:  # type: ignore[no-untyped-def]
    gw = await make_gateway(**FAST)
    base = base_url(gw)
    port = await procs.serve("liar", lambda p: fault_node_argv(p, "mislabel"))
    await wait_answers(session, f"http://127.0.0.1:{port}/_stats")
    await register(session, base, port)
    photo = unique_photo(7)  # a PNG, answered as "image/jpeg"
    task_id = await submit(session, base, photo)
    assert (await wait_finished(session, base, [task_id], 15))[task_id]["status"] == "completed"
    async with session.get(f"{base}/api/v1/download/{task_id}") as resp:
        assert resp.status == 200 and digest(await resp.read()) == digest(photo)
        assert resp.headers["Content-Type"] == "image/png"
        assert resp.headers["Content-Disposition"].endswith('.png"')
