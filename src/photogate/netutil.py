"""Client addresses behind trusted proxies, and constant-time credential checks."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Sequence
from typing import Any

from aiohttp import web


def client_ip(request: web.Request, trusted_proxies: Sequence[str]) -> str:
    """The peer address, or the right-most untrusted X-Forwarded-For hop when the peer
    is a configured proxy (nginx, Caddy). Untrusted peers cannot spoof it."""
    peer = request.remote or ""
    if not trusted_proxies or not _in(peer, trusted_proxies):
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not _in(hop, trusted_proxies):
            return hop
    return hops[0] if hops else peer


def _in(address: str, networks: Sequence[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n, strict=False) for n in networks)


def same_secret(given: str | None, expected: str) -> bool:
    """Constant-time comparison; an empty or missing value never matches."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


#: Set on a request whose credential (webhook secret, admin token, dashboard session) was
#: refused; the rate limiter counts it against the client's failed-credential bucket.
CREDENTIAL_REFUSED: Any = (web.RequestKey("photogate.credential_refused", bool) if hasattr(web, "RequestKey")
                           else "photogate.credential_refused")  # aiohttp < 3.12 has no RequestKey


def credential_refused(request: web.Request) -> None:
    """Mark ``request`` as a failed credential check (one bucket for every credential)."""
    request[CREDENTIAL_REFUSED] = True


def bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None
