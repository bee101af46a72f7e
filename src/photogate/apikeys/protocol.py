"""What the API-key service asks of its records, the same in every backend.

A key is stored only as its SHA-256 hash and its id (the key's first 12 characters): the
records never hold a usable key. Quota counters belong to one UTC day (``day``, days since
the epoch); a counter of an earlier day counts as zero. Every quota change is one atomic step
in the backend (a ``BEGIN IMMEDIATE`` transaction in SQLite, one Lua script in Redis), so
gateways sharing one Redis never let a key past its quota together.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol

#: :meth:`KeyRecords.consume` answers.
OK, UNKNOWN, PHOTOS_EXHAUSTED, MEGAPIXELS_EXHAUSTED = "ok", "unknown", "photos", "megapixels"


@dataclass(frozen=True)
class KeyRecord:
    id: str
    key_hash: str
    name: str
    priority_class: str
    photos_per_day: int | None
    megapixels_per_day: float | None
    created_at: float
    revoked_at: float | None = None
    #: The UTC day the counters below belong to.
    day: int = 0
    used_photos: int = 0
    used_megapixels: float = 0.0

    @property
    def has_quota(self) -> bool:
        return self.photos_per_day is not None or self.megapixels_per_day is not None

    def usage(self, day: int) -> tuple[int, float]:
        """(photos, megapixels) used on ``day``."""
        return (self.used_photos, self.used_megapixels) if self.day == day else (0, 0.0)


class KeyRecords(Protocol):
    """API keys in the gateway's store. Each method returns an awaitable."""

    def create_schema(self) -> Awaitable[None]: ...

    def insert(self, record: KeyRecord) -> Awaitable[bool]:
        """Store a new key; ``False`` if its id is taken (the caller draws another key)."""
    def get(self, key_id: str) -> Awaitable[KeyRecord | None]: ...
    def all(self) -> Awaitable[list[KeyRecord]]:
        """Every key, revoked ones too, oldest first."""
    def revoke(self, key_id: str, now: float) -> Awaitable[bool]:
        """Mark the key revoked; ``False`` if there is no such key or it already was."""
    def consume(self, key_id: str, day: int, megapixels: float) -> Awaitable[tuple[str, int, float]]:
        """Count one photo of ``megapixels`` against the key's quota of ``day``, atomically,
        unless that would pass a limit: (:data:`OK` or why not, photos used, megapixels used)."""
    def give_back(self, key_id: str, day: int, megapixels: float) -> Awaitable[None]:
        """Undo one :meth:`consume` of ``day`` (nothing once the day has moved on)."""
