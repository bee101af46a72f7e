"""The webhook API the GPU servers use: register, unregister, list (shared secret)."""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from .allowlist import canonical, node_address_refused
from .audit import audit
from .bodies import read_json
from .errors import BadRequest, Forbidden, NodeIdentityConflict, NotFound, Unauthorized
from .fields import parse_int
from .jsonbody import json_response
from .keys import GATEWAY
from .netutil import client_ip, credential_refused, same_secret

log = structlog.get_logger("photogate.webhook")
routes = web.RouteTableDef()

#: What a register or unregister body must be (an empty one is refused).
EXPECTED_BODY = 'a JSON object such as {"ip": ..., "port": ..., "secret": ...}'


def _check_secret(request: web.Request, given: object, action: str) -> str:
    """Check the webhook secret; return the caller's address for the audit log."""
    gw = request.app[GATEWAY]
    ip = client_ip(request, gw.config.server.trusted_proxies)
    if not isinstance(given, str) or not given:
        credential_refused(request)
        audit(f"{action}_refused", who="anonymous", ip=ip, reason="missing secret")
        gw.metrics.webhook_auth_failed(action, "missing secret")
        raise Unauthorized("missing secret")
    if not same_secret(given, gw.config.webhook.secret):
        credential_refused(request)
        audit(f"{action}_refused", who="anonymous", ip=ip, reason="wrong secret")
        gw.metrics.webhook_auth_failed(action, "wrong secret")
        raise Forbidden("wrong secret")
    return ip


def _ip(value: object) -> str:
    if not isinstance(value, str):
        raise BadRequest("ip: expected an IPv4 or IPv6 address string")
    try:
        return str(canonical(value.strip()))  # ::ffff:a.b.c.d is a.b.c.d: one address, one spelling
    except ValueError:
        raise BadRequest(f"ip: not an IP address: {value[:64]!r}") from None


def _int(body: dict[str, Any], key: str, low: int, high: int, default: int | None = None) -> int:
    return parse_int(body.get(key, default), key, low, high)


@routes.post("/webhook/register")
async def register(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    body = await read_json(request, allow_empty=False, expected=EXPECTED_BODY)
    caller = _check_secret(request, body.get("secret") or request.headers.get("X-Webhook-Secret"), "register")
    ip = _ip(body.get("ip"))
    port = _int(body, "port", 1, 65535)
    refused = node_address_refused(ip, gw.config.webhook.allowed_node_networks, dev=gw.config.dev)
    if refused:
        audit("register_refused", who="anonymous", ip=caller,
              reason="address not allowed", address=f"{ip}:{port}")
        raise Forbidden(refused)
    # Absent: keep what the node registered with before (1 for a new node).
    slots = _int(body, "slots", 1, 256) if "slots" in body else None
    weight = _int(body, "weight", 1, 1000) if "weight" in body else None
    node_key = body.get("node_key")
    if node_key is not None and (not isinstance(node_key, str) or not 8 <= len(node_key) <= 128):
        raise BadRequest("node_key: expected a string of 8 to 128 characters")
    info = {k: body[k] for k in ("model", "scale", "provider", "version", "queue_size")
            if isinstance(body.get(k), (str, int, float))}
    try:
        state, created, previous = await gw.registry.register(
            ip, port, node_key=node_key, slots=slots, weight=weight, info=info
        )
    except NodeIdentityConflict as exc:  # 409: a takeover attempt, or a node that lost its key
        audit("register_refused", who="anonymous", ip=caller,
              reason=exc.reason, address=f"{ip}:{port}", server_id=exc.holder, with_key=bool(node_key))
        raise
    sid = state.server_id
    audit(
        "node_registered" if created else ("node_address_changed" if previous else "node_reregistered"),
        who=sid, ip=caller,
        address=state.record.address, previous_address=previous,
    )
    return json_response({
        "success": True,
        "message": f"服务器 {sid} 注册成功",
        "server_id": sid,
        "ip": state.record.ip,
        "port": state.record.port,
        "node_token": state.record.node_token,
    })


@routes.post("/webhook/unregister")
async def unregister(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    body = await read_json(request, allow_empty=False, expected=EXPECTED_BODY)
    caller = _check_secret(request, body.get("secret") or request.headers.get("X-Webhook-Secret"), "unregister")
    server_id = body.get("server_id")
    if isinstance(server_id, str) and server_id:
        state = gw.registry.get(server_id)
        # The earlier test client sends a server_id of its own choosing along with ip/port.
        if state is None and "ip" in body:
            state = gw.registry.find(_ip(body.get("ip")), _int(body, "port", 1, 65535))
    else:
        state = gw.registry.find(_ip(body.get("ip")), _int(body, "port", 1, 65535))
    if state is None:
        raise NotFound("no such server registered")
    if state.record.node_key and not same_secret(str(body.get("node_key") or ""), state.record.node_key):
        # DESIGN §9: the secret alone may not take a keyed node out of the fleet (and then
        # let someone else claim its address); only the node itself or an operator may.
        audit("unregister_refused", who="anonymous", ip=caller,
              reason="node_key missing or wrong", server_id=state.server_id)
        raise Forbidden(f"{state.server_id} registered with a node_key: unregister it with that node_key, "
                        f"or an operator removes it (photogate-admin remove {state.server_id})")
    await gw.registry.unregister(state.server_id)  # offline, not forgotten: it keeps its id
    audit("node_unregistered", who=state.server_id, ip=caller,
          address=state.record.address)
    return json_response({
        "success": True,
        "message": f"服务器 {state.server_id} 注销成功",
        "server_id": state.server_id,
        "ip": state.record.ip,
        "port": state.record.port,
    })


@routes.get("/webhook/servers")
async def servers(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    _check_secret(request, request.headers.get("X-Webhook-Secret") or request.query.get("secret"), "list")
    nodes = gw.registry.all()
    summary = gw.registry.summary()
    return json_response({
        "success": True,
        "data": {
            "total_servers": summary["total"],
            "healthy_servers": summary["healthy"],
            "unhealthy_servers": summary["unhealthy"],
            "offline_servers": summary["offline"],
            "health_check_running": gw.monitor.running,
            "multi_backend": gw.multi_backend,
            "strategy": gw.strategy_name,
            "servers": [s.public() for s in nodes],
        },
    })
