"""What the gateway asks of a state store, one protocol per concern.

Both backends (``storage.sqlite``, ``storage.redis``) provide :class:`Store`; code above the
storage package types against these protocols, never against a backend class. The Redis
backend alone provides what several gateways share (:class:`ClusterStore`): the shared
queue, the fleet's shared state (health, node slots), membership (heartbeat, prober lease)
and rate-limit buckets. Modules with records of their own (WeChat) borrow the backend's
connection through :class:`SQLRunner` or :class:`RedisKeyspace`.

``tests/test_backend_contract.py`` checks that each backend class provides every method of
the protocols it declares, with the same signature, and nothing public beyond them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol, TypeVar

from ..models import NodeRecord, TaskRecord, TaskStatus

if TYPE_CHECKING:
    import redis.asyncio as aioredis

T = TypeVar("T")


# -- what every backend provides -----------------------------------------------------------


class TaskStore(Protocol):
    """Tasks: the durable record of every accepted photo."""

    async def insert_task(self, task: TaskRecord | Callable[[], TaskRecord]) -> TaskRecord: ...
    async def get_task(self, task_id: str) -> TaskRecord | None: ...
    def peek_task(self, task_id: str) -> TaskRecord | None: ...
    async def update_task(self, task_id: str, *, prepare: Callable[[], dict[str, Any]] | None = None,
                          **changes: Any) -> None: ...
    async def list_tasks(self, statuses: Sequence[TaskStatus], limit: int = 1_000_000, *,
                         newest_first: bool = False) -> list[TaskRecord]: ...
    async def count_tasks(self) -> dict[str, int]: ...
    async def expired_task_ids(self, before: float) -> list[str]: ...
    async def delete_task(self, task_id: str) -> None: ...


class NodeStore(Protocol):
    """The fleet: registered GPU nodes and their operator flags."""

    async def load_nodes(self) -> list[NodeRecord]: ...
    async def register_node(self, ip: str, port: int, node_key: str | None, fields: dict[str, Any],
                            new_token: str) -> tuple[NodeRecord, bool, str | None]: ...
    async def set_node_offline(self, server_id: str) -> None: ...
    async def set_node_draining(self, server_id: str, draining: bool) -> None: ...
    async def delete_node(self, server_id: str) -> None: ...


class SettingsStore(Protocol):
    """Runtime settings. An entry is ``{"value": ..., "changed_at": seconds,
    "who": "admin@203.0.113.5"}``."""

    async def load_settings(self) -> tuple[int, dict[str, dict[str, Any]]]: ...
    async def save_settings(self, values: Mapping[str, Any], who: str) -> int: ...
    async def drop_settings(self, keys: Sequence[str]) -> int: ...
    async def settings_version(self) -> int: ...


class Store(TaskStore, NodeStore, SettingsStore, Protocol):
    """A whole state store, as the gateway opens and closes it."""

    #: What "the store failed" is (no node to blame): ``storage.common.STORE_ERRORS``.
    ERRORS: ClassVar[tuple[type[BaseException], ...]]

    async def close(self) -> None: ...


# -- what several gateways share (Redis) -----------------------------------------------------


#: Megapixels one unit of class weight earns per round of the fair share.
QUANTUM_MEGAPIXELS = 1.0
#: What the fair share charges a photo at least (megapixels): a node spends time on every job
#: whatever its size (transfer, decoding, a tile at least), so a batch of thumbnails is not free.
MIN_CHARGE_MEGAPIXELS = 0.25


@dataclass(frozen=True)
class Weights:
    """How the queue shares the fleet between owners (``access.classes``, ``access.default_class``):
    each round, an owner gets ``quantum`` megapixels times its class weight."""

    classes: Mapping[str, int]
    default_class: str
    quantum: float = QUANTUM_MEGAPIXELS
    min_charge: float = MIN_CHARGE_MEGAPIXELS

    def quantum_of(self, priority_class: str | None) -> float:
        """The megapixels a round gives an owner of ``priority_class`` (an unknown class: the default's)."""
        weight = self.classes.get(priority_class or self.default_class) or self.classes.get(self.default_class, 1)
        return self.quantum * weight

    def charge(self, megapixels: float) -> float:
        """What a photo of ``megapixels`` costs its owner's credit."""
        return max(megapixels, self.min_charge)


class SharedQueueStore(Protocol):
    """The queue several gateways share (Redis): accepted tasks wait there until a gateway
    with a free node slot claims them; a dead gateway's claims go back. With ``weights``,
    :meth:`claim` takes tasks in weighted fair order between owners (deficit round robin,
    decided in the store, so it holds across gateways); without, oldest first."""

    async def claim(self, count: int, weights: Weights | None = None) -> list[TaskRecord]: ...
    async def unclaim(self, task_ids: Sequence[str]) -> int: ...
    async def claimed_ids(self) -> set[str]: ...
    async def queue_length(self) -> int: ...
    async def dead_gateways(self) -> list[str]: ...
    async def reap(self, gateway_id: str, *, force: bool = False, ghost_seconds: float = 0.0) -> int: ...


class FleetSnapshot(NamedTuple):
    """Every node (in id order), the shared health of each (JSON, as the health rule keeps
    it), and the slots taken on each by all gateways together."""

    nodes: list[NodeRecord]
    health: dict[str, dict[str, Any]]
    taken: dict[str, int]


class Membership(NamedTuple):
    """What a heartbeat learnt: whether this gateway holds the health prober's lease, and the
    gateways whose heartbeat expired (to reap)."""

    prober: bool
    dead: list[str]


class FleetStateStore(Protocol):
    """What every gateway sees of the nodes: one health state, one count of taken slots."""

    async def fleet(self) -> FleetSnapshot: ...
    async def sync(self, *, completed: Mapping[str, int], beat_ttl: float | None
                   ) -> tuple[FleetSnapshot, Membership | None]:
        """Count ``completed`` job successes per node (the counter only), beat when ``beat_ttl``
        is given, read the fleet: the shared registry's refresh, in one round trip."""
        ...
    async def record_health(self, server_id: str, ok: bool, *, report: dict[str, Any] | None = None,
                            error: str = "", threshold: int = 3, counter: str = "", check: bool = False) -> int: ...
    async def acquire_slot(self, server_id: str, slots: int) -> int: ...
    async def release_slot(self, server_id: str) -> int: ...


class GatewayMembership(Protocol):
    """This gateway among the others: its heartbeat and the health prober's lease."""

    #: New at every start: names this process in the claim and reservation keys.
    gateway_id: str
    #: Where the shared store is, password masked (for logs).
    url: str

    async def heartbeat(self, ttl: float) -> None: ...
    async def lease(self, ttl: float) -> bool: ...
    async def drop_lease(self) -> None: ...


class RateBuckets(Protocol):
    """Token buckets every gateway draws from (shared rate limits)."""

    async def bucket(self, name: str, key: str, rate: float, burst: float, take: bool) -> float: ...
    async def draw(self, key: str, buckets: Sequence[tuple[str, float, float, bool]]) -> tuple[int, float]: ...


class ClusterStore(Store, SharedQueueStore, FleetStateStore, GatewayMembership, RateBuckets, Protocol):
    """The whole Redis backend: a :class:`Store` that several gateways share."""


# -- the backend's connection, lent to modules with records of their own -----------------------


class SQLRunner(Protocol):
    """The SQLite store's own thread and connection (``run(fn)`` calls ``fn(connection)`` there)."""

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...


class RedisKeyspace(Protocol):
    """The Redis store's client and key prefix (every key starts with ``prefix``)."""

    redis: aioredis.Redis
    prefix: str
