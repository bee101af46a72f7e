"""One round trip a registry refresh: this gateway's heartbeat (when due), the job successes
it has not told yet, and the read of the whole fleet, in one pipeline."""

from __future__ import annotations

import time
from collections.abc import Mapping

from ..protocols import FleetSnapshot, Membership
from .cluster import RedisCluster
from .connection import lua, text, unavailable
from .nodes import RedisNodes


class RedisSync(RedisNodes, RedisCluster):
    """:meth:`sync`: the shared registry's refresh on Redis."""

    @unavailable
    async def sync(self, *, completed: Mapping[str, int], beat_ttl: float | None
                   ) -> tuple[FleetSnapshot, Membership | None]:
        """Count ``completed`` successful jobs per node (only the counter moves: when they
        happened the node was up with no failure, and what happened since stands), beat (when
        ``beat_ttl`` is given: renew this gateway's key for that long, take or keep the prober's
        lease, name the dead gateways), then read the fleet, as :meth:`fleet` does; all in one
        pipeline (one round trip).

        The scripts go as ``EVAL`` (their text each time, a few times a second): a pipeline of
        ``EVALSHA`` would first ask Redis whether it knows them, a round trip of its own."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for server_id, count in completed.items():
                pipe.eval(lua("record_health"), 0,
                          *self._health_args(server_id, True, counter="completed", count=count, only_count=True))
            if beat_ttl is not None:
                pipe.eval(lua("beat", "lease_fn"), 0, self.prefix, self.gateway_id, int(beat_ttl * 1000),
                          str(time.time()))
            self._read_fleet(pipe)
            replies = await pipe.execute()
        membership = None
        if beat_ttl is not None:
            held, dead = replies[len(completed)]
            membership = Membership(bool(held), [text(gid) for gid in dead])
        return self._fleet_from(replies), membership
