"""Pipelined nodes: with short jobs ``fastest`` lets a node hold its next job while it runs
the current one (the transfer and the gateway's bookkeeping overlap inference); with long
jobs, or with a strategy that does not ask, a job goes only to a free slot (late binding);
a node that dies holding a queued job loses neither job."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from aiohttp import web
from support import SECRET, FakeNode, Gateway, image_bytes

from photogate.balancing import JobView, NodeView, RoundRobin, Strategy, StrategyError, load_strategy
from photogate.keys import GATEWAY
from strategies.fastest import Fastest

PHOTO_MP = 64 * 48 / 1e6


class QueueNode(FakeNode):
    """A node like gpunode: one slot, a queue of ``queue_size`` behind it, the input echoed
    back after ``seconds`` of "inference"; it counts jobs that arrived while another ran.
    Armed with ``die_holding``, it dies (every connection reset, now and after) as soon as
    it holds that many jobs."""

    def __init__(self, seconds: float, queue_size: int = 4) -> None:
        super().__init__(slots=1)
        self.seconds = seconds
        self.queue_size = queue_size
        #: The jobs it takes at once before it answers 503 (its queue full, whatever it reported).
        self.accepts = 1 + queue_size
        self.held: list[bytes] = []
        self.running = False
        self.arrived_while_running = 0
        self.max_held = 0
        self.refused = 0
        self.die_holding: int | None = None
        self.died_holding: list[bytes] = []
        self.dead = asyncio.Event()
        self._slot = asyncio.Semaphore(1)
        self._speed: float | None = None

    async def _health(self, request: web.Request) -> web.Response:
        if self.dead.is_set():
            return _reset(request)
        return web.json_response({"status": "ok", "busy": int(self.running), "queued": len(self.held) - self.running,
                                  "slots": 1, "queue_size": self.queue_size, "scale": 1, "throughput": self._speed})

    async def _enhance(self, request: web.Request) -> web.StreamResponse:
        if self.dead.is_set():
            return _reset(request)
        assert request.headers.get("Authorization") == f"Bearer {self.token}"
        body = await request.read()
        if len(self.held) >= self.accepts:
            self.refused += 1
            return web.json_response({"error": "queue full"}, status=503, headers={"Retry-After": "1"})
        self.arrived_while_running += self.running
        self.held.append(body)
        self.max_held = max(self.max_held, len(self.held))
        try:
            if self.die_holding is not None and len(self.held) >= self.die_holding:
                self.died_holding = list(self.held)
                self.dead.set()
            async with self._slot:
                if self.dead.is_set():
                    return _reset(request)
                self.running = True
                began = time.perf_counter()
                try:
                    await asyncio.wait_for(self.dead.wait(), self.seconds)
                    return _reset(request)  # died mid-inference
                except asyncio.TimeoutError:
                    if self.dead.is_set():  # died as this job ended: its answer is lost too
                        return _reset(request)
                finally:
                    self.running = False
                self._speed = PHOTO_MP / (time.perf_counter() - began)
            self.jobs += 1
            return web.Response(body=body, content_type="image/png")
        finally:
            self.held.remove(body)


def _reset(request: web.Request) -> web.Response:
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=500)


async def _fleet(make_gateway: Any, strategy: str, *nodes: QueueNode) -> Gateway:
    gw: Gateway = await make_gateway(**{"balancer.strategy": strategy})
    for node in nodes:
        await node.start()
        await gw.register(node, queue_size=node.queue_size)
    return gw


async def _run(gw: Gateway, photos: list[bytes], timeout: float = 30.0) -> dict[str, bytes]:
    # Uploaded at once: a backlog, as many clients make.
    ids = dict(zip(await asyncio.gather(*(gw.submit(photo) for photo in photos)), photos))
    for task_id, photo in ids.items():
        body = await gw.wait_done(task_id, timeout)
        assert body["status"] == "completed", body
        resp = await gw.client.get(f"/api/v1/download/{task_id}")
        assert resp.status == 200 and await resp.read() == photo, f"task {task_id}: wrong result"
    return ids


def _photos(n: int, seed: int = 0) -> list[bytes]:
    return [image_bytes(64, 48, color=(i % 256, seed, 7)) for i in range(n)]


# -- through a gateway ---------------------------------------------------------------------


async def test_short_jobs_reach_the_node_before_the_running_one_ends(start_gateway: Any) -> None:
    # On both stores (Redis counts a node's jobs across gateways: the limit there too).
    node = QueueNode(seconds=0.02)
    gw = await _fleet(start_gateway, "fastest", node)
    try:
        await _run(gw, _photos(40))
        gateway = gw.app[GATEWAY]
        pace = gateway.dispatcher.estimator.speeds.pace(gateway.registry.get(node.server_id))
    finally:
        await node.stop()
    assert node.arrived_while_running >= 5, "fastest never let the node hold its next job"
    listed = await gw.client.get("/webhook/servers", headers={"X-Webhook-Secret": SECRET})
    server = (await listed.json())["data"]["servers"][0]
    assert server["queue_room"] == 4 and server["dispatch_gap_ms"] > 0, server
    # The ETAs' pace counts a queued job from the answer before it, not from its dispatch
    # (which would about double it).
    assert pace is not None and pace.seconds(PHOTO_MP) < 0.036, pace
    # Within the pipeline bound (a slot + 2 by default), never over the node's queue.
    assert node.max_held <= 3 and node.refused == 0


async def test_long_jobs_keep_late_binding(make_gateway: Any) -> None:
    node = QueueNode(seconds=0.8)
    gw = await _fleet(make_gateway, "fastest", node)
    try:
        await _run(gw, _photos(4))
        state = gw.app[GATEWAY].registry.get(node.server_id)
        assert state is not None and state.gap is not None  # the gap was measured, and judged small
    finally:
        await node.stop()
    assert node.arrived_while_running == 0 and node.max_held == 1


async def test_a_strategy_that_does_not_ask_gets_free_slots_only(make_gateway: Any) -> None:
    node = QueueNode(seconds=0.02)
    gw = await _fleet(make_gateway, "least_busy", node)
    try:
        await _run(gw, _photos(20))
    finally:
        await node.stop()
    assert node.arrived_while_running == 0 and node.max_held == 1


async def test_a_node_that_dies_holding_a_queued_job_loses_neither(make_gateway: Any) -> None:
    victim, other = QueueNode(seconds=0.02), QueueNode(seconds=0.02)
    gw = await _fleet(make_gateway, "fastest", victim, other)
    try:
        await _run(gw, _photos(30, seed=1))  # both nodes learn; pipelining starts
        victim.die_holding = 2
        sent = await _run(gw, _photos(40, seed=2), timeout=30)
    finally:
        await victim.stop()
        await other.stop()
    assert len(victim.died_holding) == 2, "the node never held a running and a queued job"
    # Both jobs it held were run again elsewhere: completed with their own photo.
    assert all(photo in sent.values() for photo in victim.died_holding)
    for task_id, photo in sent.items():
        if photo in victim.died_holding:
            body = await gw.status(task_id)
            assert body["attempts"] >= 2, body


async def test_a_full_node_queue_is_still_a_back_off(make_gateway: Any) -> None:
    node = QueueNode(seconds=0.02, queue_size=4)
    gw = await _fleet(make_gateway, "fastest", node)
    try:
        await _run(gw, _photos(20))
        node.accepts = 1  # its queue is full (another gateway's jobs): 503 beyond its slot
        await _run(gw, _photos(20, seed=3))
    finally:
        await node.stop()
    assert node.refused >= 1  # the gateway had a job queued there, was told no, and waited


# -- the strategy, synchronously -------------------------------------------------------------


def _view(inflight: int = 0, *, gap: float | None = 0.003, queue_room: int = 4, depth: int = 0,
          throughput: float = 0.15) -> NodeView:
    return NodeView("GPU-001", "127.0.0.1:1", inflight, 1, 1, {"throughput": throughput},
                    queue_room=queue_room, depth=depth, gap=gap)


def _learned(seconds: float, mp: float = 0.003) -> Fastest:
    now = [100.0]
    strategy = Fastest({}, random.Random(1), clock=lambda: now[0])
    strategy.choose([_view(throughput=mp / seconds)], JobView("warm", mp, 100))
    strategy.on_dispatched("GPU-001", JobView("warm", mp, 100))
    now[0] += seconds
    strategy.on_completed("GPU-001", JobView("warm", mp, 100), seconds, True)
    return strategy


def test_depth_comes_from_the_gap_over_the_job_time() -> None:
    assert _learned(0.020).pipeline_depth(_view(gap=0.003)) == 2  # 3 ms gap, 20 ms jobs: 1, and 1 spare
    assert _learned(0.002).pipeline_depth(_view(gap=0.003)) == 2  # jobs shorter than the gap: 2 (the max)
    assert load_strategy("fastest", {"pipeline_max": 4}).pipeline_depth(_view()) == 0  # no history yet
    wide = _learned(0.002)
    wide.pipeline_max = 4
    assert wide.pipeline_depth(_view(gap=0.003)) == 3  # ceil(1.5) + 1
    assert _learned(0.500).pipeline_depth(_view(gap=0.003)) == 0  # long jobs: late binding
    assert _learned(0.020).pipeline_depth(_view(gap=None)) == 0  # no gap measured yet
    assert _learned(0.002).pipeline_depth(_view(gap=0.003, queue_room=1)) == 1  # within its queue room
    assert _learned(0.020).pipeline_depth(_view(gap=0.003, queue_room=0)) == 0  # a node without a queue


def test_a_long_job_takes_no_pipeline_place_even_on_a_pipelined_node() -> None:
    strategy = _learned(0.020)
    busy = _view(inflight=1, depth=1)
    strategy.begin_pass()
    assert strategy.choose([busy], JobView("short", 0.003, 100)) == busy
    strategy.begin_pass()
    assert strategy.choose([busy], JobView("long", 3.0, 100)) is None  # held: late binding


def test_a_short_job_is_not_queued_behind_a_long_one() -> None:
    strategy = _learned(0.020)  # the node's jobs are short: it is pipelined ...
    strategy.on_dispatched("GPU-001", JobView("big", 0.3, 100))  # ... but now runs a 2 s job
    busy = _view(inflight=1, depth=2)
    strategy.begin_pass()
    assert strategy.choose([busy], JobView("short", 0.003, 100)) is None  # held, not committed


def test_pipeline_options_are_checked_and_other_strategies_never_pipeline() -> None:
    assert load_strategy("fastest", {"pipeline_max": 0}).pipeline_depth(_view()) == 0
    for bad in ({"pipeline_max": -1}, {"pipeline_max": 1.5}, {"pipeline_ratio": 0}, {"pipeline_ratio": "x"}):
        try:
            load_strategy("fastest", bad)
        except StrategyError as exc:
            assert "pipeline_" in str(exc)
        else:
            raise AssertionError(f"{bad} accepted")
    assert Strategy.pipeline_depth(RoundRobin(), _view()) == 0
    assert load_strategy("least_busy").pipeline_depth(_view()) == 0
