"""The health rule, in one place: consecutive failures reaching the threshold mark a node
down; one success marks it up again and clears the count.

Every registry applies it through :func:`verdict`: the single gateway's
:class:`~photogate.registry.Registry` in memory, and the Redis-backed registry for its
local view. The Redis ``HEALTH`` script (``storage/redis``) applies the same rule to the
shared counters inside Redis and must stay its mirror: ``tests/test_health_rule.py`` runs
one table of cases against this function and against both registries.
"""

from __future__ import annotations

from dataclasses import dataclass

#: ``Verdict.moved``: the node went up, went down, or kept its state.
UP, DOWN, SAME = 1, -1, 0


@dataclass(frozen=True)
class Verdict:
    """A node's health after one outcome."""

    healthy: bool
    #: Failed checks (or dispatches) in a row.
    failures: int
    #: :data:`UP`, :data:`DOWN` or :data:`SAME`.
    moved: int


def verdict(healthy: bool, failures: int, ok: bool, threshold: int) -> Verdict:
    """The node's health after an outcome: ``ok`` (a check or a job that worked) or not.

    A success clears the failures and marks the node up. A failure counts; a healthy node
    goes down once its count reaches ``threshold``, an unhealthy one stays down.
    """
    if ok:
        return Verdict(True, 0, SAME if healthy else UP)
    failures += 1
    if healthy and failures >= threshold:
        return Verdict(False, failures, DOWN)
    return Verdict(healthy, failures, SAME)
