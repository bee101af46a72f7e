"""Runtime settings: what an operator changes while the gateway runs (the strategy and its
options, multi-backend mode), kept in the state store so that a restart, and every gateway
sharing one Redis, agree on them.

Precedence: a runtime change wins over the config file, a SIGHUP reload included, until
``photogate-admin config reset KEY`` (``POST /api/v1/config/reset``) drops it; the file's
value applies again from then on. Every change bumps a version in the store; a gateway that
shares Redis re-reads the settings when the version moves (``RuntimeSettings.watch``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import structlog

from .config import Config
from .errors import StoreUnavailable

log = structlog.get_logger("photogate.runtime")

#: Each runtime key and the keys changed and reset with it (a strategy's options are its own).
GROUPS: dict[str, tuple[str, ...]] = {
    "balancer.strategy": ("balancer.strategy", "balancer.options"),
    "balancer.options": ("balancer.strategy", "balancer.options"),
    "multi_backend.enabled": ("multi_backend.enabled",),
}
KEYS = tuple(GROUPS)


class SettingsStore(Protocol):
    """What both state stores (SQLite, Redis) provide for runtime settings. An entry is
    ``{"value": ..., "changed_at": seconds, "who": "admin@203.0.113.5"}``."""

    async def load_settings(self) -> tuple[int, dict[str, dict[str, Any]]]: ...
    async def save_settings(self, values: Mapping[str, Any], who: str) -> int: ...
    async def drop_settings(self, keys: Sequence[str]) -> int: ...
    async def settings_version(self) -> int: ...


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
    """The file's values, the store's runtime changes over them, and the version last read."""

    def __init__(self, file: Mapping[str, Any]) -> None:
        self.file = dict(file)
        self.changes: dict[str, dict[str, Any]] = {}
        self.version = -1
        self._store: SettingsStore | None = None

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

