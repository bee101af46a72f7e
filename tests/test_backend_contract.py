"""The backend contract (issue 8): the same tests against the embedded SQLite store and
against Redis (a real ``redis-server``). Whatever a user or a node sees must not depend on
``storage.backend``. The stores are used through their protocols (``storage.protocols``), and
each backend class is checked to provide exactly the protocols it declares."""

from __future__ import annotations

import asyncio
import inspect
import time
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData
from redis_support import unique_prefix
from support import SECRET, Gateway, image_bytes, make_config, wait_until

from photogate.models import TaskRecord, TaskStatus
from photogate.storage import protocols
from photogate.storage.protocols import ClusterStore, SQLRunner, Store
from photogate.storage.redis.store import RedisStore
from photogate.storage.sqlite.store import SQLiteStore


@pytest.fixture
def open_store(backend: dict[str, Any], tmp_path: Path) -> Callable[[], Awaitable[Store]]:
    """Open the bare store of the backend (again: a second open sees what the first wrote)."""

    async def open_() -> Store:
        if backend:
            return await RedisStore.open(backend["storage.redis_url"], backend["storage.redis_prefix"], "gw-test")
        return await SQLiteStore.open(tmp_path / "photogate.db")

    return open_


@pytest.fixture
async def store(open_store: Callable[[], Awaitable[Store]]) -> AsyncIterator[Store]:
    opened = await open_store()
    yield opened
    await opened.close()


# -- each backend provides its protocols, and nothing public beyond them ----------------------------

#: What each backend class declares it is (besides :meth:`open`, which only the factory calls).
BACKENDS: dict[type, tuple[type, ...]] = {SQLiteStore: (Store, SQLRunner), RedisStore: (ClusterStore,)}


def _members(protocol: type) -> set[str]:
    """The methods a protocol declares, its bases' included."""
    return {name for klass in protocol.__mro__ if klass.__module__ == protocols.__name__
            for name, value in vars(klass).items() if inspect.isfunction(value) and not name.startswith("_")}


def _signature(fn: Callable[..., Any]) -> str:
    """Names, kinds, defaults and resolved types (as text: two modules' ``TypeVar("T")`` are
    different objects)."""
    hints = typing.get_type_hints(fn)
    sig = inspect.signature(fn)
    return str(sig.replace(parameters=[p.replace(annotation=hints.get(p.name, p.annotation))
                                       for p in sig.parameters.values()],
                           return_annotation=hints.get("return", sig.return_annotation)))


@pytest.mark.parametrize("backend_class", list(BACKENDS), ids=lambda cls: cls.__name__)
def test_the_backend_provides_its_protocols_with_their_signatures(backend_class: type) -> None:
    declared = set().union(*(_members(protocol) for protocol in BACKENDS[backend_class]))
    for name in sorted(declared):
        owner = next(klass for klass in backend_class.__mro__ if name in vars(klass))
        assert owner.__module__ != protocols.__name__, f"{backend_class.__name__} does not implement {name}"
        wanted = next(klass for klass in protocols.__dict__.values()
                      if isinstance(klass, type) and klass.__module__ == protocols.__name__ and name in vars(klass))
        assert _signature(getattr(backend_class, name)) == _signature(getattr(wanted, name)), name
        assert inspect.iscoroutinefunction(getattr(backend_class, name)) == inspect.iscoroutinefunction(
            getattr(wanted, name)), name
    public = {name for klass in backend_class.__mro__ if klass.__module__.startswith("photogate.storage.")
              and klass.__module__ != protocols.__name__
              for name, value in vars(klass).items()
              if not name.startswith("_") and (inspect.isfunction(value) or isinstance(value, classmethod))}
    assert public - declared == {"open"}, f"public methods no protocol declares: {sorted(public - declared - {'open'})}"


def test_both_backends_are_the_same_store() -> None:
    for name in sorted(_members(Store)):
        assert _signature(getattr(SQLiteStore, name)) == _signature(getattr(RedisStore, name)), name
    assert SQLiteStore.ERRORS == RedisStore.ERRORS


