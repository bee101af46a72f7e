"""Token buckets per client IP: the public API, uploads, and failed credentials.

One middleware, outside the error middleware so that it sees the final status:

- every request under ``/api/`` and ``/webhook/`` takes a token from the client's
  ``requests_per_second`` bucket; ``POST /api/v1/enhance`` also from its upload bucket;
- a refused credential (:func:`~photogate.netutil.credential_refused`: the webhook
  secret, the admin token, a dashboard login, bearer or session cookie, the metrics
  token) takes a token from the client's ``auth_failures_per_minute`` bucket; once that
  is empty, every request from that client to a path that checks a credential (webhook,
  admin API, WeChat admin, dashboard, metrics) gets 429 until it refills (a brute-force
  loop), the right credential included, audited once per episode. The handler marks the
  refusal, not the status: a login page's 401 or a refused node address is no guess.

An empty bucket answers 429 ``{"error": ...}`` with ``Retry-After``. Clients in
``rate_limit.exempt`` (loopback by default) are never limited.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from .audit import audit
from .config import RateLimitConfig
from .errors import Handler, StoreUnavailable, error_body
from .jsonbody import json_response
from .keys import GATEWAY
from .netutil import CREDENTIAL_REFUSED, client_ip

#: Buckets kept per limiter before idle (full) ones are dropped: bounds memory under a scan.
MAX_CLIENTS = 50_000
ADMIN_PREFIXES = ("/api/v1/admin/", "/api/v1/config/")
#: Paths that check a credential: a client out of failed-credential tokens gets 429 there.
GUARDED_PREFIXES = ("/webhook/", *ADMIN_PREFIXES, "/api/wechat/admin/", "/dashboard", "/metrics")


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    burst: float
    tokens: float
    stamp: float

    def refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait(self) -> float:
        """Seconds until one token is there (0 when one is there now)."""
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate


class Buckets(Protocol):
    """Token buckets by key, all with the same rate and burst, in this process or shared."""

    async def atake(self, key: str) -> float:
        """Take a token: 0.0 when allowed, else the seconds to wait (nothing taken)."""

    async def apeek(self, key: str) -> float:
        """Seconds until a token is there, taking nothing."""


class BucketStore(Protocol):
    """A state store that keeps token buckets for every gateway that shares it (Redis)."""

    async def bucket(self, name: str, key: str, rate: float, burst: float, take: bool) -> float:
        """Refill bucket ``name``/``key``, then take a token (``take``) or only look: 0.0 when
        one is (was) there, else the seconds until one is."""

    async def draw(self, key: str, buckets: Sequence[tuple[str, float, float, bool]]) -> tuple[int, float]:
        """Draw from several buckets (name, rate, burst, take) in turn, in one call, stopping
        at the first without a token: its index and the seconds to wait, or ``(-1, 0.0)``."""


class Limiter:
    """Buckets by key, all with the same rate and burst, in this process."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, float(burst), clock
        self._buckets: dict[str, TokenBucket] = {}

    def _bucket(self, key: str) -> TokenBucket:
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_CLIENTS:
                self._prune(now)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self.burst, now)
        bucket.refill(now)
        return bucket

    def _prune(self, now: float) -> None:
        for key, bucket in list(self._buckets.items()):
            bucket.refill(now)
            if bucket.tokens >= bucket.burst:
                del self._buckets[key]

    def take(self, key: str) -> float:
        """Take a token: 0.0 when allowed, else the seconds to wait (nothing taken)."""
        bucket = self._bucket(key)
        wait = bucket.wait()
        if wait == 0.0:
            bucket.tokens -= 1
        return wait

    def peek(self, key: str) -> float:
        """Seconds until a token is there, taking nothing."""
        return self._bucket(key).wait() if key in self._buckets else 0.0

    def __len__(self) -> int:
        return len(self._buckets)

    async def atake(self, key: str) -> float:
        return self.take(key)

    async def apeek(self, key: str) -> float:
        return self.peek(key)


class SharedLimiter:
    """The same buckets in Redis (``storage.backend: redis``): a client's budget holds across
    every gateway. If Redis cannot be reached, requests pass (the handler answers 503 anyway)."""

    def __init__(self, name: str, rate: float, burst: int, store: BucketStore) -> None:
        self.name, self.rate, self.burst, self.store = name, rate, float(burst), store

    async def _ask(self, key: str, take: bool) -> float:
        try:
            return await self.store.bucket(self.name, key, self.rate, self.burst, take)
        except StoreUnavailable:
            return 0.0

    async def atake(self, key: str) -> float:
        return await self._ask(key, True)

    async def apeek(self, key: str) -> float:
        return await self._ask(key, False)


