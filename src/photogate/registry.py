"""The node registry: persisted records plus each node's live state (health, in-flight).

The health monitor and the dispatcher change node state only through the narrow
methods here (:meth:`Registry.record_check`, :meth:`Registry.record_dispatch_failure`,
:meth:`Registry.acquire`/:meth:`Registry.release`); strategies get read-only
:class:`~photogate.balancing.NodeView` snapshots of the nodes that can take work.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeGuard

import structlog

from .balancing import NodeView, node_order
from .health.rule import DOWN, UP, verdict
from .models import NodeRecord
from .storage.protocols import NodeStore

log = structlog.get_logger("photogate.registry")

#: A strategy's pipeline depth for a node (:meth:`~photogate.balancing.Strategy.pipeline_depth`).
Depth = Callable[[NodeView], int]

#: What an offline node's ``last_error`` says.
OFFLINE_ERROR = "offline: unregistered"


@dataclass
class NodeState:
    record: NodeRecord
    healthy: bool
    failures: int = 0
    inflight: int = 0
    last_check: float | None = None
    last_error: str | None = None
    health: dict[str, Any] = field(default_factory=dict)
    completed: int = 0
    failed: int = 0
    #: When (wall clock) the node last answered "busy" to a job. It is offered no work
    #: until a job of ours on it ends, a later health report shows a slot free, or
    #: ``busy_until`` (monotonic: the node's Retry-After) passes.
    busy_since: float | None = None
    busy_until: float = 0.0
    #: When (wall clock) this gateway last dispatched a job to the node; in memory, so with
    #: several gateways each answers for its own dispatches, and a restart forgets it.
    last_used: float | None = None
    #: The gateway's per-job gap on this node (an average of seconds from a job's answer to
    #: the next job sent while work waited), and when the last answer came with work waiting.
    gap: float | None = None
    freed_at: float | None = None
    #: When (monotonic) a job of ours on it was last answered.
    last_answer: float = 0.0

    @property
    def server_id(self) -> str:
        return self.record.server_id

    @property
    def health_url(self) -> str:
        """Where the health monitor checks the node."""
        return self.record.base_url + "/health"

    @property
    def slots(self) -> int:
        reported = self.health.get("slots")
        if _is_count(reported) and reported >= 1:
            return reported
        return max(self.record.slots, 1)

    @property
    def queue_room(self) -> int:
        """Jobs the node can hold waiting besides those it runs (``queue_size`` it reports)."""
        reported = self.health.get("queue_size", self.record.info.get("queue_size"))
        return reported if _is_count(reported) else 0

    @property
    def free(self) -> bool:
        """Whether the node can start one more job now."""
        return self.takes(0)

    def takes(self, depth: int) -> bool:
        """Whether the node can take one more job, holding up to ``depth`` beyond its slots."""
        return self.inflight < self.slots + depth and (self.busy_since is None or time.monotonic() >= self.busy_until)

    def note_gap(self, seconds: float, weight: float = 0.2) -> None:
        """One more measure of the gateway's per-job gap on this node."""
        self.gap = seconds if self.gap is None else weight * seconds + (1 - weight) * self.gap

    def hold(self, seconds: float) -> None:
        """The node answered "busy": offer it nothing for up to ``seconds``."""
        self.busy_since, self.busy_until = time.time(), time.monotonic() + seconds

    def note_report(self, checked_at: float | None) -> None:
        """A health report checked at ``checked_at``: it frees a busy node when it is newer
        than the busy answer and shows a slot free (``busy + queued < slots``; a report
        without those numbers counts as free)."""
        if self.busy_since is None or checked_at is None or checked_at <= self.busy_since:
            return
        busy, queued, slots = (self.health.get(k) for k in ("busy", "queued", "slots"))
        if _is_count(busy) and _is_count(queued) and _is_count(slots) and busy + queued >= slots:
            return
        self.busy_since = None

    def view(self, depth: int = 0) -> NodeView:
        return NodeView(
            server_id=self.server_id,
            address=self.record.address,
            inflight=self.inflight,
            slots=self.slots,
            weight=self.record.weight,
            health=dict(self.health),
            queue_room=self.queue_room,
            depth=depth,
            gap=self.gap,
        )

    def offered(self, depth: Depth | None) -> NodeView:
        """Its view, with the pipeline depth ``depth`` asks for, within its queue room."""
        view = self.view()
        wanted = 0 if depth is None or view.queue_room <= 0 else min(max(depth(view), 0), view.queue_room)
        return view if wanted == 0 else self.view(wanted)

    @property
    def status(self) -> str:
        """``offline`` (unregistered), ``draining``, ``healthy`` or ``unhealthy``."""
        rec = self.record
        if rec.offline:
            return "offline"
        return "draining" if rec.draining else ("healthy" if self.healthy else "unhealthy")

    def public(self) -> dict[str, Any]:
        rec = self.record
        return {
            "server_id": rec.server_id,
            "ip": rec.ip,
            "port": rec.port,
            "address": rec.address,
            "healthy": self.healthy,
            "status": self.status,
            "draining": rec.draining,
            "offline": rec.offline,
            "busy": self.inflight,
            "slots": self.slots,
            # How far a strategy may pipeline to it, and the gateway's per-job gap it measured.
            "queue_room": self.queue_room,
            "dispatch_gap_ms": None if self.gap is None else round(self.gap * 1000, 2),
            "weight": rec.weight,
            "consecutive_failures": self.failures,
            "last_check": self.last_check,
            "last_error": self.last_error,
            "registered_at": rec.registered_at,
            "updated_at": rec.updated_at,
            "completed": self.completed,
            "failed": self.failed,
            "health": self.health,
            # The original gateway's fields (its test_b_client.py reads them).
            "url": rec.base_url,
            "is_healthy": self.healthy,
            "fail_count": self.failures,
            "last_check_time": iso_time(self.last_check),
            "last_used_time": iso_time(self.last_used),
        }


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def iso_time(epoch: float | None) -> str | None:
    """ISO 8601 in UTC, ``None`` for never."""
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).isoformat()


