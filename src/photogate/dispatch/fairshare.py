"""Fair share between owners: deficit round robin on megapixels, weighted by priority class.

Why deficit round robin and not weighted fair queueing: DRR needs no virtual clock and no
per-task tags fixed at arrival, so a task handed back (a retry, a dead gateway's claim) simply
returns to the head of its owner's queue; each pick is O(1) (amortised) with state that is
one number per waiting owner and a ring of owner names, small enough to keep in Redis and to
update atomically in the claim script (``storage/redis/claim.lua`` runs the same algorithm).

The variant is the one Linux's ``sch_fq`` uses: the owner at the head of the ring is served
while its credit is positive (credit may go negative by at most one photo), then gets its
quantum (:class:`Weights`: 1 MP x its class weight) and goes to the tail. A new owner joins
at the tail with one quantum. So while several owners wait, each class-weight unit gets the
same megapixels, a light owner waits at most one round behind a heavy owner's batch, and
nobody is starved: every owner in the ring is served once per round.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from ..storage.protocols import Weights

__all__ = ["FairShare", "Weights"]

class Waiting(Protocol):
    """What the scheduler needs of a waiting task (ordered by arrival within its owner)."""

    @property
    def owner(self) -> str | None: ...
    @property
    def priority_class(self) -> str | None: ...
    @property
    def cost(self) -> float: ...
    def __lt__(self, other: Any, /) -> bool: ...


T = TypeVar("T", bound=Waiting)


@dataclass
class _Owner(Generic[T]):
    credit: float
    items: list[T] = field(default_factory=list)  # a heap: arrival order


@dataclass
class _Pass(Generic[T]):
    """What a placement pass changed, to be settled by :meth:`FairShare.refund`: the ring as
    it began, each touched owner's credit before the pass, the tasks it took (in order)."""

    ring: deque[str]
    members: set[str]
    credits: dict[str, float] = field(default_factory=dict)
    popped: list[T] = field(default_factory=list)
    #: The credit of each owner that left the ring during the pass (its last task popped).
    left: dict[str, float] = field(default_factory=dict)


class FairShare(Generic[T]):
    """The ready tasks of every owner; :meth:`pop` gives the next one in weighted fair order.

    A placement pass pops tasks and may put some back (no node could take them now):
    :meth:`refund` then leaves the order exactly as if the pass had only taken the tasks it
    placed, so a task held back for a busy node costs its owner nothing and keeps its turn.
    """

    def __init__(self, weights: Weights) -> None:
        self.weights = weights
        self._owners: dict[str, _Owner[T]] = {}
        self._ring: deque[str] = deque()
        self._size = 0
        self._pass: _Pass[T] | None = None

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[T]:
        for owner in self._owners.values():
            yield from owner.items

    def push(self, item: T) -> None:
        """A task ready to run; a new owner joins the end of the ring with one quantum."""
        key = item.owner or ""
        owner = self._owners.get(key)
        if owner is None:
            owner = self._owners[key] = _Owner(self.weights.quantum_of(item.priority_class))
            self._ring.append(key)
            if self._pass is not None and key not in self._pass.members:
                self._pass.ring.append(key)
                self._pass.members.add(key)
        heapq.heappush(owner.items, item)
        self._size += 1

    def pop(self) -> T | None:
        """The next task in fair order, or ``None`` when nothing is ready."""
        ring, owners = self._ring, self._owners
        if self._pass is None:
            self._pass = _Pass(deque(ring), set(ring))
        topped = 0
        while ring:
            key = ring[0]
            owner = owners[key]
            self._touch(key)
            if owner.credit <= 0:
                if topped >= len(ring):
                    self._skip_rounds()
                    topped = 0
                owner.credit += self.weights.quantum_of(owner.items[0].priority_class)
                ring.rotate(-1)
                topped += 1
                continue
            item = self._take(key, owner)
            self._pass.popped.append(item)
            return item
        return None

    def _take(self, key: str, owner: _Owner[T]) -> T:
        """Take the owner's oldest task and charge the owner; an owner left with nothing
        waiting leaves the ring (at its head), credit and all."""
        item = heapq.heappop(owner.items)
        owner.credit -= self.weights.charge(item.cost)
        self._size -= 1
        if not owner.items:
            self._ring.popleft()
            del self._owners[key]
            if self._pass is not None:
                self._pass.left[key] = owner.credit
        return item

    def _touch(self, key: str) -> None:
        if self._pass is not None and key not in self._pass.credits:
            self._pass.credits[key] = self._owners[key].credit

    def _skip_rounds(self) -> None:
        """A full round served nobody (photos much larger than a quantum): give every owner, at
        once, the rounds it takes the first of them to be back in credit."""
        for key in self._ring:
            self._touch(key)
        owners = [self._owners[key] for key in self._ring]
        quanta = [self.weights.quantum_of(o.items[0].priority_class) for o in owners]
        rounds = min(max(math.floor(-o.credit / q), 0) for o, q in zip(owners, quanta))
        for owner, quantum in zip(owners, quanta):
            owner.credit += rounds * quantum

    def refund(self, items: list[T]) -> None:
        """End of a placement pass: ``items`` (popped by it) were not placed.

        A pass that placed nothing leaves everything as it found it (ring and credits). A pass
        that placed some tasks keeps the rounds it went through — the quanta given and the
        owners moved on, exactly as if the placed tasks alone had been popped — and gives each
        unplaced task back to the head of its owner's queue with its charge refunded (an owner
        that had left the ring with it comes back at the head, where it was): a task held back
        for a busy node costs its owner nothing. (Restoring the credits and charging only the
        placed tasks, as before, undid every quantum a pass gave: an owner served alone banked
        a debt of many photos and was starved once others arrived.)"""
        run, self._pass = self._pass, None
        if run is None:
            for item in items:
                self.push(item)
            return
        back = {id(item) for item in items}
        if len(back) == len(run.popped):
            self._restore(run)
            return
        for item in reversed([item for item in run.popped if id(item) in back]):
            key = item.owner or ""
            owner = self._owners.get(key)
            if owner is None:
                owner = self._owners[key] = _Owner(run.left.pop(key, 0.0))
                self._ring.appendleft(key)
            owner.credit += self.weights.charge(item.cost)
            heapq.heappush(owner.items, item)
            self._size += 1

    def _restore(self, run: _Pass[T]) -> None:
        """Undo a pass that placed nothing: every task back, the ring and credits as they were."""
        for item in run.popped:
            owner = self._owners.setdefault(item.owner or "", _Owner(0.0))
            heapq.heappush(owner.items, item)
            self._size += 1
        for key, credit in run.credits.items():
            if key in self._owners:
                self._owners[key].credit = credit
        self._ring = deque(key for key in run.ring if key in self._owners)

    def order(self) -> list[T]:
        """Every ready task in the order :meth:`pop` would give them (nothing changes here)."""
        twin: FairShare[T] = FairShare(self.weights)
        twin._owners = {k: _Owner(o.credit, list(o.items)) for k, o in self._owners.items()}
        twin._ring = deque(self._ring)
        twin._size = self._size
        return [item for item in iter(twin.pop, None)]