def _task(task_id: str, created: float, **fields: Any) -> TaskRecord:
    return TaskRecord(task_id=task_id, status=TaskStatus.QUEUED, created_at=created, updated_at=created,
                      input_mime="image/png", input_bytes=123, width=64, height=48, params={"scale": 2.0},
                      **fields)


# -- the task store ----------------------------------------------------------------------------


async def test_task_round_trip_and_updates(store: Store) -> None:
    task = _task("a" * 32, 1000.5, owner="user-1")
    await store.insert_task(task)
    got = await store.get_task(task.task_id)
    assert got == task
    await store.update_task(task.task_id, status=TaskStatus.PROCESSING, server_id="GPU-001", attempts=1,
                            started_at=1001.25)
    got = await store.get_task(task.task_id)
    assert (got.status, got.server_id, got.attempts, got.started_at) == (TaskStatus.PROCESSING, "GPU-001", 1, 1001.25)
    assert got.updated_at > task.updated_at
    await store.update_task(task.task_id, status=TaskStatus.COMPLETED, result_mime="image/png", result_bytes=999,
                            error=None, server_id=None)
    got = await store.get_task(task.task_id)
    assert (got.status, got.result_mime, got.result_bytes, got.error, got.server_id) == (
        TaskStatus.COMPLETED, "image/png", 999, None, None)
    assert got.params == {"scale": 2.0} and got.owner == "user-1"
    assert await store.get_task("b" * 32) is None
    with pytest.raises(ValueError, match="not updatable"):
        await store.update_task(task.task_id, width=1)


async def test_task_listing_counts_expiry_and_delete(store: Store) -> None:
    for i, status in enumerate([TaskStatus.QUEUED, TaskStatus.QUEUED, TaskStatus.PROCESSING, TaskStatus.FAILED]):
        await store.insert_task(_task(f"{i:032x}", 100.0 + i))
        if status is not TaskStatus.QUEUED:
            await store.update_task(f"{i:032x}", status=status)
    assert await store.count_tasks() == {"queued": 2, "processing": 1, "completed": 0, "failed": 1}
    oldest = await store.list_tasks([TaskStatus.QUEUED, TaskStatus.PROCESSING])
    assert [t.task_id[-1] for t in oldest] == ["0", "1", "2"]
    newest = await store.list_tasks(list(TaskStatus), 2, newest_first=True)
    assert [t.task_id[-1] for t in newest] == ["3", "2"]
    # Only finished tasks expire, by the time they were last touched.
    assert await store.expired_task_ids(time.time() - 3600) == []
    assert await store.expired_task_ids(time.time() + 1) == [f"{3:032x}"]
    await store.delete_task(f"{3:032x}")
    assert await store.get_task(f"{3:032x}") is None
    assert (await store.count_tasks())["failed"] == 0


async def test_tasks_survive_a_reopen(store: Store, open_store: Callable[[], Awaitable[Store]]) -> None:
    await store.insert_task(_task("c" * 32, 5.0))
    await store.update_task("c" * 32, status=TaskStatus.COMPLETED, result_mime="image/jpeg", result_bytes=7)
    again = await open_store()
    try:
        got = await again.get_task("c" * 32)
        assert got is not None and got.status is TaskStatus.COMPLETED and got.result_mime == "image/jpeg"
    finally:
        await again.close()


# -- the node registry's store -------------------------------------------------------------------


