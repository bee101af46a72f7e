"""The web pages: the public try-it page (``/``) and the admin fleet dashboard (``/dashboard``).

Static HTML/JS/CSS ship in ``photogate/web`` (no build step, nothing from a CDN). The
dashboard needs the admin token: ``Authorization: Bearer`` (scripts, curl) or the login
form, which sets an HttpOnly, SameSite=Strict cookie holding a signed expiry, never the
token itself (and the token never travels in a URL). Logging out revokes the cookie on
the gateway, not only in the browser. The sessions and the credential checks live in
:mod:`photogate.adminauth`: every refused token, bearer or cookie counts against the
client's failed-credential bucket (:mod:`photogate.ratelimit`). The page follows the fleet by
Server-Sent Events (``/dashboard/events``); its actions (drain, strategy, multi-backend)
are POSTs that also need a custom header, which no cross-site form can send.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import __version__, fleetops
from .adminauth import (
    COOKIE,
    REVOKED,
    RevokedSessions,
    dashboard_authorized,
    dashboard_credential,
    live_session,
    make_session,
    require_dashboard,
)
from .audit import audit
from .balancing import StrategyError, known_names
from .bodies import read_form, read_json
from .errors import BadRequest, Forbidden, NotFound
from .jsonbody import dumps, json_response
from .keys import GATEWAY
from .models import TaskStatus
from .netutil import client_ip, credential_refused, same_secret
from .taskview import timings, whose

if TYPE_CHECKING:
    from .gateway import Gateway

WEB_DIR = Path(__file__).with_name("web")
#: The dashboard's form and JSON bodies (a token, a strategy name): small.
FORM_LIMIT = 16 * 1024
#: Dashboard POSTs must carry this header: a cross-site form cannot, and a cross-site
#: fetch would need a CORS preflight that the gateway never grants for /dashboard.
ACTION_HEADER = "X-Photogate-Dashboard"
RECENT_TASKS = 20
CLOSING = web.AppKey("photogate.ui.closing", asyncio.Event)

#: The pages load only their own scripts and styles; results and previews are blob:/same-origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

routes = web.RouteTableDef()


# -- who may act --------------------------------------------------------------------------------


def _require_action(request: web.Request) -> str:
    """A dashboard action: a session (or the admin bearer), the action header, our own origin."""
    ip = require_dashboard(request)
    if request.headers.get(ACTION_HEADER) != "1":
        raise Forbidden(f"dashboard actions need the {ACTION_HEADER}: 1 header")
    origin = request.headers.get("Origin")
    if origin and origin != f"{request.scheme}://{request.host}":
        raise Forbidden("cross-origin dashboard action refused")
    return ip


# -- pages ------------------------------------------------------------------------------------


def _page(name: str, *, status: int = 200, replace: dict[str, str] | None = None) -> web.Response:
    text = (WEB_DIR / name).read_text(encoding="utf-8")
    for key, value in (replace or {}).items():
        text = text.replace(key, value)
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8",
                        headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})


@routes.get("/")
async def try_it(request: web.Request) -> web.Response:
    if not request.app[GATEWAY].config.ui.try_it:
        raise NotFound("the try-it page is disabled on this gateway (ui.try_it: false)")
    return _page("try-it.html", replace={"{{version}}": __version__})


def _login_page(message: str = "", status: int = 401) -> web.Response:
    note = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    return _page("login.html", status=status, replace={"<!--message-->": note})


@routes.get("/dashboard")
async def dashboard(request: web.Request) -> web.Response:
    if not request.app[GATEWAY].config.admin.token:
        return _login_page("The dashboard is disabled: set admin.token (or PHOTOGATE_ADMIN_TOKEN).", 403)
    known = dashboard_credential(request)
    if known is False:  # a wrong bearer, or a forged, expired or logged-out cookie
        credential_refused(request)
    if not known:
        return _login_page()
    return _page("dashboard.html", replace={"{{version}}": __version__})


@routes.post("/dashboard/login")
async def login(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    ip = client_ip(request, gw.config.server.trusted_proxies)
    if not gw.config.admin.token:
        return _login_page("The dashboard is disabled: set admin.token (or PHOTOGATE_ADMIN_TOKEN).", 403)
    given = (await read_form(request, FORM_LIMIT)).get("token")
    if not isinstance(given, str) or not same_secret(given.strip(), gw.config.admin.token):
        credential_refused(request)
        audit("dashboard_login_refused", who="anonymous", ip=ip)
        return _login_page("Wrong admin token.", 403)
    audit("dashboard_login", who="admin", ip=ip)
    resp = web.Response(status=303, headers={"Location": "/dashboard"})
    resp.set_cookie(COOKIE, make_session(gw.config.admin.token, gw.config.ui.session_hours),
                    max_age=int(gw.config.ui.session_hours * 3600), path="/dashboard", httponly=True,
                    samesite="Strict", secure=request.secure)
    return resp


@routes.post("/dashboard/logout")
async def logout(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    cookie = request.cookies.get(COOKIE)
    if cookie and live_session(request, cookie):
        request.app[REVOKED].revoke(cookie)
        audit("dashboard_logout", who="admin", ip=client_ip(request, gw.config.server.trusted_proxies))
    resp = web.Response(status=303, headers={"Location": "/dashboard"})
    resp.del_cookie(COOKIE, path="/dashboard")
    return resp


# -- live state ------------------------------------------------------------------------------


async def snapshot(gw: Gateway) -> dict[str, Any]:
    """What the dashboard shows: the fleet, the queue and the most recent tasks."""
    fleet_mps, node_mps = gw.metrics.throughput.rates()
    nodes = []
    for s in gw.registry.all():
        public = s.public()
        reported = s.health.get("throughput")
        nodes.append({
            key: public[key] for key in (
                "server_id", "address", "status", "healthy", "draining", "busy", "slots", "weight",
                "consecutive_failures", "last_check", "last_error", "completed", "failed")
        } | {
            "mps": round(node_mps.get(s.server_id, 0.0), 4),
            "reported_mps": reported if isinstance(reported, (int, float)) and not isinstance(reported, bool) else None,
            "model": s.health.get("model") or s.record.info.get("model"),
            "provider": s.health.get("provider") or s.record.info.get("provider"),
        })
    recent = await gw.store.list_tasks(list(TaskStatus), RECENT_TASKS, newest_first=True)
    estimate = gw.dispatcher.estimator.estimate
    return {
        "time": time.time(),
        "version": __version__,
        "strategy": gw.strategy_name,
        "strategies": known_names(),
        "multi_backend": gw.multi_backend,
        "queue_depth": gw.dispatcher.queued,
        "in_flight": gw.dispatcher.in_flight,
        "throughput_mps": round(fleet_mps, 4),
        "summary": gw.registry.summary(),
        "nodes": nodes,
        "tasks": [{
            "task_id": t.task_id, "status": t.status.value, "server_id": t.server_id, "attempts": t.attempts,
            "width": t.width, "height": t.height, "created_at": t.created_at, "error": t.error,
            **timings(t), **whose(t),
            **estimate(t).fields(),
        } for t in recent],
    }


@routes.get("/dashboard/state")
async def state(request: web.Request) -> web.Response:
    require_dashboard(request)
    return json_response(await snapshot(request.app[GATEWAY]), headers={"Cache-Control": "no-store"})


@routes.get("/dashboard/events")
async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: one ``state`` event now and every ``ui.refresh`` seconds."""
    require_dashboard(request)
    gw = request.app[GATEWAY]
    closing = request.app[CLOSING]
    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    with contextlib.suppress(ConnectionError):
        await resp.write(f"retry: {int(gw.config.ui.refresh * 1000)}\n\n".encode())
        while not closing.is_set() and dashboard_authorized(request):  # a session that expires ends the stream
            data = dumps(await snapshot(gw), separators=(",", ":"))
            await resp.write(f"event: state\ndata: {data}\n\n".encode())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(closing.wait(), gw.config.ui.refresh)
    return resp


