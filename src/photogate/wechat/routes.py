"""``/api/wechat/...``: login, the user's view, WeChat Pay orders, notifications, admin refunds.

Every answer but the notification's (WeChat Pay's own protocol) carries the original
gateway's ``{success, data}`` envelope (:mod:`.legacy`)."""

from __future__ import annotations

import structlog
from aiohttp import web

from ..access import ACCESS
from ..adminauth import require_admin
from ..audit import audit
from ..bodies import read_body, read_json
from ..errors import BadRequest, PayloadTooLarge
from ..jsonbody import json_response
from .access import WechatAccess
from .legacy import answer, openid_field, order_data, product_for_fee
from .service import WECHAT, NotifyRejected

log = structlog.get_logger("photogate.wechat.routes")
routes = web.RouteTableDef()

#: WeChat retries a notification until it gets 2xx; a body is never needed for success.
NOTIFY_LIMIT = 64 * 1024


def _access(request: web.Request) -> WechatAccess:
    access = request.app[ACCESS]
    assert isinstance(access, WechatAccess)
    return access


async def _openid(request: web.Request) -> str:
    return await _access(request).require(request)


@routes.post("/api/wechat/login")
@routes.post("/api/wechat/auth/openid")
async def login(request: web.Request) -> web.Response:
    code = (await read_json(request)).get("code")
    if not isinstance(code, str) or not 1 <= len(code) <= 128:
        raise BadRequest('expected {"code": "<the code from wx.login()>"}')
    service = request.app[WECHAT]
    token, identity = await service.login(code)
    # Never session_key: it stays with WeChat and us (we do not even keep it).
    session = {"token": token, "token_type": "Bearer", "expires_in": int(service.cfg.session_ttl),
               "openid": identity.openid}
    return answer({"success": True, **session}, session)


@routes.get("/api/wechat/user")
async def user(request: web.Request) -> web.Response:
    openid = await _openid(request)
    view = await request.app[WECHAT].user_view(openid)
    return answer(view, {k: v for k, v in view.items() if k != "success"})


@routes.get("/api/wechat/pay/products")
async def products(request: web.Request) -> web.Response:
    offer = request.app[WECHAT].products()
    return answer({"success": True, "products": offer}, offer)


@routes.post("/api/wechat/pay/create")
async def create(request: web.Request) -> web.Response:
    body = await read_json(request)
    openid = await _access(request).caller(request, openid_field(body.get("openid")))
    service = request.app[WECHAT]
    product = body.get("product")
    if "total_fee" in body:  # the original's call names a price: it must be a product's own
        priced = product_for_fee(service.cfg.products, body["total_fee"])
        if product is not None and product != priced:
            raise BadRequest(f"total_fee is the price of {priced}, not of {str(product)[:32]}")
        product = priced
    if not isinstance(product, str) or not product:
        raise BadRequest('expected {"product": "<product id>"} (or {"total_fee": <a product\'s price_fen>}); '
                         "the price comes from the server")
    attach = body.get("attach")
    if attach is not None and (not isinstance(attach, str) or len(attach) > 128):
        raise BadRequest("attach: a string of at most 128 characters")
    order = await service.create_order(openid, product, attach=attach or None)
    return answer(order, {"out_trade_no": order["out_trade_no"], "pay_params": order["payment"],
                          "product": order["product"], "total_fee": order["amount"], "credits": order["credits"]})


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
    openid = await _access(request).caller(request, openid_field(request.query.get("openid")))
    found = await request.app[WECHAT].query(openid, request.match_info["out_trade_no"][:64])
    return answer(found, order_data(found["order"]))


@routes.get("/api/wechat/pay/orders/{openid}")
async def legacy_orders(request: web.Request) -> web.Response:
    """The earlier gateway's path, kept for old clients: only the caller's own openid."""
    openid = await _access(request).caller(request, openid_field(request.match_info["openid"][:200]))
    orders = await request.app[WECHAT].user_orders(openid)
    return answer({"success": True, "openid": openid, "orders": orders}, [order_data(o) for o in orders])


@routes.get("/api/wechat/pay/stats")
async def stats(request: web.Request) -> web.Response:
    """The caller's own payment statistics. Per user, never fleet-wide: a mini program's user
    must not see the merchant's revenue (the operator has the merchant platform for that)."""
    openid = await _access(request).caller(request, openid_field(request.query.get("openid")))
    mine = await request.app[WECHAT].user_stats(openid)
    return answer({"success": True, **mine}, mine)


@routes.post("/api/wechat/admin/refunds")
async def refund(request: web.Request) -> web.Response:
    ip = require_admin(request)
    body = await read_json(request)
    out_trade_no, reason, force = body.get("out_trade_no"), body.get("reason", ""), body.get("force", False)
    if not isinstance(out_trade_no, str) or not out_trade_no or not isinstance(reason, str) \
            or not isinstance(force, bool):
        raise BadRequest('expected {"out_trade_no": "...", "reason": "...", "force": false}')
    audit("wechat_refund_requested", who="admin", ip=ip, out_trade_no=out_trade_no, force=force)
    done = await request.app[WECHAT].refund_order(out_trade_no, reason, force)
    return answer(done, {k: v for k, v in done.items() if k != "success"})


@routes.post("/api/wechat/admin/reconcile")
async def reconcile(request: web.Request) -> web.Response:
    ip = require_admin(request)
    counts = await request.app[WECHAT].reconcile()
    audit("wechat_reconciled", who="admin", ip=ip, **counts)
    return answer({"success": True, **counts}, counts)
