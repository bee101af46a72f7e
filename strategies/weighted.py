"""``weighted``: smooth weighted round-robin, as nginx does it.

Weights come from ``balancer.options.weights`` (``{GPU-001: 3}``) or else from the
weight a node sent when it registered (default 1). Each pick adds every candidate's
weight to its current score, takes the highest and subtracts the total from it, so
weights 5:1:1 give a a b a c a a rather than a a a a a b c.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from photogate.balancing import JobView, NodeView, Strategy, StrategyError, node_order


class Weighted(Strategy):
    name = "weighted"

    def __init__(self, options: Mapping[str, Any] | None = None, rng: random.Random | None = None) -> None:
        options = dict(options or {})
        weights = options.pop("weights", {}) or {}
        if options:
            raise StrategyError(f"weighted: unknown options {sorted(options)} (known: weights)")
        if not isinstance(weights, Mapping):
            raise StrategyError("weighted: options.weights must map server ids to positive integers")
        for key, value in weights.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise StrategyError(f"weighted: weight of {key} must be a positive integer, got {value!r}")
        self._weights: dict[str, int] = dict(weights)
        self._current: dict[str, int] = {}

    def weight_of(self, node: NodeView) -> int:
        return self._weights.get(node.server_id, max(node.weight, 1))

    def choose(self, candidates: Sequence[NodeView], job: JobView) -> NodeView:
        total = 0
        best: NodeView | None = None
        for node in sorted(candidates, key=lambda n: node_order(n.server_id)):
            weight = self.weight_of(node)
            total += weight
            score = self._current.get(node.server_id, 0) + weight
            self._current[node.server_id] = score
            if best is None or score > self._current[best.server_id]:
                best = node
        assert best is not None
        self._current[best.server_id] -= total
        return best


STRATEGY = Weighted
