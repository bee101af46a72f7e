"""``/api/wechat/...``: login, the user's view, WeChat Pay orders, notifications, admin refunds."""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from ..access import ACCESS
from ..admin_api import _admin
from ..bodies import read_body, read_json
from ..errors import BadRequest, Forbidden, PayloadTooLarge
from ..jsonbody import json_response
from ..service import audit
from .access import WechatAccess
from .service import WECHAT, NotifyRejected

log = structlog.get_logger("photogate.wechat.routes")
routes = web.RouteTableDef()

#: WeChat retries a notification until it gets 2xx; a body is never needed for success.
NOTIFY_LIMIT = 64 * 1024


async def _body(request: web.Request) -> dict[str, Any]:
    return await read_json(request, 16 * 1024, empty={})


async def _openid(request: web.Request) -> str:
    access = request.app[ACCESS]
    assert isinstance(access, WechatAccess)
    return await access.require(request)


@routes.post("/api/wechat/login")
@routes.post("/api/wechat/auth/openid")
async def login(request: web.Request) -> web.Response:
    code = (await _body(request)).get("code")
    if not isinstance(code, str) or not 1 <= len(code) <= 128:
        raise BadRequest('expected {"code": "<the code from wx.login()>"}')
    service = request.app[WECHAT]
    token, identity = await service.login(code)
    # Never session_key: it stays with WeChat and us (we do not even keep it).
    return json_response({"success": True, "token": token, "token_type": "Bearer",
                              "expires_in": int(service.cfg.session_ttl), "openid": identity.openid})


@routes.get("/api/wechat/user")
async def user(request: web.Request) -> web.Response:
    openid = await _openid(request)
    return json_response(await request.app[WECHAT].user_view(openid))


@routes.get("/api/wechat/pay/products")
async def products(request: web.Request) -> web.Response:
    return json_response({"success": True, "products": request.app[WECHAT].products()})


@routes.post("/api/wechat/pay/create")
async def create(request: web.Request) -> web.Response:
    openid = await _openid(request)
    product = (await _body(request)).get("product")
    if not isinstance(product, str) or not product:
        raise BadRequest('expected {"product": "<product id>"}; the price comes from the server')
    return json_response(await request.app[WECHAT].create_order(openid, product))


@routes.post("/api/wechat/pay/notify")
async def notify(request: web.Request) -> web.Response:
    try:
        try:
            # WeChat may send the body in several TCP segments: read all of it.
            body = await read_body(request, NOTIFY_LIMIT)
        except PayloadTooLarge:
            raise NotifyRejected("body too large") from None
        await request.app[WECHAT].handle_notify(request.headers, body)
    except NotifyRejected as exc:
        return json_response({"code": "FAIL", "message": str(exc)}, status=400)
    return web.Response(status=204)


@routes.get("/api/wechat/pay/query/{out_trade_no}")
async def query(request: web.Request) -> web.Response:
    openid = await _openid(request)
    return json_response(await request.app[WECHAT].query(openid, request.match_info["out_trade_no"][:64]))


@routes.get("/api/wechat/pay/orders/{openid}")
async def legacy_orders(request: web.Request) -> web.Response:
    """The earlier gateway's path, kept for old clients: only the session's own openid."""
    openid = await _openid(request)
    if request.match_info["openid"] != openid:
        raise Forbidden("you can only list your own orders")
    return json_response({"success": True, "openid": openid,
                              "orders": await request.app[WECHAT].user_orders(openid)})


@routes.post("/api/wechat/admin/refunds")
async def refund(request: web.Request) -> web.Response:
    ip = _admin(request)
    body = await _body(request)
    out_trade_no, reason, force = body.get("out_trade_no"), body.get("reason", ""), body.get("force", False)
    if not isinstance(out_trade_no, str) or not out_trade_no or not isinstance(reason, str) \
            or not isinstance(force, bool):
        raise BadRequest('expected {"out_trade_no": "...", "reason": "...", "force": false}')
    audit("wechat_refund_requested", who="admin", ip=ip, out_trade_no=out_trade_no, force=force)
    return json_response(await request.app[WECHAT].refund_order(out_trade_no, reason, force))


@routes.post("/api/wechat/admin/reconcile")
async def reconcile(request: web.Request) -> web.Response:
    ip = _admin(request)
    counts = await request.app[WECHAT].reconcile()
    audit("wechat_reconciled", who="admin", ip=ip, **counts)
    return json_response({"success": True, **counts})
