"""Runtime settings: what an operator changes while the gateway runs (the strategy and its
options, multi-backend mode), kept in the state store so that a restart, and every gateway
sharing one Redis, agree on them. :class:`RuntimeSettings` is the one object that holds the
values in use: the dispatcher reads its strategy and multi-backend flag at each placement.

Precedence: a runtime change wins over the config file, a SIGHUP reload included, until
``photogate-admin config reset KEY`` (``POST /api/v1/config/reset``) drops it; the file's
value applies again from then on. Every change bumps a version in the store; a gateway that
shares Redis re-reads the settings when the version moves (``RuntimeSettings.watch``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from typing import Any

import structlog

from .audit import audit
from .balancing import Strategy, load_strategy
from .config import Config
from .errors import StoreUnavailable
from .storage.protocols import SettingsStore

log = structlog.get_logger("photogate.runtime")

#: Each runtime key and the keys changed and reset with it (a strategy's options are its own).
GROUPS: dict[str, tuple[str, ...]] = {
    "balancer.strategy": ("balancer.strategy", "balancer.options"),
    "balancer.options": ("balancer.strategy", "balancer.options"),
    "multi_backend.enabled": ("multi_backend.enabled",),
}
KEYS = tuple(GROUPS)


def file_values(config: Config) -> dict[str, Any]:
    """The runtime keys' values in a loaded config file."""
    return {
        "balancer.strategy": config.balancer.strategy,
        "balancer.options": dict(config.balancer.options),
        "multi_backend.enabled": config.multi_backend.enabled,
    }


def unknown_key(key: str) -> str:
    return f"{key!r} is not a runtime setting; runtime settings: {', '.join(KEYS)}"


class RuntimeSettings:
    """The file's values, the store's runtime changes over them, the version last read, and
    the values in use: the strategy (built once per change) and multi-backend mode."""

    def __init__(self, config: Config, rng: random.Random | None = None) -> None:
        self.file = file_values(config)
        self.changes: dict[str, dict[str, Any]] = {}
        self.version = -1
        self._store: SettingsStore | None = None
        self.rng = rng or random.Random()
        self.strategy_name: str = config.balancer.strategy
        self.strategy_options: dict[str, Any] = dict(config.balancer.options)
        self.strategy: Strategy = load_strategy(self.strategy_name, self.strategy_options, self.rng)
        self.multi_backend: bool = config.multi_backend.enabled
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, callback: Callable[[], None]) -> None:
        """``callback`` runs after the strategy or multi-backend mode changed."""
        self._listeners.append(callback)

    async def open(self, store: SettingsStore) -> None:
        self._store = store
        await self.refresh()

    @property
    def store(self) -> SettingsStore:
        assert self._store is not None, "runtime settings are not open"
        return self._store

    async def refresh(self) -> None:
        self.version, self.changes = await self.store.load_settings()

    def effective(self) -> dict[str, Any]:
        return {key: self.changes[key]["value"] if key in self.changes else value for key, value in self.file.items()}

    def sources(self) -> dict[str, str]:
        return {key: "runtime" if key in self.changes else "file" for key in KEYS}

    def describe(self) -> dict[str, Any]:
        """Per key: where its value comes from; a runtime change also says when, by whom,
        and what the file says (what ``config reset`` brings back)."""
        out: dict[str, Any] = {}
        for key in KEYS:
            entry = self.changes.get(key)
            out[key] = {"source": "file", "value": self.file[key]} if entry is None else {
                "source": "runtime", "value": entry["value"], "file_value": self.file[key],
                "changed_at": entry.get("changed_at"), "who": entry.get("who"),
            }
        return out

    async def change(self, values: Mapping[str, Any], who: str) -> None:
        """Store a runtime change (durable before it is applied), then re-read them all."""
        await self.store.save_settings(values, who)
        await self.refresh()

    async def reset(self, key: str) -> list[str]:
        """Drop the runtime change of ``key`` (and of the keys that go with it); returns the
        keys that had one."""
        dropped = [k for k in GROUPS[key] if k in self.changes]
        await self.store.drop_settings(GROUPS[key])
        await self.refresh()
        return dropped

    def apply(self, *, who: str | None = None, ip: str = "") -> None:
        """Make the effective values (runtime changes over the file) the ones in use. A change
        someone made here is audited (``who``); one read from the store (at start, or made by
        another gateway) is logged."""
        changes: list[tuple[str, Any, Any]] = []
        want = self.effective()
        name, options = want["balancer.strategy"], dict(want["balancer.options"] or {})
        if (name, options) != (self.strategy_name, self.strategy_options):
            try:
                strategy = load_strategy(name, options, self.rng)
            except ValueError as exc:  # a stored strategy whose plugin is gone: keep the current one
                log.error("runtime_strategy_unusable", strategy=name, error=str(exc),
                          fix="photogate-admin config reset balancer.strategy")
            else:
                changes.append(("strategy_changed", self.strategy_name, name))
                self.strategy_name, self.strategy_options = name, options
                self.strategy = strategy
        enabled = bool(want["multi_backend.enabled"])
        if enabled != self.multi_backend:
            changes.append(("multi_backend_changed", self.multi_backend, enabled))
            self.multi_backend = enabled
        if changes:
            for callback in self._listeners:
                callback()
        for action, old, new in changes:
            if who is None:
                log.info("runtime_setting_applied", change=action, old=old, new=new, version=self.version)
            else:
                audit(action, who=who, ip=ip, old=old, new=new)

    async def watch(self, interval: float, apply: Callable[[], None]) -> None:
        """With several gateways: re-read and ``apply`` whenever another gateway changed them."""
        while True:
            await asyncio.sleep(interval)
            try:
                if await self.store.settings_version() != self.version:
                    await self.refresh()
                    log.info("runtime_settings_changed_elsewhere", version=self.version,
                             runtime=sorted(self.changes))
                    apply()
            except StoreUnavailable:
                pass  # the registry logs the outage; the next round tries again
            except Exception:
                log.exception("runtime_settings_watch_failed")

