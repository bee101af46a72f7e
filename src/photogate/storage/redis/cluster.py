"""This gateway among the others on one Redis: its heartbeat, the health prober's lease, and the
rate-limit buckets every gateway draws from."""

from __future__ import annotations

import time
from collections.abc import Sequence

from ..protocols import GatewayMembership, RateBuckets
from .connection import RedisConnection, text, unavailable


class RedisCluster(RedisConnection, GatewayMembership, RateBuckets):
    """:class:`~photogate.storage.protocols.GatewayMembership` and
    :class:`~photogate.storage.protocols.RateBuckets` on Redis."""

    @unavailable
    async def heartbeat(self, ttl: float) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.alive, str(time.time()), px=int(ttl * 1000))
            pipe.sadd(self.keys.gateways, self.gateway_id)
            await pipe.execute()

    @unavailable
    async def lease(self, ttl: float) -> bool:
        """Take or keep the health prober's lease for ``ttl`` s; True while this gateway holds it."""
        return bool(await self.scripts.lease(keys=[self.keys.lease], args=[self.gateway_id, int(ttl * 1000)]))

    @unavailable
    async def drop_lease(self) -> None:
        holder = await self.redis.get(self.keys.lease)
        if holder is not None and text(holder) == self.gateway_id:
            await self.redis.delete(self.keys.lease)

    @unavailable
    async def bucket(self, name: str, key: str, rate: float, burst: float, take: bool) -> float:
        """Draw from the shared token bucket: the seconds to wait (0: a token was there, and
        taken if ``take``)."""
        return (await self.draw(key, [(name, rate, burst, take)]))[1]

    @unavailable
    async def draw(self, key: str, buckets: Sequence[tuple[str, float, float, bool]]) -> tuple[int, float]:
        """Draw from several of ``key``'s shared buckets (name, rate, burst, take) in turn, in
        one round trip: the first that has no token stops the draw. Returns its index and the
        seconds to wait there, or ``(-1, 0.0)`` when every one had a token."""
        index, wait = await self.scripts.bucket(
            keys=[self.keys.bucket(name, key) for name, _rate, _burst, _take in buckets],
            args=[arg for _name, rate, burst, take in buckets
                  for arg in (repr(rate), repr(burst), "1" if take else "0")])
        return int(index) - 1, float(wait)
