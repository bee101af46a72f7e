"""``fastest``: send each photo where it is expected to finish first.

Each node's speed is an EWMA of the megapixels per second it achieved on finished jobs,
with the node's own health report (``throughput``) as the prior until it has history.
The expected finish of a job on a node is the work still ahead of it there (jobs running
and jobs the gateway already handed over) divided by the node's speed and slots, plus the
job's own megapixels over the node's speed. So a large photo goes to the fast node even
when a slow node is idle, and a small one goes to the idle slow node when the fast node's
queue is long. While any candidate has neither history nor a reported speed, the choice
falls back to ``least_busy``.

It plans ahead (``plans_ahead = True``): the dispatcher offers it every serving node,
busy ones included, and it may answer ``None`` to hold a job back for a busy node that
would still finish it first. Nothing is committed to a node's own queue, so a later
decision can change (late binding); within one placement pass, jobs held for a node are
counted as work ahead of it (:meth:`begin_pass` resets that), so the head of the queue
keeps its claim and smaller photos flow to the nodes that are free.

Pipelining (:meth:`pipeline_depth`): when a node's jobs are short next to the gateway's
per-job gap on it (the gap the dispatcher measures from a job's answer to the next job
sent, plus the transfer: a job's time from dispatch to answer beyond the inference time
the node reports), the node holds up to ``ceil(gap / job time) + 1`` jobs (at most
``pipeline_max``, within its queue room) beyond its slots, so the next photo is already
there when the current one ends. Only a job that is itself that short goes into such a
place; with a ratio under ``pipeline_ratio`` (long jobs) the depth is 0: late binding.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from photogate.balancing import JobView, NodeView, Strategy, StrategyError
from strategies.least_busy import LeastBusy


@dataclass
class _Outstanding:
    megapixels: float
    dispatched_at: float


class Fastest(Strategy):
    name = "fastest"
    plans_ahead = True

    def __init__(
        self,
        options: Mapping[str, Any] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        options = dict(options or {})
        self.alpha = options.pop("alpha", 0.3)
        self.pipeline_ratio = options.pop("pipeline_ratio", 0.05)
        self.pipeline_max: int = options.pop("pipeline_max", 2)
        if options:
            raise StrategyError(f"fastest: unknown options {sorted(options)} "
                                "(known: alpha, pipeline_ratio, pipeline_max)")
        if not isinstance(self.alpha, (int, float)) or not 0 < self.alpha <= 1:
            raise StrategyError("fastest: alpha must be a number in (0, 1]")
        if not isinstance(self.pipeline_ratio, (int, float)) or isinstance(self.pipeline_ratio, bool) \
                or not self.pipeline_ratio > 0:
            raise StrategyError("fastest: pipeline_ratio must be a number > 0")
        if not isinstance(self.pipeline_max, int) or isinstance(self.pipeline_max, bool) \
                or not 0 <= self.pipeline_max <= 16:
            raise StrategyError("fastest: pipeline_max must be an integer from 0 to 16 (0: never pipeline)")
        self._rng = rng or random.Random()
        self._clock = clock
        self._fallback = LeastBusy({}, self._rng)
        self._speed: dict[str, float] = {}
        self._outstanding: dict[str, dict[str, _Outstanding]] = {}
        self._last_done: dict[str, float] = {}
        self._slots: dict[str, int] = {}
        self._prior: dict[str, float] = {}
        #: Megapixels held back for each node during the current placement pass.
        self._held: dict[str, float] = {}
        #: Per node: the inference speed it reports, the size of its recent jobs, and the
        #: seconds a job spends beyond its inference (transfer), averaged.
        self._reported: dict[str, float] = {}
        self._size: dict[str, float] = {}
        self._transfer: dict[str, float] = {}

    # -- what the strategy knows ------------------------------------------------------------

    def speed(self, node: NodeView) -> float | None:
        """Megapixels per second per slot: learned, else the node's reported throughput."""
        learned = self._speed.get(node.server_id)
        if learned is not None:
            return learned
        reported = self._note_reported(node)
        if reported is not None:
            self._prior[node.server_id] = reported
        return reported

    def _note_reported(self, node: NodeView) -> float | None:
        reported = node.health.get("throughput")
        if isinstance(reported, (int, float)) and not isinstance(reported, bool) and reported > 0:
            self._reported[node.server_id] = float(reported)
            return float(reported)
        return None

    # -- pipelining ------------------------------------------------------------------------

    def overhead(self, node: NodeView) -> float | None:
        """Seconds the node's GPU waits per job: the gateway's gap plus the transfer."""
        if node.gap is None:
            return None
        return node.gap + self._transfer.get(node.server_id, 0.0)

    def depth_for(self, node: NodeView, seconds: float) -> int:
        """Jobs of ``seconds`` the node should hold beyond its slots (0: late binding)."""
        overhead = self.overhead(node)
        if overhead is None or seconds <= 0 or node.queue_room <= 0:
            return 0
        ratio = overhead / seconds
        if ratio < self.pipeline_ratio:
            return 0
        # Enough to cover the average gap, and one more for its spread (a gap longer than the
        # jobs it should cover idles the GPU: a slow pass, a busy event loop).
        return min(math.ceil(ratio) + 1, self.pipeline_max, node.queue_room)

    def pipeline_depth(self, node: NodeView) -> int:
        speed, size = self.speed(node), self._size.get(node.server_id)
        if speed is None or size is None:
            return 0
        return self.depth_for(node, size / speed)

    def _takes(self, node: NodeView, job: JobView, now: float) -> bool:
        """A free slot, or a pipeline place for a job short enough to earn one, behind no
        more than a few such jobs (never behind a long one: that is still late binding;
        never on a node whose running work is overdue)."""
        if node.free_slots > 0:
            return True
        speed = self.speed(node)
        if node.openings <= 0 or speed is None or self.overdue(node, now):
            return False
        seconds = job.megapixels / speed
        depth = self.depth_for(node, seconds)
        return node.inflight - node.slots < depth and self.backlog_seconds(node, speed, now) <= (depth + 1) * seconds

    def backlog_seconds(self, node: NodeView, speed: float, now: float) -> float:
        """Seconds until the node could start one more job: what it runs, what it was
        handed, and what this pass already held back for it."""
        jobs = list(self._outstanding.get(node.server_id, {}).values())
        slots = max(node.slots, 1)
        work = self._held.get(node.server_id, 0.0)
        if jobs:
            # The node works through what it holds, min(slots, jobs) at a time, since the
            # first of them started.
            started = min(self._started(node.server_id, job) for job in jobs)
            done = max(now - started, 0.0) * speed * min(slots, len(jobs))
            work += max(sum(job.megapixels for job in jobs) - done, 0.0)
        return work / (speed * slots)

    def _started(self, server_id: str, job: _Outstanding) -> float:
        # On a one-slot node, a job handed over while another ran started when that one finished.
        if self._slots.get(server_id, 1) == 1:
            return max(job.dispatched_at, self._last_done.get(server_id, job.dispatched_at))
        return job.dispatched_at

    def overdue(self, node: NodeView, now: float) -> bool:
        """A node whose running work is taking over twice its expected time (plus a second)
        may be hung or slowed: no job is held back for it until it answers again."""
        jobs = list(self._outstanding.get(node.server_id, {}).values())
        speed = self.speed(node)
        if not jobs or speed is None:
            return False
        started = min(self._started(node.server_id, job) for job in jobs)
        expected = sum(job.megapixels for job in jobs) / (speed * min(max(node.slots, 1), len(jobs)))
        return now - started > 2 * expected + 1.0

    def expected_finish(self, node: NodeView, job: JobView, now: float) -> float | None:
        speed = self.speed(node)
        if speed is None:
            return None
        return self.backlog_seconds(node, speed, now) + job.megapixels / speed

    # -- the choice -----------------------------------------------------------------------

    def begin_pass(self) -> None:
        self._held.clear()

    def choose(self, candidates: Sequence[NodeView], job: JobView) -> NodeView | None:
        now = self._clock()
        for node in candidates:
            self._slots[node.server_id] = max(node.slots, 1)
            self._note_reported(node)
        free = [n for n in candidates if self._takes(n, job, now)]
        candidates = free + [n for n in candidates if n not in free and not self.overdue(n, now)]
        if not candidates:
            return None
        finishes = [(self.expected_finish(node, job, now), node) for node in candidates]
        if any(finish is None for finish, _ in finishes):
            return self._fallback.choose(free, job) if free else None
        best = min(finish for finish, _ in finishes if finish is not None)
        # Ties (equal nodes) within a millisecond: prefer a free node, else pick at random.
        tied = [n for f, n in finishes if f is not None and f - best < 1e-3]
        ready = [n for n in tied if n in free]
        if ready:
            return self._rng.choice(ready)
        # The best node is busy: hold the job for it, and count it as work ahead of it.
        target = self._rng.choice(tied)
        self._held[target.server_id] = self._held.get(target.server_id, 0.0) + job.megapixels
        return None

    def on_dispatched(self, server_id: str, job: JobView) -> None:
        self._outstanding.setdefault(server_id, {})[job.task_id] = _Outstanding(job.megapixels, self._clock())

    def on_completed(self, server_id: str, job: JobView, seconds: float, ok: bool) -> None:
        now = self._clock()
        record = self._outstanding.get(server_id, {}).pop(job.task_id, None)
        if record is None:
            return
        started = self._started(server_id, record)
        busy = now - started
        self._last_done[server_id] = now
        if ok and busy > 0 and job.megapixels > 0:
            self._learn_pipeline(server_id, job.megapixels, busy, waited=started > record.dispatched_at)
            sample = job.megapixels / busy
            # The node's own report is the prior the first sample is blended with.
            old = self._speed.get(server_id, self._prior.get(server_id))
            self._speed[server_id] = sample if old is None else self.alpha * sample + (1 - self.alpha) * old


    def _learn_pipeline(self, server_id: str, megapixels: float, busy: float, waited: bool) -> None:
        old = self._size.get(server_id)
        self._size[server_id] = megapixels if old is None else self.alpha * megapixels + (1 - self.alpha) * old
        reported = self._reported.get(server_id)
        if reported is None or waited:
            return  # a job that waited behind another on the node has no transfer of its own in ``busy``
        sample = max(busy - megapixels / reported, 0.0)
        old = self._transfer.get(server_id)
        self._transfer[server_id] = sample if old is None else self.alpha * sample + (1 - self.alpha) * old


STRATEGY = Fastest
