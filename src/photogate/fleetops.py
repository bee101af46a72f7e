"""What an operator does to a node: drain it, undrain it, remove it, each audited.

The admin API and the dashboard both act through here, so an action is written (and
audited) once whichever way the operator came."""

from __future__ import annotations

from typing import Protocol

from .audit import audit
from .errors import NotFound
from .registry import NodeState


class FleetControl(Protocol):
    """The registry as operator actions see it."""

    def get(self, server_id: str) -> NodeState | None: ...
    async def set_draining(self, server_id: str, draining: bool) -> NodeState | None: ...
    async def remove(self, server_id: str) -> NodeState | None: ...


def node_or_404(fleet: FleetControl, server_id: str) -> NodeState:
    node = fleet.get(server_id)
    if node is None:
        raise NotFound(f"no server {server_id[:32]}")
    return node


async def set_draining(fleet: FleetControl, server_id: str, draining: bool, *, ip: str,
                       via: str | None = None) -> NodeState:
    """Drain (no new work; running jobs finish) or undrain the node; audited as
    ``node_drained`` / ``node_undrained``. ``via``: where the operator acted, when not the API."""
    node = node_or_404(fleet, server_id)
    await fleet.set_draining(node.server_id, draining)
    where = {"via": via} if via else {}
    audit("node_drained" if draining else "node_undrained", who="admin", ip=ip, server_id=node.server_id, **where)
    return node


async def remove(fleet: FleetControl, server_id: str, *, ip: str) -> NodeState:
    """Forget the node for good (its id is never handed out again); audited as ``node_removed``."""
    node = node_or_404(fleet, server_id)
    await fleet.remove(node.server_id)
    audit("node_removed", who="admin", ip=ip, server_id=node.server_id)
    return node
