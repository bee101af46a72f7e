"""Dispatch: the queue of accepted tasks, the dispatcher that places and runs them, and the
client that sends a job to a GPU node.

- :mod:`.queue`: the :class:`TaskQueue` protocol; :class:`LocalQueue` (one gateway) and
  :class:`SharedQueue` (several gateways claiming from a shared store queue);
- :mod:`.nodeclient`: :class:`NodeClient` and the failure kinds a node answer stands for;
- :mod:`.dispatcher`: :class:`Dispatcher`, placement and one job's outcome.

The wiring (``photogate.lifecycle``) and the status handlers import from here.
"""

from .dispatcher import Dispatcher, DispatchEvents, PlacementSettings
from .nodeclient import JobRejected, NodeBusy, NodeClient, NodeFailure, StorageFailure
from .queue import LocalQueue, Queued, SharedQueue, TaskQueue

__all__ = [
    "DispatchEvents", "Dispatcher", "JobRejected", "LocalQueue", "NodeBusy", "NodeClient", "NodeFailure",
    "PlacementSettings", "Queued", "SharedQueue", "StorageFailure", "TaskQueue",
]
