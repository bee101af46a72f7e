"""Nodes in Redis: registration (with :func:`photogate.identity.decide`), operator flags, and the
state every gateway shares about them: health and the slots taken."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from redis.asyncio.client import Pipeline
from redis.typing import EncodableT

from ... import identity
from ...errors import StoreUnavailable
from ...models import NodeRecord
from ..protocols import FleetSnapshot, FleetStateStore, NodeStore
from .connection import RedisConnection, text, texts, unavailable
from .records import node_from_json


class RedisNodes(RedisConnection, NodeStore, FleetStateStore):
    """:class:`~photogate.storage.protocols.NodeStore` and
    :class:`~photogate.storage.protocols.FleetStateStore` on Redis."""

    #: Registrations of one node racing each other: a compare-and-set retries this often.
    REGISTER_TRIES = 20

    @unavailable
    async def register_node(
        self, ip: str, port: int, node_key: str | None, fields: dict[str, Any], new_token: str
    ) -> tuple[NodeRecord, bool, str | None]:
        """Read the records :func:`identity.decide` needs, decide, apply with compare-and-set."""
        address = f"{ip}:{port}"
        for _ in range(self.REGISTER_TRIES):
            key_sid = text(await self.redis.hget(self.keys.node_key, node_key) or "") if node_key else ""
            addr_sid = text(await self.redis.hget(self.keys.node_addr, address) or "")
            raws = await self.redis.hmget(self.keys.nodes, [key_sid, addr_sid])
            key_raw, addr_raw = (text(raw or "") for raw in raws)
            by_key = node_from_json(key_raw)[1] if key_raw else None
            at_address = node_from_json(addr_raw)[1] if addr_raw else None
            claim = identity.decide(address, node_key, by_key, at_address)
            answer = await self.scripts.register_node(keys=[], args=[
                self.prefix, ip, port, node_key or "", "" if fields["slots"] is None else fields["slots"],
                "" if fields["weight"] is None else fields["weight"], json.dumps(fields.get("info") or {}),
                new_token, repr(time.time()),
                key_sid, key_raw, addr_sid, addr_raw,
                claim.server_id or "", "1" if claim.rotate_token else "0", claim.attach_key or "",
            ])
            if answer[0] != "retry":
                encoded, created, previous = answer
                return node_from_json(encoded)[1], bool(created), previous or None
        raise StoreUnavailable(f"registration of {address} kept racing other registrations; try again",
                               headers={"Retry-After": str(StoreUnavailable.RETRY_AFTER)})

    @unavailable
    async def fleet(self) -> FleetSnapshot:
        """Every node (in id order), the shared health of each, the slots taken on each."""
        async with self.redis.pipeline(transaction=False) as pipe:
            self._read_fleet(pipe)
            return self._fleet_from(await pipe.execute())

    def _read_fleet(self, pipe: Pipeline) -> None:
        """Queue the four reads of :meth:`fleet` on ``pipe`` (their replies: :meth:`_fleet_from`)."""
        pipe.hgetall(self.keys.nodes)
        pipe.hgetall(self.keys.health)
        pipe.hgetall(self.keys.inflight)
        pipe.hgetall(self.keys.ghosts)

    @staticmethod
    def _fleet_from(replies: Sequence[Any]) -> FleetSnapshot:
        nodes, health, inflight, ghosts = (texts(reply) for reply in replies[-4:])
        records = sorted((node_from_json(raw) for raw in nodes.values()), key=lambda pair: pair[0])
        taken = {sid: int(n) for sid, n in inflight.items()}
        now = time.time()
        for sid, ghost in ghosts.items():  # a dead gateway's jobs count as taken (see acquire_slot.lua)
            count, _, until = ghost.partition(":")
            if float(until) > now:
                taken[sid] = taken.get(sid, 0) + int(count)
        return FleetSnapshot([rec for _ordinal, rec in records],
                             {sid: json.loads(raw) for sid, raw in health.items()}, taken)

    async def load_nodes(self) -> list[NodeRecord]:
        return (await self.fleet()).nodes

    @unavailable
    async def delete_node(self, server_id: str) -> None:
        await self.scripts.delete_node(keys=[], args=[self.prefix, server_id])

    @unavailable
    async def set_node_offline(self, server_id: str) -> None:
        await self.scripts.set_node_offline(keys=[], args=[self.prefix, server_id])

    @unavailable
    async def set_node_draining(self, server_id: str, draining: bool) -> None:
        await self.scripts.set_node_draining(keys=[], args=[self.prefix, server_id, "1" if draining else "0"])

    @unavailable
    async def record_health(self, server_id: str, ok: bool, *, report: dict[str, Any] | None = None,
                            error: str = "", threshold: int = 3, counter: str = "", check: bool = False) -> int:
        """Record a health outcome for every gateway: 1 node went up, -1 went down, 0 no change."""
        return int(await self.scripts.record_health(keys=[], args=self._health_args(
            server_id, ok, report=report, error=error, threshold=threshold, counter=counter, check=check)))

    def _health_args(self, server_id: str, ok: bool, *, report: dict[str, Any] | None = None, error: str = "",
                     threshold: int = 3, counter: str = "", check: bool = False, count: int = 1,
                     only_count: bool = False) -> list[EncodableT]:
        """record_health.lua's arguments: ``count`` outcomes alike (the counter moves by ``count``);
        ``only_count``: nothing else changes."""
        return [self.prefix, server_id, "1" if ok else "0", json.dumps(report) if report is not None else "",
                error, threshold, repr(time.time()), counter, "1" if check else "0", count,
                "1" if only_count else "0"]

    @unavailable
    async def acquire_slot(self, server_id: str, slots: int) -> int:
        """Take a slot on the node: its new in-flight count, or -1 when all are taken."""
        return int(await self.scripts.acquire_slot(keys=[self.keys.inflight, self.keys.res, self.keys.ghosts],
                                                   args=[server_id, slots]))

    @unavailable
    async def release_slot(self, server_id: str) -> int:
        return int(await self.scripts.release_slot(keys=[self.keys.inflight, self.keys.res], args=[server_id]))