# -- actions (each audited) ---------------------------------------------------------------------


@routes.post("/dashboard/api/nodes/{server_id}/{action:drain|undrain}")
async def drain(request: web.Request) -> web.Response:
    ip = _require_action(request)
    node = await fleetops.set_draining(request.app[GATEWAY].registry, request.match_info["server_id"],
                                       request.match_info["action"] == "drain", ip=ip, via="dashboard")
    return json_response({"success": True, "server": node.public()})


@routes.post("/dashboard/api/strategy")
async def strategy(request: web.Request) -> web.Response:
    ip = _require_action(request)
    name = (await read_json(request, FORM_LIMIT)).get("strategy")
    if not isinstance(name, str) or not name:
        raise BadRequest('expected {"strategy": "least_busy"}')
    try:
        await request.app[GATEWAY].set_strategy(name, {}, who="admin", ip=ip)
    except StrategyError as exc:
        raise BadRequest(str(exc)) from None
    return json_response({"success": True, "strategy": name})


@routes.post("/dashboard/api/multi-backend")
async def multi_backend(request: web.Request) -> web.Response:
    ip = _require_action(request)
    enabled = (await read_json(request, FORM_LIMIT)).get("enabled")
    if not isinstance(enabled, bool):
        raise BadRequest('expected {"enabled": true} or {"enabled": false}')
    await request.app[GATEWAY].set_multi_backend(enabled, who="admin", ip=ip)
    return json_response({"success": True, "multi_backend": enabled})


#: The pages' scripts and style sheet, by name: nothing else is ever served from the folder.
STATIC_FILES = {path.name: path for path in (WEB_DIR / "static").iterdir() if path.is_file()}


@routes.get("/static/{name}")
async def static(request: web.Request) -> web.FileResponse:
    # Not add_static: its FileResponse answers a missing file with an empty 404, not a JSON error.
    path = STATIC_FILES.get(request.match_info["name"])
    if path is None:
        raise NotFound("no such file")
    return web.FileResponse(path)


def setup_ui(app: web.Application) -> None:
    """The pages, their static files, and the signal that ends open event streams at shutdown."""
    closing = asyncio.Event()
    app[CLOSING] = closing
    app[REVOKED] = RevokedSessions()

    async def close_streams(_app: web.Application) -> None:
        closing.set()

    app.on_shutdown.append(close_streams)
    app.add_routes(routes)

