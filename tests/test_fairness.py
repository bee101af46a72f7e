"""Fair share between owners (issue 18): deficit round robin on megapixels, weighted by class.

The order itself (:class:`FairShare`, the local queue) is tested synchronously; then through
real gateways on both backends: a light owner's photo submitted after a heavy owner's batch
finishes long before the batch does, on one gateway and across two gateways on Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import FormData
from support import Gateway, image_bytes, make_config, wait_until

from photogate.app import create_app
from photogate.dispatch.fairshare import FairShare, Weights
from photogate.dispatch.queue import LocalQueue, fair_weights
from photogate.keys import GATEWAY
from photogate.models import TaskRecord, TaskStatus
from photogate.storage.protocols import TaskStore
from photogate.storage.redis.store import RedisStore

WEIGHTS = Weights({"paid": 4, "free": 1}, "free")


@dataclass(order=True)
class Item:
    created_at: float
    name: str = field(compare=False)
    owner: str | None = field(default=None, compare=False)
    priority_class: str | None = field(default=None, compare=False)
    cost: float = field(default=1.0, compare=False)


def _batch(owner: str | None, n: int, *, t0: float = 0.0, cls: str | None = None, mp: float = 1.0) -> list[Item]:
    return [Item(t0 + i, f"{owner}{i}", owner, cls, mp) for i in range(n)]


def _drain(share: FairShare[Item], n: int | None = None) -> list[str]:
    out: list[str] = []
    while (n is None or len(out) < n) and (item := share.pop()) is not None:
        out.append(item.name)
    return out


def _fair(*batches: list[Item], weights: Weights = WEIGHTS) -> FairShare[Item]:
    share: FairShare[Item] = FairShare(weights)
    for batch in batches:
        for item in batch:
            share.push(item)
    return share


# -- the order ------------------------------------------------------------------------------


def test_owners_take_turns_and_each_keeps_its_arrival_order() -> None:
    share = _fair(_batch("h", 6), _batch("a", 2, t0=10), _batch("b", 2, t0=20))
    assert _drain(share) == ["h0", "a0", "b0", "h1", "a1", "b1", "h2", "h3", "h4", "h5"]
    assert len(share) == 0 and share.pop() is None


def test_a_paid_owner_gets_four_times_the_megapixels_of_a_free_one_never_all() -> None:
    share = _fair(_batch("free", 40), _batch("paid", 40, t0=100, cls="paid"))
    first = _drain(share, 25)
    assert first[:10] == ["free0", "paid0", "paid1", "paid2", "paid3", "free1", "paid4", "paid5", "paid6", "paid7"]
    assert (sum(n.startswith("paid") for n in first), sum(n.startswith("free") for n in first)) == (20, 5)


def test_the_share_is_in_megapixels_not_photos() -> None:
    share = _fair(_batch("big", 10, mp=4.0), _batch("small", 40, t0=100, mp=1.0))
    first = _drain(share, 25)
    # Each round: one 4 MP photo, four 1 MP photos.
    assert sum(n.startswith("small") for n in first) == 20 and sum(n.startswith("big") for n in first) == 5


def test_no_weight_starves_anyone_and_huge_photos_take_no_extra_work() -> None:
    heavy = Weights({"vip": 1000, "free": 1}, "free")
    share = _fair(_batch("vip", 3000, cls="vip"), _batch("free", 3, t0=5000), weights=heavy)
    order = _drain(share, 3006)
    assert [i for i, n in enumerate(order) if n.startswith("free")] == [1000, 2001, 3002]
    # Photos of 500 MP against a 1 MP quantum alternate at once (rounds are skipped, not looped).
    share = _fair(_batch("a", 3, mp=500.0), _batch("b", 3, t0=10, mp=500.0))
    assert _drain(share) == ["a0", "b0", "a1", "b1", "a2", "b2"]


def test_tiny_photos_are_charged_a_minimum() -> None:
    share = _fair(_batch("thumbs", 20, mp=0.001), _batch("light", 1, t0=100))
    assert _drain(share).index("light0") == 4  # a quantum of 1 MP buys four 0.25 MP charges


def test_no_owner_counts_as_one_anonymous_owner_and_an_unknown_class_as_the_default() -> None:
    share = _fair(_batch(None, 3), _batch("x", 3, t0=10, cls="retired-class"))
    assert _drain(share) == ["None0", "x0", "None1", "x1", "None2", "x2"]


def test_a_pass_that_puts_every_task_back_leaves_the_order_as_it_was() -> None:
    batches = (_batch("h", 5), _batch("a", 1, t0=10), _batch("p", 6, t0=20, cls="paid"))
    expected = _drain(_fair(*batches))
    share = _fair(*batches)
    for _ in range(3):  # three passes that could place nothing (every node busy)
        popped = [share.pop() for _ in range(7)]
        share.refund([p for p in popped if p is not None])
    assert [i.name for i in share.order()] == expected
    assert _drain(share) == expected


def test_a_task_held_back_keeps_its_turn_and_costs_its_owner_nothing() -> None:
    share = _fair(_batch("h", 5), _batch("a", 2, t0=10))
    first, second = share.pop(), share.pop()
    assert first is not None and second is not None and (first.name, second.name) == ("h0", "a0")
    share.refund([first])  # h0 could not be placed now; a0 was: a has had its turn, h has not
    assert _drain(share) == ["h0", "h1", "a1", "h2", "h3", "h4"]


def test_an_owner_served_alone_through_many_passes_is_not_starved_when_others_arrive() -> None:
    """A heavy owner alone on two busy nodes: each placement pass pops many of its photos and
    places two. Its debt must stay within a photo (each pass advances the rounds as popping
    would), so when light owners arrive it still gets its turn every round."""
    share = _fair(_batch("h", 200))
    for _ in range(20):  # 20 passes, two photos placed in each
        popped = [share.pop() for _ in range(64)]
        share.refund([p for p in popped[2:] if p is not None])
    for i in range(10):
        for item in _batch(f"l{i}-", 5, t0=1000):
            share.push(item)
    first_round = _drain(share, 22)
    assert sum(name.startswith("h") for name in first_round) >= 2, first_round


# -- the local queue ------------------------------------------------------------------------


def _task(i: int, owner: str | None, *, created: float, cls: str | None = None) -> TaskRecord:
    return TaskRecord(task_id=f"{owner}-{i}", status=TaskStatus.QUEUED, created_at=created, updated_at=created,
                      input_mime="image/png", input_bytes=1, width=1000, height=1000, owner=owner,
                      priority_class=cls)


def _local(fair: bool) -> LocalQueue:
    from photogate.access_config import AccessConfig

    store: TaskStore = None  # type: ignore[assignment]  # recover() is not called here
    return LocalQueue(store, fair_weights(AccessConfig(fair_share=fair)))


def _names(queue: LocalQueue) -> list[str]:
    return [task_id for task_id, _mp, _wait in queue.waiting()]


async def test_fair_share_off_is_first_come_first_served() -> None:
    queue = _local(fair=False)
    for i in range(3):
        queue.accept(_task(i, "heavy", created=i))
    queue.accept(_task(0, "light", created=10))
    assert _names(queue) == ["heavy-0", "heavy-1", "heavy-2", "light-0"]
    assert [q.task.task_id for q in iter(queue.pop, None)] == ["heavy-0", "heavy-1", "heavy-2", "light-0"]


async def test_the_local_queue_serves_owners_fairly_and_the_eta_order_follows() -> None:
    queue = _local(fair=True)
    for i in range(3):
        queue.accept(_task(i, "heavy", created=i))
    queue.accept(_task(0, "light", created=10))
    expected = ["heavy-0", "light-0", "heavy-1", "heavy-2"]
    assert _names(queue) == expected  # what the status ETA's queue position reads
    assert [q.task.task_id for q in iter(queue.pop, None)] == expected


async def test_a_retry_returns_to_the_head_of_its_owner_after_its_backoff() -> None:
    queue = _local(fair=True)
    woken = asyncio.Event()
    queue.on_ready(woken.set)
    for i in range(3):
        queue.accept(_task(i, "heavy", created=i))
    first = queue.pop()
    assert first is not None and first.task.task_id == "heavy-0"
    queue.push_back([])  # the pass ends
    queue.submit(first.task, {"GPU-001"}, delay=0.05)
    assert [t for t, _mp, wait in queue.waiting() if wait > 0] == ["heavy-0"]
    woken.clear()
    await queue.fill(1)  # the next pass arms the backoff timer
    await asyncio.wait_for(woken.wait(), 5)  # the backoff timer wakes the dispatcher
    await queue.fill(1)
    retried = queue.pop()
    assert retried is not None and (retried.task.task_id, retried.tried) == ("heavy-0", {"GPU-001"})
    queue.close()


# -- the shared queue (Redis): the same order, decided where it is claimed ----------------------


async def test_the_shared_queue_is_claimed_in_fair_order_by_any_gateway(redis_config: dict[str, Any]) -> None:
    url, prefix = redis_config["storage.redis_url"], redis_config["storage.redis_prefix"]
    a, b = await RedisStore.open(url, prefix, "gw-a"), await RedisStore.open(url, prefix, "gw-b")
    try:
        for i in range(6):
            await a.insert_task(_task(i, "heavy", created=i))
        for i in range(2):
            await b.insert_task(_task(i, "light", created=10 + i))
            await b.insert_task(_task(i, "paid", created=20 + i, cls="paid"))
        assert await a.queue_length() == 10
        got = [t.task_id for t in await a.claim(2, WEIGHTS)] + [t.task_id for t in await b.claim(3, WEIGHTS)]
        assert got == ["heavy-0", "light-0", "paid-0", "paid-1", "heavy-1"]
        assert await b.queue_length() == 5
        # A claim handed back (its gateway lost it) returns to the head of its owner's queue.
        assert await b.unclaim(["paid-1"]) == 1
        rest = [t.task_id for t in await a.claim(10, WEIGHTS)]
        assert rest == ["light-1", "paid-1", "heavy-2", "heavy-3", "heavy-4", "heavy-5"]
        # Oldest first again once the fair share is off, whatever a fair claim left behind.
        await a.insert_task(_task(9, "late", created=99))
        await a.insert_task(_task(8, "early", created=1))
        assert [t.task_id for t in await b.claim(10)] == ["early-8", "late-9"]
        assert await a.queue_length() == 0
    finally:
        await a.close()
        await b.close()


# -- through gateways ---------------------------------------------------------------------------


#: The open API's owner is the client address (``ip:<address>``), here from X-Forwarded-For (the
#: test client is a trusted proxy); no rate limit gets in the way.
OWNERS = {"server.trusted_proxies": ["127.0.0.1"], "rate_limit.enabled": False}


async def _submit_as(gw: Gateway, address: str) -> str:
    form = FormData()
    form.add_field("file", image_bytes(), filename="photo.png", content_type="image/png")
    resp = await gw.client.post("/api/v1/enhance", data=form, headers={"X-Forwarded-For": address})
    body = await resp.json()
    assert resp.status == 200, body
    return str(body["task_id"])


async def _completed(gw: Gateway, ids: list[str]) -> int:
    done = 0
    for task_id in ids:
        done += (await gw.status(task_id))["status"] == "completed"
    return done


async def _light_finishes_before_the_batch(heavy_gw: Gateway, light_gw: Gateway, node: Any) -> None:
    """A heavy owner queues 40 photos on a one-slot node; a light owner's one photo, sent
    after them, is done while most of the batch still waits."""
    heavy = list(await asyncio.gather(*(_submit_as(heavy_gw, "10.0.0.1") for _ in range(40))))
    light = await _submit_as(light_gw, "10.0.0.2")
    before = await _completed(heavy_gw, heavy)
    final = await light_gw.wait_done(light, 30)
    assert final["status"] == "completed"
    waited = await _completed(heavy_gw, heavy) - before
    assert before < 25 and waited <= 10, (
        f"the light owner's photo, sent when {before} of the heavy owner's 40 were done, waited for {waited} more")
    await wait_until(lambda: _all_done(heavy_gw, heavy), 60, "the heavy batch to finish")
    assert node.jobs == 41


async def _all_done(gw: Gateway, ids: list[str]) -> bool:
    return await _completed(gw, ids) == len(ids)


async def test_a_light_owner_is_not_stuck_behind_a_heavy_batch(
        start_gateway: Callable[..., Awaitable[Gateway]], nodes: Any) -> None:
    gw = await start_gateway(**OWNERS)
    node = await nodes(delay=0.1)
    await gw.register(node)
    await _light_finishes_before_the_batch(gw, gw, node)


async def test_fair_share_holds_across_two_gateways_on_redis(
        aiohttp_client: Any, tmp_path: Path, redis_config: dict[str, Any], nodes: Any) -> None:
    config = make_config(tmp_path, **{**redis_config, **OWNERS})
    a = Gateway(await aiohttp_client(create_app(config)))
    b = Gateway(await aiohttp_client(create_app(config)))
    node = await nodes(delay=0.1)
    await a.register(node)
    await wait_until(lambda: _serving(b), 5, "the second gateway to see the node")
    await _light_finishes_before_the_batch(a, b, node)


async def _serving(gw: Gateway) -> bool:
    return bool(gw.app[GATEWAY].registry.candidates(True))


async def test_with_fair_share_off_the_batch_goes_first(
        start_gateway: Callable[..., Awaitable[Gateway]], nodes: Any) -> None:
    gw = await start_gateway(**OWNERS, **{"access.fair_share": False})
    node = await nodes(delay=0.01)
    await gw.register(node)
    heavy = [await _submit_as(gw, "10.0.0.1") for _ in range(10)]
    light = await _submit_as(gw, "10.0.0.2")
    assert (await gw.wait_done(light, 30))["status"] == "completed"
    assert await _completed(gw, heavy) == 10  # first come, first served, as before
