"""The original mini program's shapes: the ``{success, data}`` envelope and its openid-based calls.

Every WeChat answer carries ``data`` next to photogate's own fields (additive); with
``wechat.legacy_clients`` on, the pay calls also accept an ``openid`` instead of our session
token (see :meth:`~photogate.wechat.access.WechatAccess.caller`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ..errors import BadRequest
from ..jsonbody import json_response
from .config import WechatProduct
from .records.protocol import CLOSED, CREATED, FAILED, PAID, REFUNDED, REFUNDING

#: Our order states as WeChat Pay's ``trade_state`` (what the original answered).
TRADE_STATE = {
    CREATED: "NOTPAY", PAID: "SUCCESS", CLOSED: "CLOSED", FAILED: "PAYERROR",
    REFUNDING: "REFUND", REFUNDED: "REFUND",
}

_OPENID = re.compile(r"[A-Za-z0-9_-]{1,128}")


def answer(body: Mapping[str, Any], data: Any) -> web.Response:
    """``body`` with the original's envelope: ``success`` and ``data`` (never a session_key)."""
    return json_response({**body, "success": True, "data": data})


def openid_field(value: Any, where: str = "openid") -> str | None:
    """An ``openid`` an old client sent (``None`` when it sent none)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _OPENID.fullmatch(value):
        raise BadRequest(f"{where}: expected the openid from /api/wechat/login (letters, digits, '-', '_')")
    return value


def order_data(order: Mapping[str, Any]) -> dict[str, Any]:
    """An order (:meth:`Order.public`) with the original's ``trade_state`` and ``total_fee``."""
    return {**order, "trade_state": TRADE_STATE.get(order.get("state", ""), "NOTPAY"),
            "total_fee": order.get("amount")}


def product_for_fee(products: Mapping[str, WechatProduct], total_fee: Any) -> str:
    """The product an old client's ``total_fee`` (fen) pays for: the price is never the client's to set."""
    offer = ", ".join(f"{name} ({p.price_fen} fen)" for name, p in sorted(products.items()))
    if isinstance(total_fee, str) and total_fee.isdigit() and len(total_fee) <= 12:
        total_fee = int(total_fee)
    if isinstance(total_fee, int) and not isinstance(total_fee, bool):
        for name, product in products.items():
            if product.price_fen == total_fee:
                return name
    raise BadRequest(f"total_fee: must be the price of one of the products: {offer or 'none configured'}")