async def test_node_ids_keys_addresses_and_the_counter(store: Store,
                                                      open_store: Callable[[], Awaitable[Store]]) -> None:
    fields = {"slots": 2, "weight": None, "info": {"model": "m"}}
    a, created, _ = await store.register_node("10.0.0.1", 9000, "key-aaaaaaaa", fields, "token-a")
    b, _, _ = await store.register_node("10.0.0.2", 9000, None, fields, "token-b")
    assert (a.server_id, b.server_id, created) == ("GPU-001", "GPU-002", True)
    assert (a.slots, a.weight, a.info, a.node_token) == (2, 1, {"model": "m"}, "token-a")
    # Same key, new address: the same id, the address updated, the old one reported.
    moved, created, previous = await store.register_node("10.0.0.9", 9001, "key-aaaaaaaa",
                                                         {"slots": None, "weight": 5, "info": {}}, "token-x")
    assert (moved.server_id, created, previous, moved.address) == ("GPU-001", False, "10.0.0.1:9000", "10.0.0.9:9001")
    assert (moved.slots, moved.weight, moved.node_token) == (2, 5, "token-a")  # kept: slots and the token
    # Same address, no key: the same id.
    again, created, previous = await store.register_node("10.0.0.2", 9000, None, fields, "token-y")
    assert (again.server_id, created, previous) == ("GPU-002", False, None)
    await store.set_node_draining("GPU-002", True)
    await store.delete_node("GPU-001")
    c, _, _ = await store.register_node("10.0.0.1", 9000, "key-aaaaaaaa", fields, "token-c")
    assert c.server_id == "GPU-003"  # the counter never hands an id out twice
    await store.set_node_offline("GPU-003")  # unregistered: kept, offline
    reopened = await open_store()
    try:
        nodes = await reopened.load_nodes()
    finally:
        await reopened.close()
    assert [(n.server_id, n.address, n.draining, n.offline) for n in nodes] == [
        ("GPU-002", "10.0.0.2:9000", True, False), ("GPU-003", "10.0.0.1:9000", False, True)]
    # Its key, from another address, brings it back online with its id and token.
    back, created, previous = await store.register_node("10.0.0.7", 9000, "key-aaaaaaaa", fields, "token-z")
    assert (back.server_id, created, previous, back.offline, back.node_token) == (
        "GPU-003", False, "10.0.0.1:9000", False, "token-c")


# -- what several gateways share (Redis only) -------------------------------------------------------


@pytest.fixture
async def two_gateways(redis_config: dict[str, Any]) -> AsyncIterator[tuple[ClusterStore, ClusterStore]]:
    """Two gateways' stores on one Redis and one prefix."""
    url, prefix = redis_config["storage.redis_url"], redis_config["storage.redis_prefix"]
    a, b = await RedisStore.open(url, prefix, "gw-a"), await RedisStore.open(url, prefix, "gw-b")
    yield a, b
    await a.close()
    await b.close()


async def test_shared_queue_claims_hand_backs_and_the_reaper(two_gateways: tuple[ClusterStore, ClusterStore]) -> None:
    a, b = two_gateways
    for i in range(3):
        await a.insert_task(_task(f"{i:032x}", 1.0 + i))
    t0, t1, t2 = (f"{i:032x}" for i in range(3))
    assert await a.queue_length() == 3
    assert [t.task_id for t in await a.claim(2)] == [t0, t1]
    assert (await a.queue_length(), await a.claimed_ids()) == (1, {t0, t1})
    # A processing task handed back is queued again, off its node, at its place in the queue.
    await a.update_task(t0, status=TaskStatus.PROCESSING, server_id="GPU-001")
    assert await a.unclaim([t0]) == 1
    got = await a.get_task(t0)
    assert got is not None and (got.status, got.server_id) == (TaskStatus.QUEUED, None)
    assert await a.claimed_ids() == {t1}
    assert [t.task_id for t in await b.claim(5)] == [t0, t2]
    await b.update_task(t2, status=TaskStatus.PROCESSING, server_id="GPU-002")
    await b.update_task(t0, status=TaskStatus.COMPLETED)  # finished: no longer a claim
    assert await b.claimed_ids() == {t2}
    # The reaper refuses a live gateway; a dead (or stopping) one's unfinished claims go back.
    await b.heartbeat(30)
    assert await a.reap("gw-b") == -1
    assert await a.reap("gw-b", force=True) == 1
    got = await a.get_task(t2)
    assert got is not None and (got.status, got.server_id) == (TaskStatus.QUEUED, None)
    assert (await a.queue_length(), await b.claimed_ids()) == (1, set())
    assert (await a.get_task(t0) or _task("", 0)).status is TaskStatus.COMPLETED


