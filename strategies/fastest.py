"""``fastest``: send each photo where it is expected to finish first.

Each node's speed is an EWMA of the megapixels per second it achieved on finished jobs,
with the node's own health report (``throughput``) as the prior until it has history.
The expected finish of a job on a node is the work still ahead of it there (jobs running
and jobs the gateway already handed over) divided by the node's speed and slots, plus the
job's own megapixels over the node's speed. So a large photo goes to the fast node even
when a slow node is idle, and a small one goes to the idle slow node when the fast node's
queue is long. While any candidate has neither history nor a reported speed, the choice
falls back to ``least_busy``.

The strategy sets ``accepts_queued = True``: the dispatcher then also offers nodes that
are busy but may hold ``dispatch.prefetch`` more jobs, so a transfer overlaps inference.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from photogate.balancing import JobView, NodeView, StrategyError
from strategies.least_busy import LeastBusy


@dataclass
class _Outstanding:
    megapixels: float
    dispatched_at: float


class Fastest:
    name = "fastest"
    accepts_queued = True

    def __init__(
        self,
        options: Mapping[str, Any] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        options = dict(options or {})
        self.alpha = options.pop("alpha", 0.3)
        if options:
            raise StrategyError(f"fastest: unknown options {sorted(options)} (known: alpha)")
        if not isinstance(self.alpha, (int, float)) or not 0 < self.alpha <= 1:
            raise StrategyError("fastest: alpha must be a number in (0, 1]")
        self._rng = rng or random.Random()
        self._clock = clock
        self._fallback = LeastBusy({}, self._rng)
        self._speed: dict[str, float] = {}
        self._outstanding: dict[str, dict[str, _Outstanding]] = {}
        self._last_done: dict[str, float] = {}
        self._slots: dict[str, int] = {}
        self._prior: dict[str, float] = {}

    # -- what the strategy knows ------------------------------------------------------------

    def speed(self, node: NodeView) -> float | None:
        """Megapixels per second per slot: learned, else the node's reported throughput."""
        learned = self._speed.get(node.server_id)
        if learned is not None:
            return learned
        reported = node.health.get("throughput")
        if isinstance(reported, (int, float)) and not isinstance(reported, bool) and reported > 0:
            self._prior[node.server_id] = float(reported)
            return float(reported)
        return None

    def backlog_seconds(self, node: NodeView, speed: float, now: float) -> float:
        """Seconds until the node could start one more job on any slot."""
        jobs = list(self._outstanding.get(node.server_id, {}).values())
        if not jobs:
            return 0.0
        slots = max(node.slots, 1)
        # The node works through what it holds, min(slots, jobs) at a time, since the
        # first of them started.
        started = min(self._started(node.server_id, job) for job in jobs)
        done = max(now - started, 0.0) * speed * min(slots, len(jobs))
        work = max(sum(job.megapixels for job in jobs) - done, 0.0)
        return work / (speed * slots)

    def _started(self, server_id: str, job: _Outstanding) -> float:
        # On a one-slot node, a job handed over while another ran started when that one finished.
        if self._slots.get(server_id, 1) == 1:
            return max(job.dispatched_at, self._last_done.get(server_id, job.dispatched_at))
        return job.dispatched_at

    def expected_finish(self, node: NodeView, job: JobView, now: float) -> float | None:
        speed = self.speed(node)
        if speed is None:
            return None
        return self.backlog_seconds(node, speed, now) + job.megapixels / speed

    # -- the choice -----------------------------------------------------------------------

    def choose(self, candidates: Sequence[NodeView], job: JobView) -> NodeView:
        now = self._clock()
        for node in candidates:
            self._slots[node.server_id] = max(node.slots, 1)
        finishes = [(self.expected_finish(node, job, now), node) for node in candidates]
        if any(finish is None for finish, _ in finishes):
            free = [n for n in candidates if n.free_slots > 0] or list(candidates)
            return self._fallback.choose(free, job)
        best = min(finish for finish, _ in finishes if finish is not None)
        # Ties (equal nodes) within a millisecond: pick at random, so equal nodes share work.
        return self._rng.choice([n for f, n in finishes if f is not None and f - best < 1e-3])

    def on_dispatched(self, server_id: str, job: JobView) -> None:
        self._outstanding.setdefault(server_id, {})[job.task_id] = _Outstanding(job.megapixels, self._clock())

    def on_completed(self, server_id: str, job: JobView, seconds: float, ok: bool) -> None:
        now = self._clock()
        record = self._outstanding.get(server_id, {}).pop(job.task_id, None)
        if record is None:
            return
        busy = now - self._started(server_id, record)
        self._last_done[server_id] = now
        if ok and busy > 0 and job.megapixels > 0:
            sample = job.megapixels / busy
            # The node's own report is the prior the first sample is blended with.
            old = self._speed.get(server_id, self._prior.get(server_id))
            self._speed[server_id] = sample if old is None else self.alpha * sample + (1 - self.alpha) * old


STRATEGY = Fastest
