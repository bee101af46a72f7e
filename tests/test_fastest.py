"""The ``fastest`` strategy, synchronously with a fake clock and a seeded RNG."""

from __future__ import annotations

import random
from collections import Counter

from photogate.balancing import JobView, NodeView, load_strategy
from strategies.fastest import Fastest


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def node(sid: str, inflight: int = 0, slots: int = 1, throughput: float | None = None) -> NodeView:
    health = {"throughput": throughput} if throughput is not None else {}
    return NodeView(sid, "127.0.0.1:1", inflight, slots, 1, health)


def job(task_id: str, mp: float) -> JobView:
    return JobView(task_id, mp, int(mp * 300_000))


def run(strategy: Fastest, clock: Clock, sid: str, j: JobView, seconds: float) -> None:
    strategy.on_dispatched(sid, j)
    clock.now += seconds
    strategy.on_completed(sid, j, seconds, True)


def test_learns_speed_from_finished_jobs_over_the_reported_prior() -> None:
    clock = Clock()
    strategy = Fastest({}, random.Random(1), clock=clock)
    fast = node("GPU-001", throughput=1.0)  # the node under-reports itself
    assert strategy.speed(fast) == 1.0
    run(strategy, clock, "GPU-001", job("a", 4.0), 1.0)  # 4 MP/s measured, blended with the prior
    assert abs(strategy.speed(fast) - (0.3 * 4.0 + 0.7 * 1.0)) < 1e-9
    for i in range(30):
        run(strategy, clock, "GPU-001", job(f"b{i}", 4.0), 1.0)
    assert abs(strategy.speed(fast) - 4.0) < 0.01  # history wins


def test_large_photo_goes_to_the_fast_node_even_when_a_slow_node_is_idle() -> None:
    clock = Clock()
    strategy = Fastest({}, random.Random(1), clock=clock)
    slow, fast = node("GPU-001", throughput=1.0), node("GPU-002", throughput=4.0)
    # The fast node is busy with a 2 MP photo that started now (0.5 s left).
    assert strategy.choose([slow, fast], job("busy", 2.0)).server_id == "GPU-002"
    strategy.on_dispatched("GPU-002", job("busy", 2.0))
    fast_busy = node("GPU-002", inflight=1, throughput=4.0)
    big = job("big", 12.0)
    # Slow: 12 s. Fast: 0.5 s backlog + 3 s.
    assert strategy.expected_finish(slow, big, clock.now) == 12.0
    assert strategy.expected_finish(fast_busy, big, clock.now) == 3.5
    strategy.begin_pass()
    assert strategy.choose([slow, fast_busy], big) is None  # held back for the fast node
    # While it is held, a small photo may use the idle slow node: 0.5 s there beats
    # waiting behind the big one (3.5 s + 0.125 s).
    assert strategy.choose([slow, fast_busy], job("small", 0.5)).server_id == "GPU-001"
    clock.now += 0.5
    strategy.on_completed("GPU-002", job("busy", 2.0), 0.5, True)
    strategy.begin_pass()
    assert strategy.choose([slow, fast], big).server_id == "GPU-002"


def test_small_photo_goes_to_the_idle_slow_node_when_the_fast_queue_is_long() -> None:
    clock = Clock()
    strategy = Fastest({}, random.Random(1), clock=clock)
    slow, fast = node("GPU-001", throughput=1.0), node("GPU-002", throughput=4.0, slots=2)
    strategy.choose([slow, fast], job("x", 1.0))
    for i in range(4):  # 4 x 8 MP handed to the two-slot fast node: 4 s of work
        strategy.on_dispatched("GPU-002", job(f"q{i}", 8.0))
    small = job("small", 0.5)
    busy_fast = node("GPU-002", inflight=4, slots=2, throughput=4.0)
    strategy.begin_pass()
    assert strategy.choose([slow, busy_fast], small).server_id == "GPU-001"
    # Time passes: the fast node's backlog shrinks until it wins again (held for it).
    clock.now += 3.9
    strategy.begin_pass()
    assert strategy.choose([slow, busy_fast], small) is None


def test_no_job_is_held_for_a_node_that_is_overdue() -> None:
    """A fast node that stops answering (hung, throttled) must not keep photos waiting."""
    clock = Clock()
    strategy = Fastest({}, random.Random(1), clock=clock)
    slow, fast_busy = node("GPU-001", throughput=1.0), node("GPU-002", inflight=1, throughput=4.0)
    strategy.on_dispatched("GPU-002", job("stuck", 4.0))  # 1 s expected
    big = job("big", 8.0)
    strategy.begin_pass()
    assert strategy.choose([slow, fast_busy], big) is None  # 1 s + 2 s beats 8 s: held
    clock.now += 3.5  # > 2 x 1 s + 1 s: overdue
    strategy.begin_pass()
    assert strategy.overdue(fast_busy, clock.now)
    assert strategy.choose([slow, fast_busy], big).server_id == "GPU-001"
    assert strategy.choose([fast_busy], big) is None  # nothing free: the job waits
    clock.now += 1.0
    strategy.on_completed("GPU-002", job("stuck", 4.0), 4.5, True)  # it answers again
    assert not strategy.overdue(node("GPU-002", throughput=4.0), clock.now)


def test_falls_back_to_least_busy_without_history_and_shares_equal_nodes() -> None:
    strategy = Fastest({}, random.Random(3), clock=Clock())
    unknown = [node("GPU-001", inflight=1, slots=2), node("GPU-002"), node("GPU-003", inflight=2)]
    assert strategy.choose(unknown, job("j", 1.0)).server_id == "GPU-002"
    equal = [node("GPU-001", throughput=2.0), node("GPU-002", throughput=2.0)]
    counts = Counter(strategy.choose(equal, job(str(i), 1.0)).server_id for i in range(1000))
    assert set(counts) == {"GPU-001", "GPU-002"} and abs(counts["GPU-001"] - 500) < 80


def test_loads_by_name_and_plans_ahead() -> None:
    strategy = load_strategy("fastest", {"alpha": 0.5})
    assert type(strategy).__name__ == "Fastest" and strategy.plans_ahead is True


async def test_fastest_in_the_gateway_holds_big_photos_for_the_fast_node(make_gateway, nodes) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    from support import image_bytes, wait_until

    from photogate.keys import GATEWAY

    gateway = await make_gateway(**{"balancer.strategy": "fastest"})
    slow = await nodes(delay=0.4, throughput=0.05)  # a 0.5 MP photo: 10 s expected here
    fast = await nodes(delay=0.05, throughput=5.0)  # 0.1 s expected here
    await gateway.register(slow)
    await gateway.register(fast)
    registry = gateway.app[GATEWAY].registry
    await wait_until(lambda: all(s.health.get("throughput") for s in registry.all()), 5, "health reports")
    photo = image_bytes(1000, 500)
    ids = await asyncio.gather(*(gateway.submit(photo) for _ in range(6)))
    finals = await asyncio.gather(*(gateway.wait_done(t, 30) for t in ids))
    assert [f["status"] for f in finals] == ["completed"] * 6
    # Waiting for the fast node beats the idle slow one every time; never two at once there.
    assert (fast.jobs, slow.jobs) == (6, 0)
    assert fast.max_busy == 1
