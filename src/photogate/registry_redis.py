"""The node registry of a gateway that shares Redis with others (``storage.backend: redis``),
and that gateway's membership of the cluster: heartbeat, dead-gateway reaper, prober lease.

Each gateway keeps the same local view as :class:`~photogate.registry.Registry` (strategies
and the dispatcher read it synchronously), refreshed from Redis every ``sync_interval``
seconds; every change goes to Redis first:

- registration, removal and draining through the store's scripts (ids from one ``INCR``);
- health outcomes (the prober's checks, any gateway's passive failures) into the shared
  health hash, so every gateway sees the same health; a job's success that changes nothing
  but the node's ``completed`` counter (the node was up, with no failure) is counted with the
  next refresh, not sent alone;
- node slots through the atomic acquire/release scripts, so two gateways never run more
  jobs on a node than it has slots.

:meth:`RedisRegistry.run` is the gateway's heartbeat: it renews this gateway's key,
takes or keeps the health prober's lease, hands a dead gateway's claimed tasks back to
the shared queue (and frees its node slots), and refreshes the view; the heartbeat, the
successes to count and the read of the fleet go to Redis in one round trip.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any, Protocol

import structlog

from .errors import StoreUnavailable
from .health.rule import DOWN, verdict
from .models import NodeRecord
from .registry import NodeState, Registry
from .storage.protocols import FleetSnapshot, Membership, NodeStore

log = structlog.get_logger("photogate.registry_redis")


class FleetStore(NodeStore, Protocol):
    """What the Redis-backed registry needs of its store beyond the node records: the
    shared view of the fleet, shared health, node slots counted across gateways."""

    @property
    def url(self) -> str:
        """The store's address, password removed (for logs)."""
        ...

    async def fleet(self) -> tuple[list[NodeRecord], dict[str, dict[str, Any]], dict[str, int]]: ...
    async def sync(self, *, completed: Mapping[str, int], beat_ttl: float | None
                   ) -> tuple[FleetSnapshot, Membership | None]: ...
    async def record_health(self, server_id: str, ok: bool, *, report: dict[str, Any] | None = None,
                            error: str = "", threshold: int = 3, counter: str = "", check: bool = False) -> int: ...
    async def acquire_slot(self, server_id: str, slots: int) -> int: ...
    async def release_slot(self, server_id: str) -> int: ...


class ClusterStore(Protocol):
    """A gateway's membership of the cluster: its heartbeat key, the health prober's lease,
    and the reaping of gateways that stopped beating."""

    @property
    def gateway_id(self) -> str: ...

    async def heartbeat(self, ttl: float) -> None: ...
    async def lease(self, ttl: float) -> bool: ...
    async def drop_lease(self) -> None: ...
    async def dead_gateways(self) -> list[str]: ...
    async def reap(self, gateway_id: str, *, force: bool = False, ghost_seconds: float = 0.0) -> int: ...


class RedisFleetStore(FleetStore, ClusterStore, Protocol):
    """The Redis store as :class:`RedisRegistry` uses it."""


