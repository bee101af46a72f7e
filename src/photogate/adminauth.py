"""Who may act as the operator: the admin token as a bearer, or a dashboard session.

The admin API (and WeChat's admin routes) take only ``Authorization: Bearer <admin.token>``
(:func:`require_admin`). The dashboard also takes its login cookie, which holds a signed
expiry, never the token (:func:`make_session`, :func:`require_dashboard`). Every refused
credential counts against the client's failed-credential bucket (:mod:`photogate.ratelimit`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from aiohttp import web

from .audit import audit
from .errors import Forbidden, Unauthorized
from .keys import GATEWAY
from .netutil import bearer, client_ip, credential_refused, same_secret

#: The dashboard's session cookie.
COOKIE = "photogate_dashboard"


def require_admin(request: web.Request) -> str:
    """Check the admin token (bearer only); return the caller's address for the audit log."""
    gw = request.app[GATEWAY]
    ip = client_ip(request, gw.config.server.trusted_proxies)
    if not gw.config.admin.token:
        raise Forbidden("the admin API is disabled: set admin.token or PHOTOGATE_ADMIN_TOKEN")
    token = bearer(request)
    if token is None:
        credential_refused(request)
        audit("admin_refused", who="anonymous", ip=ip, reason="missing token", path=request.path)
        raise Unauthorized("admin token required (Authorization: Bearer ...)", headers={"WWW-Authenticate": "Bearer"})
    if not same_secret(token, gw.config.admin.token):
        credential_refused(request)
        audit("admin_refused", who="anonymous", ip=ip, reason="wrong token", path=request.path)
        raise Forbidden("wrong admin token")
    return ip


# -- dashboard sessions: "<expiry>.<nonce>.<hmac>", keyed by the admin token --------------------
# Stateless, so it works across several gateways that share the token, and every session
# ends when the token is changed.


def _session_key(token: str) -> bytes:
    return hashlib.sha256(b"photogate dashboard session\0" + token.encode()).digest()


def make_session(token: str, hours: float, now: float | None = None) -> str:
    expiry = int((now or time.time()) + hours * 3600)
    body = f"{expiry}.{secrets.token_hex(8)}"
    mac = hmac.new(_session_key(token), body.encode(), hashlib.sha256).hexdigest()
    return f"{body}.{mac}"


def session_valid(value: str | None, token: str, now: float | None = None) -> bool:
    if not value or not token or value.count(".") != 2:
        return False
    expiry, nonce, mac = value.split(".")
    good = hmac.new(_session_key(token), f"{expiry}.{nonce}".encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac.encode(), good.encode()):
        return False
    return expiry.isdigit() and int(expiry) > (now or time.time())


class RevokedSessions:
    """Sessions logged out before their expiry, refused until it passes.

    Held in memory by each gateway (bounded: an entry goes once its session would have
    expired anyway). A gateway restart forgets it, and so does another gateway sharing the
    token: there a logged-out cookie stays good until its expiry (``ui.session_hours``).
    """

    def __init__(self) -> None:
        self._until: dict[str, int] = {}

    @staticmethod
    def _nonce(value: str) -> str:
        return value.split(".")[1]

    def revoke(self, value: str, now: float | None = None) -> None:
        """Revoke ``value``, a session that :func:`session_valid` accepted."""
        now = now or time.time()
        self._until = {nonce: expiry for nonce, expiry in self._until.items() if expiry > now}
        self._until[self._nonce(value)] = int(value.split(".")[0])

    def __contains__(self, value: str) -> bool:
        return self._nonce(value) in self._until


REVOKED = web.AppKey("photogate.ui.revoked", RevokedSessions)


def live_session(request: web.Request, cookie: str) -> bool:
    """Whether ``cookie`` is a session signed with today's admin token, unexpired and not logged out."""
    return session_valid(cookie, request.app[GATEWAY].config.admin.token) and cookie not in request.app[REVOKED]


def dashboard_credential(request: web.Request) -> bool | None:
    """``True``: a good admin bearer or live session; ``False``: a wrong one; ``None``: none sent."""
    given = bearer(request)
    if given is not None:
        return same_secret(given, request.app[GATEWAY].config.admin.token)
    cookie = request.cookies.get(COOKIE)
    if cookie is None:
        return None
    return live_session(request, cookie)


def dashboard_authorized(request: web.Request) -> bool:
    return bool(request.app[GATEWAY].config.admin.token) and dashboard_credential(request) is True


def require_dashboard(request: web.Request) -> str:
    """The dashboard's JSON endpoints: admin token or session; returns the caller's address."""
    gw = request.app[GATEWAY]
    ip = client_ip(request, gw.config.server.trusted_proxies)
    if not gw.config.admin.token:
        raise Forbidden("the dashboard is disabled: set admin.token or PHOTOGATE_ADMIN_TOKEN")
    if not dashboard_authorized(request):
        credential_refused(request)
        raise Unauthorized("log in at /dashboard, or send Authorization: Bearer <admin token>",
                           headers={"WWW-Authenticate": "Bearer"})
    return ip
