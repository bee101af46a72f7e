"""The Redis backend's connection: the client, every key name, the Lua scripts and the error rule.

Several gateways share one Redis. Every multi-key change is one Lua script (a ``.lua`` file
beside this module) or one MULTI/EXEC, so two gateways never see half of a change: the node
id counter is an ``INCR`` inside the registration script (two gateways never hand out the
same ``GPU-00N``), and a node slot is taken by a script that checks ``inflight < slots``
before it increments. Keys (``P`` is ``storage.redis_prefix``)::

    P task:{id}            hash   one task's fields (absent field: None)
    P status:{status}      zset   task ids by created_at, one per status (listing, counts)
    P done                 zset   finished task ids by finish time (expiry)
    P queue                zset   queued task ids no gateway has claimed, by created_at
    P fq:...               the fair share's owner queues and state (``queue.py``)
    P gw:{gid}:claimed     hash   task id -> created_at: the tasks gateway gid holds
    P gw:{gid}:res         hash   server_id -> slots gateway gid holds on that node
    P gw:{gid}:alive       string gateway gid's heartbeat (expires: the gateway is dead)
    P gateways             set    gateway ids that may hold claims
    P inflight             hash   server_id -> jobs running on it, all gateways together
    P ghosts               hash   server_id -> "n:until": jobs a dead gateway may have left
                                  running there (counted as taken until the node says it
                                  is idle, or until ``until``)
    P nodes                hash   server_id -> node record (JSON; an unregistered node stays, offline)
    P node_addr            hash   "ip:port" -> server_id
    P node_key             hash   node key -> server_id
    P node_counter         string the last ordinal handed out (INCR)
    P health               hash   server_id -> shared health state (JSON)
    P lease:health         string the gateway that probes the fleet now (SET NX PX)
    P owner:{openid}       zset   a WeChat user's task ids by created_at
    P settings             hash   runtime setting -> JSON {value, changed_at, who}
    P settings_version     string bumped (INCR) by every change of ``settings``
    P rl:{name}:{key}      hash   a shared rate-limit bucket {tokens, stamp}
    P wx:...               the WeChat records (``photogate.wechat``)

Keys are built inside the scripts from the prefix, so this runs on one Redis (a primary,
with a replica and Sentinel if wanted), not on Redis Cluster.

Every Redis error surfaces as :class:`~photogate.errors.StoreUnavailable` (503).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from functools import cache, wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from ...config import redacted_url
from ...errors import StoreUnavailable

P = ParamSpec("P")
T = TypeVar("T")

_HERE = Path(__file__).parent


@cache
def lua(name: str, *preludes: str) -> str:
    """The text of ``name.lua`` beside this module, after the ``preludes`` (``.lua`` files that
    define local functions the script calls: Lua scripts in Redis cannot include each other)."""
    return "".join((_HERE / f"{part}.lua").read_text(encoding="utf-8") for part in (*preludes, name))


class Scripts:
    """Every Lua script of the store, registered on the client once (EVALSHA, loaded on first use)."""

    def __init__(self, client: aioredis.Redis) -> None:
        reg = client.register_script
        # tasks
        self.update_task: AsyncScript = reg(lua("update_task"))
        self.delete_task: AsyncScript = reg(lua("delete_task"))
        # the shared queue
        self.claim: AsyncScript = reg(lua("claim"))
        self.queue_length: AsyncScript = reg(lua("queue_length"))
        self.unclaim: AsyncScript = reg(lua("unclaim", "requeue"))
        self.reap: AsyncScript = reg(lua("reap", "requeue"))
        # nodes, their shared health and slots
        self.register_node: AsyncScript = reg(lua("register_node"))
        self.delete_node: AsyncScript = reg(lua("delete_node"))
        self.set_node_draining: AsyncScript = reg(lua("set_node_draining"))
        self.set_node_offline: AsyncScript = reg(lua("set_node_offline"))
        self.record_health: AsyncScript = reg(lua("record_health"))
        self.acquire_slot: AsyncScript = reg(lua("acquire_slot"))
        self.release_slot: AsyncScript = reg(lua("release_slot"))
        # this gateway among the others
        self.lease: AsyncScript = reg(lua("lease", "lease_fn"))
        self.beat: AsyncScript = reg(lua("beat", "lease_fn"))
        self.bucket: AsyncScript = reg(lua("bucket"))


def unavailable(fn: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Turn any Redis error into :class:`StoreUnavailable` (a 503 a user can read)."""

    @wraps(fn)
    async def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except RedisError as exc:
            # redis-py may turn a cancellation mid-command into a connection error: a task
            # being cancelled (a gateway stopping) must stop, not retry.
            task = asyncio.current_task()
            if task is not None and getattr(task, "cancelling", lambda: 0)():  # Python 3.11+
                raise asyncio.CancelledError from exc
            raise StoreUnavailable.from_error(exc) from exc

    return call


def text(value: bytes | str) -> str:
    """A reply as text (the client decodes replies; its types do not say so)."""
    return value if isinstance(value, str) else value.decode()


def texts(values: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    """A hash reply as text."""
    return {text(k): text(v) for k, v in values.items()}


class Keys:
    """Every key name of the store (the table above), for one prefix and one gateway."""

    def __init__(self, prefix: str, gateway_id: str) -> None:
        self.prefix = p = prefix
        self.queue = p + "queue"
        self.done = p + "done"
        self.inflight = p + "inflight"
        self.ghosts = p + "ghosts"
        self.gateways = p + "gateways"
        self.claimed = f"{p}gw:{gateway_id}:claimed"
        self.res = f"{p}gw:{gateway_id}:res"
        self.alive = f"{p}gw:{gateway_id}:alive"
        self.lease = p + "lease:health"
        self.nodes = p + "nodes"
        self.node_addr = p + "node_addr"
        self.node_key = p + "node_key"
        self.health = p + "health"
        self.settings = p + "settings"
        self.settings_version = p + "settings_version"

    def task(self, task_id: str) -> str:
        return f"{self.prefix}task:{task_id}"

    def status(self, status: str) -> str:
        return f"{self.prefix}status:{status}"

    def owner(self, owner: str) -> str:
        return f"{self.prefix}owner:{owner}"

    def alive_of(self, gateway_id: str) -> str:
        return f"{self.prefix}gw:{gateway_id}:alive"

    def bucket(self, name: str, key: str) -> str:
        return f"{self.prefix}rl:{name}:{key}"


class RedisConnection:
    """The client, this gateway's id, the key names and the scripts: what each part of
    :class:`~photogate.storage.redis.store.RedisStore` works with.

    ``gateway_id`` names this process in the claim and reservation keys; it is new at
    every start, so a restarted gateway never mistakes a dead one's claims for its own.
    """

    def __init__(self, client: aioredis.Redis, prefix: str, gateway_id: str, url: str) -> None:
        self.redis = client
        self.prefix = prefix
        self.gateway_id = gateway_id
        self.url = redacted_url(url)
        self.keys = Keys(prefix, gateway_id)
        self.scripts = Scripts(client)