class RedisRegistry(Registry):
    def __init__(self, store: RedisFleetStore, failure_threshold: int, *, lease_ttl: float,
                 ghost_seconds: float = 300.0, sync_interval: float = 0.2) -> None:
        super().__init__(store, failure_threshold)
        self.redis_store = store
        self.lease_ttl = lease_ttl
        #: How long a dead gateway's jobs count against their nodes' slots (unless the node
        #: reports itself idle first): the longest a job may run, ``dispatch.timeout``.
        self.ghost_seconds = ghost_seconds
        self.sync_interval = sync_interval
        #: True while this gateway holds the health prober's lease.
        self.prober = False
        #: Whether the last round trip to Redis worked (for logs and /api/v1/health).
        self.store_up = True
        self._unreleased: list[str] = []
        #: Local changes per node: a refresh whose read began before one of them must not
        #: undo it (that node is left as it is until the next refresh).
        self._touched: dict[str, int] = {}
        #: Job successes per node not told to Redis yet (the next refresh counts them).
        self._completed: Counter[str] = Counter()

    # -- the view ------------------------------------------------------------------------

    async def load(self) -> None:
        await self.refresh()

    async def refresh(self) -> None:
        """Read every node, its shared health and its in-flight count from Redis."""
        await self._sync(beat=False)

    async def _sync(self, *, beat: bool) -> int:
        """Refresh the view; with ``beat``, beat too (see :meth:`beat`). One round trip."""
        touched = dict(self._touched)
        completed, self._completed = self._completed, Counter()
        try:
            (records, health, inflight), membership = await self.redis_store.sync(
                completed=completed, beat_ttl=self.lease_ttl if beat else None)
        except StoreUnavailable:
            self._completed.update(completed)  # counted with a later refresh
            raise
        self._apply_fleet(touched, records, health, inflight)
        return 0 if membership is None else await self._after_beat(*membership)

    def _apply_fleet(self, touched: dict[str, int], records: list[NodeRecord], health: dict[str, dict[str, Any]],
                     inflight: dict[str, int]) -> None:
        raced = {sid for sid, n in self._touched.items() if touched.get(sid) != n}
        seen: set[str] = set(raced)
        for record in records:
            sid = record.server_id
            seen.add(sid)
            if sid in raced:
                continue
            state = self._nodes.get(sid)
            if state is None:
                state = self._nodes[sid] = NodeState(record=record, healthy=False)
            self._apply(state, record, health.get(sid), inflight.get(sid, 0))
        for sid in set(self._nodes) - seen:
            del self._nodes[sid]
        self._changed()

    @staticmethod
    def _apply(state: NodeState, record: NodeRecord, shared: dict[str, Any] | None, inflight: int) -> None:
        state.record = record
        state.inflight = inflight
        if record.offline:
            Registry._go_offline(state)
            return
        if shared is None:
            state.healthy, state.last_error = False, "not checked yet"
            return
        state.healthy = bool(shared.get("healthy"))
        state.failures = int(shared.get("failures") or 0)
        state.last_check = shared.get("last_check")
        state.last_error = shared.get("last_error")
        report = shared.get("health")
        state.health = report if isinstance(report, dict) else {}
        state.completed = int(shared.get("completed") or 0)
        state.failed = int(shared.get("failed") or 0)
        state.note_report(state.last_check)

    def _touch(self, server_id: str) -> None:
        self._touched[server_id] = self._touched.get(server_id, 0) + 1

    # -- membership ----------------------------------------------------------------------

    # Membership changes go through the base class (to Redis first, through the store);
    # each is marked touched in the same step as the local change, so a refresh whose read
    # began before it leaves that node alone.

    async def register(
        self, ip: str, port: int, *, node_key: str | None, slots: int | None, weight: int | None,
        info: dict[str, Any],
    ) -> tuple[NodeState, bool, str | None]:
        state, created, previous = await super().register(
            ip, port, node_key=node_key, slots=slots, weight=weight, info=info
        )
        self._touch(state.server_id)
        return state, created, previous

    async def unregister(self, server_id: str) -> NodeState | None:
        state = await super().unregister(server_id)
        if state is not None:
            self._touch(server_id)
        return state

    async def remove(self, server_id: str) -> NodeState | None:
        self._touch(server_id)  # before: the local entry goes before the store's delete is done
        return await super().remove(server_id)

    async def set_draining(self, server_id: str, draining: bool) -> NodeState | None:
        state = await super().set_draining(server_id, draining)
        if state is not None:
            self._touch(server_id)
        return state

    # -- health ----------------------------------------------------------------------------

    def probes_here(self) -> bool:
        return self.prober

    async def record_check(
        self, server_id: str, ok: bool, report: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        await self._record(server_id, ok, report=dict(report or {}) if ok else None,
                           error=error or "health check failed", check=True)

    async def record_dispatch_failure(self, server_id: str, error: str) -> None:
        await self._record(server_id, False, error=error, counter="failed")

    async def record_dispatch_success(self, server_id: str) -> None:
        await self._record(server_id, True, counter="completed")

    async def _record(self, server_id: str, ok: bool, *, report: dict[str, Any] | None = None, error: str = "",
                      counter: str = "", check: bool = False) -> None:
        state = self._nodes.get(server_id)
        if state is None or state.record.offline:  # removed or unregistered meanwhile
            return
        if counter == "completed" and report is None and state.healthy and not state.failures \
                and state.last_error is None:
            # Up, with no failure: the success changes only the counter; the next refresh counts it.
            self._completed[server_id] += 1
            self._touch(server_id)
            state.completed += 1
            return
        moved = await self.redis_store.record_health(server_id, ok, report=report, error=error,
                                                     threshold=self.failure_threshold, counter=counter, check=check)
        self._touch(server_id)
        # The same change here at once; the next refresh brings what other gateways did.
        if check:
            state.last_check = time.time()
        if counter == "completed":
            state.completed += 1
        elif counter == "failed":
            state.failed += 1
        if ok and report is not None:
            state.health = report
            state.note_report(state.last_check)
        # Redis applied the rule to the shared counters, which other gateways move too: its
        # answer says whether the node went up or down; the local counters follow the rule.
        state.failures = verdict(state.healthy, state.failures, ok, self.failure_threshold).failures
        state.healthy = ok or (state.healthy and moved != DOWN)
        state.last_error = None if ok else error
        self._announce(state, moved, error)

    # -- capacity ----------------------------------------------------------------------------

    async def acquire(self, server_id: str, depth: int = 0) -> NodeState | None:
        state = self._nodes[server_id]
        count = await self.redis_store.acquire_slot(server_id, state.slots + depth)
        self._touch(server_id)
        if count < 0:
            state.inflight = max(state.inflight, state.slots + depth)  # full: another gateway was first
            return None
        state.inflight = count
        return state

    async def release(self, state: NodeState, *, hold: float = 0.0) -> None:
        self._hold(state, hold)
        try:
            state.inflight = await self.redis_store.release_slot(state.server_id)
            self._touch(state.server_id)
        except StoreUnavailable:
            # Given back once Redis answers again (a slot must not leak for good).
            self._unreleased.append(state.server_id)
            state.inflight = max(state.inflight - 1, 0)
        self._changed()

    # -- the heartbeat -----------------------------------------------------------------------

    async def beat(self) -> int:
        """Renew this gateway's key, take or keep the prober's lease, reap dead gateways,
        refresh the view. Returns the tasks put back in the shared queue."""
        return await self._sync(beat=True)

    async def _after_beat(self, prober: bool, dead: list[str]) -> int:
        store = self.redis_store
        was, self.prober = self.prober, prober
        if self.prober and not was:
            log.info("health_prober_elected", gateway=store.gateway_id)
        back = 0
        for gateway_id in dead:
            n = await store.reap(gateway_id, ghost_seconds=self.ghost_seconds)
            if n >= 0:
                back += n
                log.warning("gateway_reaped", gateway=gateway_id, tasks_requeued=n)
        while self._unreleased:
            await store.release_slot(self._unreleased[0])
            self._unreleased.pop(0)
        return back

    async def run(self) -> None:
        next_beat = 0.0
        while True:
            try:
                beat = time.monotonic() >= next_beat
                await self._sync(beat=beat)
                if beat:
                    next_beat = time.monotonic() + self.lease_ttl / 3
                if not self.store_up:
                    self.store_up = True
                    log.info("state_store_reachable", url=self.redis_store.url)
            except StoreUnavailable as exc:
                self.prober = False
                next_beat = 0.0
                if self.store_up:
                    self.store_up = False
                    log.error("state_store_unreachable", url=self.redis_store.url, error=str(exc.__cause__ or exc))
            await asyncio.sleep(self.sync_interval)

    async def close(self) -> None:
        """A clean stop: this gateway's claimed tasks go back to the queue, its slots are freed."""
        store = self.redis_store
        try:
            if self._completed:
                await self.refresh()  # the successes not counted yet
            back = await store.reap(store.gateway_id, force=True, ghost_seconds=self.ghost_seconds)
            await store.drop_lease()
        except StoreUnavailable:
            log.warning("gateway_stop_unclean", reason="the state store is unreachable; "
                        "another gateway takes the tasks back once this one's key expires")
        else:
            log.info("gateway_left", gateway=store.gateway_id, tasks_requeued=back)

