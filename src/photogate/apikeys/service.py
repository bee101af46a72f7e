"""The API keys: issue, list, revoke, check a presented key, count its daily quota.

A key is ``pk_`` + 43 URL-safe characters (``secrets.token_urlsafe(32)``), shown once when it
is created. The records hold only its SHA-256 hash and its id (its first 12 characters): a
presented key is found by its id, then its hash is compared in constant time. Nothing is
cached, so a revoke holds at once on every gateway sharing the records.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from ..errors import TooManyRequests, Unauthorized
from .protocol import MEGAPIXELS_EXHAUSTED, OK, PHOTOS_EXHAUSTED, KeyRecord, KeyRecords

PREFIX = "pk_"
ID_LENGTH = 12
KEY_LENGTH = len(PREFIX) + 43
DAY = 86400


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def iso(ts: float) -> str:
    """An ISO-8601 UTC time, to the second."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class QuotaExhausted(TooManyRequests):
    """The key used up its quota of the day: 429 with ``resets_at`` and ``Retry-After``."""

    def __init__(self, message: str, *, resets_at: float, now: float) -> None:
        super().__init__(message, headers={"Retry-After": str(max(1, math.ceil(resets_at - now)))})
        self.fields = {"error": "quota_exhausted", "resets_at": iso(resets_at)}


@dataclass(frozen=True)
class Charge:
    """One photo counted against a key (what :meth:`ApiKeys.give_back` undoes)."""

    key_id: str
    day: int
    megapixels: float


class ApiKeys:
    """Issues and checks API keys over :class:`~.protocol.KeyRecords`. ``now`` is the clock
    (injected in tests to cross the end of a UTC day)."""

    def __init__(self, records: KeyRecords, now: Callable[[], float] = time.time) -> None:
        self.records = records
        self.now = now

    def resets_at(self, day: int | None = None) -> float:
        """When the quota of ``day`` (default: today, UTC) resets: the next midnight, UTC."""
        return ((self.today() if day is None else day) + 1) * DAY

    def today(self) -> int:
        return int(self.now() // DAY)

    async def create(self, name: str, priority_class: str, photos_per_day: int | None,
                     megapixels_per_day: float | None) -> tuple[str, KeyRecord]:
        """A new key and its record; the key itself is stored nowhere."""
        while True:
            key = PREFIX + secrets.token_urlsafe(32)
            record = KeyRecord(id=key[:ID_LENGTH], key_hash=key_hash(key), name=name, priority_class=priority_class,
                               photos_per_day=photos_per_day, megapixels_per_day=megapixels_per_day,
                               created_at=self.now())
            if await self.records.insert(record):
                return key, record

    async def list(self) -> list[KeyRecord]:
        return await self.records.all()

    async def revoke(self, key_id: str) -> bool:
        return await self.records.revoke(key_id, self.now())

    async def authenticate(self, presented: str) -> KeyRecord:
        """The live key ``presented`` is; 401 for an unknown, wrong or revoked one."""
        record = None
        if len(presented) == KEY_LENGTH and presented.startswith(PREFIX):
            record = await self.records.get(presented[:ID_LENGTH])
        # Compared even when there is no record, so that the time taken tells nothing.
        expected = record.key_hash if record is not None else "0" * 64
        if not hmac.compare_digest(expected, key_hash(presented)) or record is None:
            raise _unauthorized("this API key is not valid; ask the operator for a key")
        if record.revoked_at is not None:
            raise _unauthorized("this API key was revoked; ask the operator for a new one")
        return record

    def check(self, record: KeyRecord) -> None:
        """Before an upload is read: :class:`QuotaExhausted` if the key's quota of today is
        already used up (the upload would be refused after all)."""
        photos, used = record.usage(self.today())
        if record.photos_per_day is not None and photos >= record.photos_per_day:
            raise self._exhausted(record, PHOTOS_EXHAUSTED, 0.0, used)
        if record.megapixels_per_day is not None and used >= record.megapixels_per_day:
            raise self._exhausted(record, MEGAPIXELS_EXHAUSTED, 0.0, used)

    async def consume(self, record: KeyRecord, megapixels: float) -> Charge:
        """Count one photo against the key's quota of today, or raise :class:`QuotaExhausted`."""
        day = self.today()
        status, _, used = await self.records.consume(record.id, day, megapixels)
        if status == OK:
            return Charge(record.id, day, megapixels)
        if status not in (PHOTOS_EXHAUSTED, MEGAPIXELS_EXHAUSTED):
            raise _unauthorized("this API key was revoked; ask the operator for a new one")
        raise self._exhausted(record, status, megapixels, used)

    def _exhausted(self, record: KeyRecord, status: str, megapixels: float, used: float) -> QuotaExhausted:
        if status == PHOTOS_EXHAUSTED:
            why = f"this API key's quota of {record.photos_per_day} photos a day is used up"
        else:
            why = f"this API key's quota of {record.megapixels_per_day:g} megapixels a day is used up ({used:.2f} MP"
            why += f"; this photo has {megapixels:.2f} MP)" if megapixels else ")"
        resets = self.resets_at()
        return QuotaExhausted(f"{why}; it resets at {iso(resets)} (UTC midnight)", resets_at=resets, now=self.now())

    async def give_back(self, charge: Charge) -> None:
        await self.records.give_back(charge.key_id, charge.day, charge.megapixels)


def _unauthorized(message: str) -> Unauthorized:
    return Unauthorized(message, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