async def test_node_slots_heartbeats_and_ghosts(two_gateways: tuple[ClusterStore, ClusterStore]) -> None:
    a, b = two_gateways
    assert await b.acquire_slot("GPU-001", 1) == 1
    assert await a.acquire_slot("GPU-001", 1) == -1  # all taken, whichever gateway asks
    assert (await a.fleet()).taken == {"GPU-001": 1}
    await b.heartbeat(0.001)
    await wait_until(lambda: a.dead_gateways(), what="gw-b's heartbeat to expire")
    assert await a.dead_gateways() == ["gw-b"]
    # Its job may still run there: counted as a ghost until it expires or the node is idle.
    assert await a.reap("gw-b", ghost_seconds=60) == 0
    assert (await a.fleet()).taken == {"GPU-001": 1}
    assert await a.acquire_slot("GPU-001", 1) == -1
    assert await a.release_slot("GPU-001") == 0  # a never held one there: nothing to give back
    assert await a.lease(5) and not await b.lease(5)
    await a.drop_lease()
    assert await b.lease(5)


# -- the gateway, seen from outside ----------------------------------------------------------------


async def test_photo_round_trip(start_gateway: Callable[..., Awaitable[Gateway]], nodes: Any) -> None:
    gw = await start_gateway()
    node = await nodes()
    body = await gw.register(node)
    assert body["server_id"] == "GPU-001"
    photo = image_bytes(40, 30)
    task_id = await gw.submit(photo)
    final = await gw.wait_done(task_id)
    assert final["status"] == "completed" and final["server_id"] == "GPU-001"
    assert final["result_url"] == f"/api/v1/download/{task_id}"
    resp = await gw.client.get(final["result_url"])
    assert resp.status == 200 and resp.headers["Content-Type"] == "image/png"
    assert len(await resp.read()) > 0
    resp = await gw.client.get("/api/v1/status/" + "0" * 32)
    assert resp.status == 404 and "unknown task" in (await resp.json())["error"]
    health = await (await gw.client.get("/api/v1/health")).json()
    assert health["status"] == "healthy" and health["tasks"]["completed"] == 1


async def test_register_list_unregister(start_gateway: Callable[..., Awaitable[Gateway]], nodes: Any) -> None:
    gw = await start_gateway()
    first, second = await nodes(), await nodes()
    assert (await gw.register(first, node_key="node-key-1"))["server_id"] == "GPU-001"
    assert (await gw.register(second))["server_id"] == "GPU-002"
    assert (await gw.register(first, node_key="node-key-1"))["server_id"] == "GPU-001"
    resp = await gw.client.get("/webhook/servers", headers={"X-Webhook-Secret": SECRET})
    listed = (await resp.json())["data"]
    assert [(s["server_id"], s["port"]) for s in listed["servers"]] == [("GPU-001", first.port),
                                                                        ("GPU-002", second.port)]
    resp = await gw.client.post("/webhook/unregister", json={"ip": "127.0.0.1", "port": first.port, "secret": SECRET,
                                                               "node_key": "node-key-1"})
    assert resp.status == 200 and (await resp.json())["server_id"] == "GPU-001"
    resp = await gw.client.get("/webhook/servers", headers={"X-Webhook-Secret": SECRET})
    # Offline, not forgotten (DESIGN §9): only an operator's remove forgets a node.
    assert [(s["server_id"], s["status"]) for s in (await resp.json())["data"]["servers"]] == [
        ("GPU-001", "offline"), ("GPU-002", "healthy")]
    resp = await gw.client.post("/webhook/register", json={"ip": "127.0.0.1", "port": 1, "secret": "wrong"})
    assert resp.status == 403


async def test_node_down_then_up_again(start_gateway: Callable[..., Awaitable[Gateway]], nodes: Any) -> None:
    gw = await start_gateway(**{"health_check.failure_threshold": 2})
    node = await nodes()
    await gw.register(node)

    async def node_status() -> str:
        resp = await gw.client.get("/webhook/servers", headers={"X-Webhook-Secret": SECRET})
        return str((await resp.json())["data"]["servers"][0]["status"])

    await node.stop()
    await wait_until(lambda: _is(node_status, "unhealthy"), 10, "the node to be marked down")
    form = FormData()
    form.add_field("file", image_bytes(), filename="photo.png", content_type="image/png")
    resp = await gw.client.post("/api/v1/enhance", data=form)
    assert resp.status == 503 and resp.headers["Retry-After"]
    await node.start()  # same port
    await wait_until(lambda: _is(node_status, "healthy"), 10, "the node to come back")
    task_id = await gw.submit()
    assert (await gw.wait_done(task_id))["status"] == "completed"