class RateLimits:
    def __init__(self, config: RateLimitConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.requests: Buckets = Limiter(config.requests_per_second, config.burst, clock)
        self.uploads: Buckets = Limiter(config.uploads_per_minute / 60.0, config.upload_burst, clock)
        self.auth_failures: Buckets = Limiter(config.auth_failures_per_minute / 60.0, config.auth_failure_burst,
                                              clock)
        self._store: BucketStore | None = None
        self._exempt = [ipaddress.ip_network(n, strict=False) for n in config.exempt]
        self._exempt_memo: dict[str, bool] = {}
        self._blocked: set[str] = set()

    def block(self, ip: str) -> bool:
        """Note that ``ip`` is out of failed-credential tokens: ``True`` when that is news (audit it once)."""
        news = ip not in self._blocked
        self._blocked.add(ip)
        return news

    def unblock(self, ip: str) -> None:
        self._blocked.discard(ip)

    def share(self, store: BucketStore) -> None:
        """Keep the buckets in Redis from now on, shared by every gateway."""
        cfg = self.config
        self._store = store
        self.requests = SharedLimiter("requests", cfg.requests_per_second, cfg.burst, store)
        self.uploads = SharedLimiter("uploads", cfg.uploads_per_minute / 60.0, cfg.upload_burst, store)
        self.auth_failures = SharedLimiter("auth", cfg.auth_failures_per_minute / 60.0, cfg.auth_failure_burst, store)

    async def draw(self, key: str, draws: Sequence[tuple[Buckets, bool]]) -> tuple[int, float]:
        """Draw from each of ``key``'s buckets in turn (take a token, or only look), stopping at
        the first without one: its index and the seconds to wait, or ``(-1, 0.0)`` when every
        one had a token. Shared buckets are drawn in one round trip; if Redis cannot be
        reached, the request passes (the handler answers 503 anyway)."""
        shared = [(b.name, b.rate, b.burst, take) for b, take in draws if isinstance(b, SharedLimiter)]
        if self._store is not None and shared and len(shared) == len(draws):
            try:
                return await self._store.draw(key, shared)
            except StoreUnavailable:
                return -1, 0.0
        for index, (buckets, take) in enumerate(draws):
            wait = await (buckets.atake(key) if take else buckets.apeek(key))
            if wait > 0:
                return index, wait
        return -1, 0.0

    def exempt(self, ip: str) -> bool:
        # Every request asks: remember the answer per address (bounded; cleared when full).
        known = self._exempt_memo.get(ip)
        if known is not None:
            return known
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            answer = False
        else:
            answer = any(address in net for net in self._exempt)
        if len(self._exempt_memo) >= 4096:
            self._exempt_memo.clear()
        self._exempt_memo[ip] = answer
        return answer


RATE_LIMITS = web.AppKey("rate_limits", RateLimits)


def _too_many(wait: float, message: str) -> web.Response:
    return json_response(error_body(message), status=429, headers={"Retry-After": str(max(1, math.ceil(wait)))})


def _guarded(request: web.Request) -> bool:
    return request.path.startswith(GUARDED_PREFIXES)


@web.middleware
async def rate_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    limits = request.app.get(RATE_LIMITS)
    path = request.path
    guarded = _guarded(request)
    if limits is None or not limits.config.enabled or not (guarded or path.startswith("/api/")):
        return await handler(request)
    ip = client_ip(request, request.app[GATEWAY].config.server.trusted_proxies)
    if limits.exempt(ip):
        return await handler(request)
    # One draw for every bucket of the request (one round trip with shared buckets), in order:
    # a client out of failed-credential tokens takes nothing else.
    draws: list[tuple[Buckets, bool, str]] = []
    if guarded:
        draws.append((limits.auth_failures, False, "too many failed credentials from your address; wait and try again"))
    if path.startswith(("/api/", "/webhook/")):
        draws.append((limits.requests, True, "too many requests from your address; slow down"))
    if request.method == "POST" and path == "/api/v1/enhance":
        draws.append((limits.uploads, True, "too many uploads from your address; wait and try again"))
    index, wait = await limits.draw(ip, [(buckets, take) for buckets, take, _message in draws])
    if guarded and index == 0:
        if limits.block(ip):
            audit("auth_rate_limited", who="anonymous", ip=ip, path=path, retry_after=math.ceil(wait))
    elif guarded:
        limits.unblock(ip)
    if index >= 0:
        return _too_many(wait, draws[index][2])
    response = await handler(request)
    if request.get(CREDENTIAL_REFUSED):
        await limits.auth_failures.atake(ip)
    return response
