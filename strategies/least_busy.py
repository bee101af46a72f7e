"""``least_busy``: the node with the lowest share of its slots in use; ties broken at random."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from photogate.balancing import JobView, NodeView, Strategy, StrategyError


class LeastBusy(Strategy):
    name = "least_busy"

    def __init__(self, options: Mapping[str, Any] | None = None, rng: random.Random | None = None) -> None:
        if options:
            raise StrategyError(f"least_busy takes no options, got {sorted(options)}")
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[NodeView], job: JobView) -> NodeView:
        # The gateway's own in-flight count is exact; the node's reported queue covers
        # work that reached it from elsewhere (another gateway, a direct client).
        def load(node: NodeView) -> float:
            queued = node.health.get("queued") or 0
            return (node.inflight + (queued if isinstance(queued, int) else 0)) / max(node.slots, 1)

        best = min(load(n) for n in candidates)
        return self._rng.choice([n for n in candidates if load(n) == best])


STRATEGY = LeastBusy