async def _is(read: Callable[[], Awaitable[str]], expected: str) -> bool:
    return await read() == expected


async def test_slots_are_never_oversubscribed(start_gateway: Callable[..., Awaitable[Gateway]], nodes: Any) -> None:
    gw = await start_gateway(**{"multi_backend.enabled": True})
    node = await nodes(delay=0.05, slots=2)
    await gw.register(node, slots=2)
    ids = await asyncio.gather(*(gw.submit(image_bytes(20 + i, 20)) for i in range(8)))
    for task_id in ids:
        assert (await gw.wait_done(task_id))["status"] == "completed"
    assert node.jobs == 8 and node.max_busy == 2


async def test_restart_keeps_tasks_ids_and_results(start_gateway: Callable[..., Awaitable[Gateway]],
                                                   nodes: Any) -> None:
    gw = await start_gateway()
    node = await nodes()
    await gw.register(node)
    task_id = await gw.submit()
    assert (await gw.wait_done(task_id))["status"] == "completed"
    await gw.client.close()

    again = await start_gateway()
    status = await again.status(task_id)
    assert status["status"] == "completed" and status["server_id"] == "GPU-001"
    assert (await again.client.get(f"/api/v1/download/{task_id}")).status == 200
    other = await nodes()
    assert (await again.register(other))["server_id"] == "GPU-002"
    assert (await again.register(node))["server_id"] == "GPU-001"


async def test_rate_limits_answer_429(start_gateway: Callable[..., Awaitable[Gateway]]) -> None:
    gw = await start_gateway(**{"rate_limit.exempt": [], "rate_limit.requests_per_second": 1.0,
                                "rate_limit.burst": 3})
    codes = [(await gw.client.get("/api/v1/status/" + "0" * 32)).status for _ in range(5)]
    assert codes[:3] == [404, 404, 404] and codes[3:] == [429, 429]
    resp = await gw.client.get("/api/v1/status/" + "0" * 32)
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    assert "slow down" in (await resp.json())["error"]


async def test_backend_shown_in_config_without_the_password(start_gateway: Callable[..., Awaitable[Gateway]],
                                                            backend: dict[str, Any]) -> None:
    gw = await start_gateway()
    data = await (await gw.client.get("/api/v1/admin/config", headers=gw.admin_headers())).json()
    assert data["storage"]["backend"] == ("redis" if backend else "sqlite")
    assert data["storage"]["redis_url"] == backend.get("storage.redis_url", "")


def test_redacted_url() -> None:
    from photogate.config import redacted_url

    assert redacted_url("redis://:s3cret@10.0.0.5:6379/0") == "redis://:***@10.0.0.5:6379/0"
    assert redacted_url("redis://user:s3cret@host/1") == "redis://user:***@host/1"
    assert redacted_url("redis://host:6379/0") == "redis://host:6379/0"


def test_config_refuses_redis_without_url(tmp_path: Path) -> None:
    from photogate.config import ConfigError

    with pytest.raises(ConfigError, match="storage.redis_url: required"):
        make_config(tmp_path, **{"storage.backend": "redis"})
    with pytest.raises(ConfigError, match="storage.backend: must be sqlite or redis"):
        make_config(tmp_path, **{"storage.backend": "postgres"})
    with pytest.raises(ConfigError, match="must start with redis://"):
        make_config(tmp_path, **{"storage.backend": "redis", "storage.redis_url": "http://x"})
    assert make_config(tmp_path, **{"storage.backend": "redis", "storage.redis_prefix": unique_prefix(),
                                    "storage.redis_url": "redis://127.0.0.1:1/0"}).storage.backend == "redis"