class Registry:
    """The fleet of one gateway, persisted in ``store`` (the SQLite store, or any other
    :class:`~photogate.storage.protocols.NodeStore`)."""

    def __init__(self, store: NodeStore, failure_threshold: int) -> None:
        self._store = store
        self.failure_threshold = failure_threshold
        self._nodes: dict[str, NodeState] = {}
        self._listeners: list[Callable[[], None]] = []

    async def load(self) -> None:
        """Load persisted nodes. Their health is unknown until the first check answers."""
        for rec in await self._store.load_nodes():
            error = OFFLINE_ERROR if rec.offline else "not checked since start"
            self._nodes[rec.server_id] = NodeState(record=rec, healthy=False, last_error=error)

    def subscribe(self, callback: Callable[[], None]) -> None:
        """``callback`` runs whenever capacity may have appeared (node up, slot freed, ...)."""
        self._listeners.append(callback)

    def _changed(self) -> None:
        for callback in self._listeners:
            callback()

    # -- membership ----------------------------------------------------------------------

    async def register(
        self, ip: str, port: int, *, node_key: str | None, slots: int | None, weight: int | None,
        info: dict[str, Any],
    ) -> tuple[NodeState, bool, str | None]:
        record, created, previous = await self._store.register_node(
            ip, port, node_key, {"slots": slots, "weight": weight, "info": info}, secrets.token_urlsafe(32)
        )
        state = self._nodes.get(record.server_id)
        if state is None:
            state = NodeState(record=record, healthy=True)
            self._nodes[record.server_id] = state
        else:
            state.record = record
        # The node just reached us; it is up (and its slots free) until a check says otherwise.
        state.healthy, state.failures, state.last_error, state.busy_since = True, 0, None, None
        if previous:
            state.health = {}
        self._changed()
        return state, created, previous

    async def unregister(self, server_id: str) -> NodeState | None:
        """The node left (DESIGN §9): offline, not forgotten. It keeps its id, key, address and
        token, gets no work and no probes, and the registration :mod:`~photogate.identity`
        gives this id (its key from any free address; a keyless node from its address) brings
        it back. Jobs already running there finish or fail as usual."""
        state = self._nodes.get(server_id)
        if state is not None:
            await self._store.set_node_offline(server_id)
            self._go_offline(state)
            self._changed()
        return state

    @staticmethod
    def _go_offline(state: NodeState) -> None:
        state.record.offline = True
        state.healthy, state.failures, state.last_error, state.busy_since = False, 0, OFFLINE_ERROR, None

    async def remove(self, server_id: str) -> NodeState | None:
        """An operator forgets the node: its id is never handed out again."""
        state = self._nodes.pop(server_id, None)
        if state is not None:
            await self._store.delete_node(server_id)
            self._changed()
        return state

    async def set_draining(self, server_id: str, draining: bool) -> NodeState | None:
        state = self._nodes.get(server_id)
        if state is not None:
            await self._store.set_node_draining(server_id, draining)
            state.record.draining = draining
            self._changed()
        return state

    def get(self, server_id: str) -> NodeState | None:
        return self._nodes.get(server_id)

    def find(self, ip: str, port: int) -> NodeState | None:
        for state in self.all():
            if state.record.ip == ip and state.record.port == port:
                return state
        return None

    def all(self) -> list[NodeState]:
        return sorted(self._nodes.values(), key=lambda s: node_order(s.server_id))

    # -- health (the monitor's narrow interface) -------------------------------------------

    def probes_here(self) -> bool:
        """Whether this gateway's health monitor probes the fleet (always, with one gateway)."""
        return True

    def probed(self) -> list[NodeState]:
        """The nodes the health monitor checks: every node that is not offline."""
        return [s for s in self.all() if not s.record.offline]

    async def record_check(
        self, server_id: str, ok: bool, report: dict[str, Any] | None = None, error: str | None = None
    ) -> None:
        state = self._nodes.get(server_id)
        if state is None or state.record.offline:  # removed or unregistered while the probe was in flight
            return
        state.last_check = time.time()
        if ok:
            state.health = dict(report or {})
            held = state.busy_since is not None
            state.note_report(state.last_check)
            self._mark_ok(state)
            if held and state.busy_since is None:
                self._changed()
        else:
            self._mark_failure(state, error or "health check failed")

    async def record_dispatch_failure(self, server_id: str, error: str) -> None:
        """A failed dispatch counts as a failed check at once (passive health check)."""
        state = self._nodes.get(server_id)
        if state is not None:
            state.failed += 1
            self._mark_failure(state, error)

    async def record_dispatch_success(self, server_id: str) -> None:
        state = self._nodes.get(server_id)
        if state is not None:
            state.completed += 1
            self._mark_ok(state)

    def _mark_ok(self, state: NodeState) -> None:
        self._outcome(state, True, None)

    def _mark_failure(self, state: NodeState, error: str) -> None:
        self._outcome(state, False, error)

    def _outcome(self, state: NodeState, ok: bool, error: str | None) -> None:
        """Apply the health rule (:func:`~photogate.health.rule.verdict`) to one outcome."""
        if state.record.offline:  # a probe or a job that was under way when it unregistered
            return
        after = verdict(state.healthy, state.failures, ok, self.failure_threshold)
        state.healthy, state.failures, state.last_error = after.healthy, after.failures, error
        self._announce(state, after.moved, error)

    def _announce(self, state: NodeState, moved: int, error: str | None) -> None:
        """Log a node going up or down; one going up is capacity appearing."""
        if moved == UP:
            log.info("node_marked_up", server_id=state.server_id, address=state.record.address)
            self._changed()
        elif moved == DOWN:
            log.warning(
                "node_marked_down", server_id=state.server_id, address=state.record.address,
                failures=state.failures, error=error,
            )

    # -- capacity (the dispatcher's interface) ---------------------------------------------

    def serving(self, multi_backend: bool) -> list[NodeState]:
        """Healthy, non-draining nodes work may go to; only the primary when multi-backend is off."""
        up = [s for s in self.all() if s.healthy and not s.record.draining and not s.record.offline]
        return up if multi_backend else up[:1]

    def candidates(self, multi_backend: bool, exclude: frozenset[str] = frozenset(),
                   depth: Depth | None = None) -> list[NodeView]:
        """Nodes that can start a job now (or, with ``depth``, the strategy's pipeline
        depth, hold one in their queue). ``exclude`` (nodes that failed this job) is
        honoured only while another node could take it."""
        serving = self.serving(multi_backend)
        offered = [s.offered(depth) for s in serving]
        free = [v for s, v in zip(serving, offered) if s.takes(v.depth)]
        preferred = [v for v in free if v.server_id not in exclude]
        if preferred:
            return preferred
        if any(s.server_id not in exclude for s in serving):
            return []  # wait for a node that has not failed this job yet
        return free

    def views(self, multi_backend: bool, exclude: frozenset[str] = frozenset(),
              depth: Depth | None = None) -> list[NodeView]:
        """Every node work may go to, busy or not (for strategies that plan ahead)."""
        serving = [s.offered(depth) for s in self.serving(multi_backend)]
        return [v for v in serving if v.server_id not in exclude] or serving

    async def acquire(self, server_id: str, depth: int = 0) -> NodeState | None:
        """Take a slot (or, with ``depth``, one of that many places in the node's queue);
        ``None`` when none is free (another gateway took it)."""
        state = self._nodes[server_id]
        state.inflight += 1
        return state

    async def release(self, state: NodeState, *, hold: float = 0.0) -> None:
        """Give the slot back. ``hold`` > 0: the node answered that it had none free, so it
        is offered no work until another of its jobs ends, a probe finds a slot free, or
        ``hold`` seconds pass."""
        state.inflight = max(state.inflight - 1, 0)
        self._hold(state, hold)
        self._changed()

    def _hold(self, state: NodeState, seconds: float) -> None:
        if seconds <= 0:
            state.busy_since = None
            return
        state.hold(seconds)
        # The hold's end is capacity appearing: wake the dispatcher then.
        asyncio.get_running_loop().call_later(seconds, self._changed)

    def summary(self) -> dict[str, int]:
        nodes = self.all()
        offline = sum(1 for s in nodes if s.record.offline)
        healthy = sum(1 for s in nodes if s.healthy and not s.record.offline)
        return {
            "total": len(nodes),
            "healthy": healthy,
            "unhealthy": len(nodes) - healthy - offline,
            "offline": offline,
            "draining": sum(1 for s in nodes if s.record.draining),
            "busy": sum(s.inflight for s in nodes),
            "slots": sum(s.slots for s in nodes if s.healthy),
        }
