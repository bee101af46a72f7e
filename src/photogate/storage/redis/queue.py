"""The queue several gateways share: claims, hand-backs, and the reaper of dead gateways' claims.

Accepted and handed-back tasks wait in ``P queue`` (by created_at). With the fair share on,
the claim script (``claim.lua``) first moves them to their owners' queues and then picks by
deficit round robin, so the fair order holds whichever gateway claims::

    P fq:q:{owner}  zset  an owner's unclaimed task ids by created_at ("" : no owner)
    P fq:ring       list  the owners with tasks waiting, the one served now first
    P fq:credit     hash  owner -> its credit in megapixels (an owner is in the ring iff here)
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from ...models import TaskRecord, TaskStatus
from ..protocols import SharedQueueStore, Weights
from .connection import RedisConnection, text, unavailable
from .records import task_from_hash


class RedisSharedQueue(RedisConnection, SharedQueueStore):
    """:class:`~photogate.storage.protocols.SharedQueueStore` on Redis."""

    @unavailable
    async def queue_length(self) -> int:
        return int(await self.scripts.queue_length(keys=[self.keys.queue], args=[self.prefix]))

    @unavailable
    async def claim(self, count: int, weights: Weights | None = None) -> list[TaskRecord]:
        """Take ``count`` tasks of the shared queue for this gateway: the next ones in weighted
        fair order between owners, or (no ``weights``) the oldest."""
        args: list[str | int | float] = [self.prefix, count]
        if weights is not None:
            args += [weights.quantum, json.dumps(dict(weights.classes)), weights.default_class, weights.min_charge]
        got = await self.scripts.claim(keys=[self.keys.queue, self.keys.claimed], args=args)
        tasks = [task_from_hash(dict(zip(fields[0::2], fields[1::2]))) for fields in got[1::2]]
        return [t for t in tasks if t.status is TaskStatus.QUEUED or t.status is TaskStatus.PROCESSING]

    @unavailable
    async def claimed_ids(self) -> set[str]:
        return {text(task_id) for task_id in await self.redis.hkeys(self.keys.claimed)}

    @unavailable
    async def unclaim(self, task_ids: Sequence[str]) -> int:
        """Hand claimed tasks back to the shared queue (for any gateway to run)."""
        if not task_ids:
            return 0
        return int(await self.scripts.unclaim(keys=[self.keys.claimed], args=[self.prefix, *task_ids]))

    @unavailable
    async def dead_gateways(self) -> list[str]:
        members = {text(gid) for gid in await self.redis.smembers(self.keys.gateways)}
        others = [gid for gid in members if gid != self.gateway_id]
        if not others:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for gid in others:
                pipe.exists(self.keys.alive_of(gid))
            alive = await pipe.execute()
        return [gid for gid, up in zip(others, alive) if not up]

    @unavailable
    async def reap(self, gateway_id: str, *, force: bool = False, ghost_seconds: float = 0.0) -> int:
        """Put ``gateway_id``'s claimed tasks back in the queue and free its node slots (its
        jobs still running there count as ghosts for ``ghost_seconds`` or until the node is
        idle). Returns the tasks put back, or -1 when that gateway is alive (and not ``force``)."""
        return int(await self.scripts.reap(keys=[], args=[self.prefix, gateway_id, "1" if force else "0",
                                                          int(ghost_seconds)]))
