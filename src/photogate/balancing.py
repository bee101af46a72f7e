"""Balancing strategies: the interface, the built-in ``round_robin``, and the loader.

A strategy only chooses. It is synchronous, does no I/O, sees only healthy nodes that
can take work right now, and gets its randomness injected, so its tests are
deterministic. Names resolve built-in -> entry point (group ``photogate.strategies``)
-> a drop-in module in the top-level ``strategies`` package -> ``"module:Class"``.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ENTRY_POINT_GROUP = "photogate.strategies"


@dataclass(frozen=True)
class NodeView:
    """A read-only snapshot of one candidate node, as a strategy sees it."""

    server_id: str
    address: str
    inflight: int
    slots: int
    weight: int = 1
    #: The node's last health report (busy, queued, throughput in MP/s, ...).
    health: Mapping[str, Any] = field(default_factory=dict)
    #: Jobs the node can hold waiting besides those it runs (its reported ``queue_size``).
    queue_room: int = 0
    #: Jobs the dispatcher lets it hold beyond its slots: what the strategy's
    #: :meth:`Strategy.pipeline_depth` asked for, within ``queue_room`` (0: late binding).
    depth: int = 0
    #: Seconds from a job's answer to the next job sent to this node while work waited
    #: (the gateway's per-job gap, an average); ``None`` until measured.
    gap: float | None = None

    @property
    def free_slots(self) -> int:
        return max(self.slots - self.inflight, 0)

    @property
    def openings(self) -> int:
        """Jobs the dispatcher would still send it now: free slots plus pipeline places."""
        return max(self.slots + self.depth - self.inflight, 0)

    @property
    def load(self) -> float:
        return self.inflight / max(self.slots, 1)


@dataclass(frozen=True)
class JobView:
    """What a strategy may know about the job it places."""

    task_id: str
    megapixels: float
    input_bytes: int


class Strategy:
    """A balancing policy: every hook the dispatcher calls, with defaults that do nothing.

    ``choose`` picks one of ``candidates`` (never empty) for ``job``. A strategy with
    ``plans_ahead = True`` is also offered busy nodes (``free_slots == 0``) and may return
    ``None`` to keep the job queued for one of them. ``begin_pass`` runs before each
    placement pass over the queue; ``on_dispatched`` when a job starts on a node;
    ``on_completed`` when the node is free of it again (``ok``: it answered).
    ``pipeline_depth`` lets a node hold that many jobs beyond its slots in its own queue
    (short jobs: the transfer and the gateway's work overlap inference); such a node is
    offered with ``depth`` set while ``inflight < slots + depth``. The default, 0, keeps
    late binding: a job goes only to a free slot.
    """

    name: str = ""
    plans_ahead: bool = False

    def choose(self, candidates: Sequence[NodeView], job: JobView) -> NodeView | None:
        raise NotImplementedError

    def begin_pass(self) -> None:
        """Before each placement pass."""

    def pipeline_depth(self, node: NodeView) -> int:
        """Jobs ``node`` may hold waiting beyond its slots (bounded by its queue room)."""
        return 0

    def on_dispatched(self, server_id: str, job: JobView) -> None:
        """``job`` has started on ``server_id``."""

    def on_completed(self, server_id: str, job: JobView, seconds: float, ok: bool) -> None:
        """``server_id`` is done with ``job`` after ``seconds`` (``ok``: it answered)."""


class StrategyError(ValueError):
    """A strategy name does not resolve, or its options are wrong."""


class RoundRobin(Strategy):
    """GPU-001 -> GPU-002 -> GPU-003 -> GPU-001 ..., skipping nodes that cannot take work."""

    name = "round_robin"

    def __init__(self, options: Mapping[str, Any] | None = None, rng: random.Random | None = None) -> None:
        if options:
            raise StrategyError(f"round_robin takes no options, got {sorted(options)}")
        self._last: str | None = None

    def choose(self, candidates: Sequence[NodeView], job: JobView) -> NodeView:
        ordered = sorted(candidates, key=lambda n: node_order(n.server_id))
        if self._last is not None:
            last = node_order(self._last)
            after = [n for n in ordered if node_order(n.server_id) > last]
            chosen = after[0] if after else ordered[0]
        else:
            chosen = ordered[0]
        self._last = chosen.server_id
        return chosen


def node_order(server_id: str) -> tuple[int, str]:
    """Sort key putting GPU-002 before GPU-010 (and any foreign id after, by name)."""
    prefix, _, number = server_id.rpartition("-")
    return (int(number), prefix) if number.isdigit() else (1 << 62, server_id)


BUILTIN: dict[str, type[Strategy]] = {"round_robin": RoundRobin}


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _drop_in_names() -> list[str]:
    try:
        package = importlib.import_module("strategies")
    except ImportError:
        return []
    return [m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")]


def known_names() -> list[str]:
    return sorted(set(BUILTIN) | set(_entry_points()) | set(_drop_in_names()))


def _from_drop_in(name: str) -> object | None:
    if not name.isidentifier() or name not in _drop_in_names():
        return None
    module = importlib.import_module(f"strategies.{name}")
    cls: object | None = getattr(module, "STRATEGY", None)
    if cls is None:
        raise StrategyError(f"strategies/{name}.py defines no STRATEGY = <class>")
    return cls


def resolve_class(name: str) -> object:
    """What ``name`` names: a strategy class (or another factory, from a plugin)."""
    if name in BUILTIN:
        return BUILTIN[name]
    eps = _entry_points()
    try:
        if name in eps:
            loaded: object = eps[name].load()
            return loaded
        cls = _from_drop_in(name)
        if cls is not None:
            return cls
        if ":" in name:
            module_name, _, attr = name.partition(":")
            module = importlib.import_module(module_name)
            try:
                found: object = getattr(module, attr)
            except AttributeError:
                raise StrategyError(f"strategy {name!r}: module {module_name!r} has no attribute {attr!r}") from None
            return found
    except StrategyError:
        raise
    except Exception as exc:  # a plugin that fails to import is reported by name
        raise StrategyError(f"strategy {name!r} failed to load: {type(exc).__name__}: {exc}") from exc
    raise StrategyError(f"unknown strategy {name!r}; known: {', '.join(known_names())} (or 'module:Class')")


def adopt(cls: type) -> type[Strategy]:
    """A strategy class written against the older duck-typed interface (``choose``, and
    optionally ``name``, ``plans_ahead`` and the hooks, no base class), given
    :class:`Strategy` as a base: its own methods win, the hooks it lacks do nothing.
    The class keeps its name, module and ``isinstance`` answers."""
    if issubclass(cls, Strategy):
        return cls
    namespace = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__}
    return type(cls.__name__, (cls, Strategy), namespace)


def load_strategy(name: str, options: Mapping[str, Any] | None = None, rng: random.Random | None = None) -> Strategy:
    """Resolve ``name`` and build the strategy with its options and an injected RNG. A class
    that does not subclass :class:`Strategy` is adopted (:func:`adopt`); any other factory
    must build a :class:`Strategy`."""
    factory = resolve_class(name)
    if isinstance(factory, type):
        factory = adopt(factory)
    if not callable(factory):
        raise StrategyError(f"strategy {name!r}: {factory!r} is not a class")
    try:
        strategy: object = factory(dict(options or {}), rng or random.Random())
    except StrategyError:
        raise
    except (TypeError, ValueError) as exc:
        raise StrategyError(f"strategy {name!r}: bad options: {exc}") from exc
    if not isinstance(strategy, Strategy) or type(strategy).choose is Strategy.choose:
        label = getattr(factory, "__name__", repr(factory))
        raise StrategyError(f"strategy {name!r}: {label} has no choose(candidates, job) method")
    if not strategy.name:
        strategy.name = name
    return strategy
