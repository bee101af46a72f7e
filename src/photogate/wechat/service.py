"""The WeChat service: sessions, orders, notifications, reconciliation, refunds, credits.

Owns its aiohttp session (WeChat's answers must be decompressed before they are
verified, unlike the gateway's proxy session) and its records beside the gateway's own
(opened by ``storage.factory`` with the state store: the same SQLite file or Redis).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from ..audit import audit
from ..config_fields import ConfigError
from ..errors import BadRequest, Conflict, NotFound, ServiceUnavailable
from .config import WechatConfig
from .login import Identity, UpstreamError, WechatApi
from .pay import (
    PROBE_PREFIX,
    KeyRing,
    Merchant,
    PayClient,
    PayError,
    PayUnavailable,
    SignatureError,
    decrypt_resource,
    load_private_key,
    request_payment_params,
    rfc3339,
)
from .records import WechatRecords
from .records.protocol import CREATED, FAILED, PAID, REFUNDING, Order

log = structlog.get_logger("photogate.wechat")

#: The refund sweep leaves a refund younger than this (or two request timeouts) alone: the
#: admin's request for it may still be on its way to WeChat.
REFUND_SWEEP_AFTER = 60.0
#: What WeChat answers for an ``out_refund_no`` it never received.
REFUND_NOT_FOUND = ("RESOURCE_NOT_EXISTS", "ORDER_NOT_EXIST")


class NotifyRejected(Exception):
    """A payment notification we refuse (WeChat retries it); the message is safe to answer."""


def token_hash(token: str) -> str:
    # Only the hash is stored: a copy of the database does not hold live sessions.
    return hashlib.sha256(token.encode()).hexdigest()


def _new_order_no(prefix: str) -> str:
    return prefix + time.strftime("%Y%m%d%H%M%S", time.gmtime()) + secrets.token_hex(6).upper()


class WechatService:
    """What the WeChat routes and :class:`~.access.WechatAccess` call: it talks to WeChat (login,
    WeChat Pay) and keeps the outcome in :class:`~.records.WechatRecords`."""

    def __init__(self, cfg: WechatConfig) -> None:
        self.cfg = cfg
        self.merchant: Merchant | None = None
        self.keyring = KeyRing()
        if cfg.billing_enabled:
            self._load_keys()
        # Filled by running():
        self.records: WechatRecords
        self.session: aiohttp.ClientSession
        self.api: WechatApi
        self.pay: PayClient | None = None

    def _load_keys(self) -> None:
        """Read the merchant key and WeChat Pay's keys at start-up; a bad file names its key."""
        cfg = self.cfg
        try:
            private_key = load_private_key(cfg.merchant_private_key)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"wechat.merchant_private_key: cannot load an RSA private key from "
                              f"{cfg.merchant_private_key}: {type(exc).__name__}") from None
        self.merchant = Merchant(cfg.mchid, cfg.merchant_serial, private_key, cfg.pay_public_key_id)
        try:
            self.keyring = KeyRing.load(cfg.pay_public_key, cfg.pay_public_key_id)
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"wechat.pay_public_key: cannot load an RSA public key from {cfg.pay_public_key}: "
                              f"{type(exc).__name__}") from None
        for i, path in enumerate(cfg.platform_certs):
            try:
                ring = KeyRing.load(certs=(path,))
            except (OSError, ValueError, TypeError) as exc:
                raise ConfigError(f"wechat.platform_certs[{i}]: cannot load a certificate from {path}: "
                                  f"{type(exc).__name__}") from None
            self.keyring.merge(ring)
        if not self.keyring.serials:
            raise ConfigError("wechat.platform_certs: no valid WeChat Pay key (all certificates expired?)")

    @asynccontextmanager
    async def running(self, records: WechatRecords) -> AsyncIterator[WechatService]:
        self.records = records
        await self.records.create_schema()
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        self.api = WechatApi(self.session, self.cfg)
        if self.merchant is not None:
            self.pay = PayClient(self.session, self.cfg.pay_base, self.merchant, self.keyring, timeout=self.cfg.timeout)
        log.info("wechat_started", login_enabled=self.cfg.login_enabled, billing_enabled=self.cfg.billing_enabled,
                 pay_keys=self.keyring.serials)
        try:
            yield self
        finally:
            await self.session.close()

    # -- sessions -----------------------------------------------------------------------------

    async def login(self, code: str) -> tuple[str, Identity]:
        """``wx.login()`` code → our own session token (returned once, stored hashed)."""
        identity = await self.api.code2session(code)
        token = secrets.token_urlsafe(32)
        await self.records.login(identity.openid, identity.unionid, token_hash(token), self.cfg.session_ttl)
        log.info("wechat_login", openid=identity.openid)
        return token, identity

    async def session_openid(self, token: str) -> str | None:
        digest = token_hash(token)
        return await self.records.session_openid(digest)

    # -- credits ------------------------------------------------------------------------------

    async def charge(self, openid: str, task_id: str) -> bool:
        amount = self.cfg.credits_per_enhancement
        ok = await self.records.charge(openid, task_id, amount)
        if ok:
            log.info("credits_charged", openid=openid, task_id=task_id, credits=amount)
        return ok

    async def refund_task(self, task_id: str) -> int:
        given = await self.records.refund_charge(task_id)
        if given:
            log.info("credits_refunded", task_id=task_id, credits=given)
        return given

    async def refund_failed_tasks(self) -> int:
        task_ids = await self.records.failed_charged_tasks()
        for task_id in task_ids:
            await self.refund_task(task_id)
        return len(task_ids)

    async def user_view(self, openid: str) -> dict[str, Any]:
        view = {"credits": await self.records.credits(openid),
                "orders": [o.public() for o in await self.records.user_orders(openid)],
                "tasks": await self.records.user_tasks(openid)}
        return {"success": True, "openid": openid, "billing_enabled": self.cfg.billing_enabled,
                "credits_per_enhancement": self.cfg.credits_per_enhancement, **view}

    async def user_orders(self, openid: str) -> list[dict[str, Any]]:
        return [o.public() for o in await self.records.user_orders(openid, 100)]

    async def user_stats(self, openid: str) -> dict[str, Any]:
        """``GET /api/wechat/pay/stats``: the user's credits and their latest orders, counted."""
        orders = await self.records.user_orders(openid, 100)
        by_state: dict[str, int] = {}
        for order in orders:
            by_state[order.state] = by_state.get(order.state, 0) + 1
        paid = [o for o in orders if o.state == PAID]  # refunded ones are counted in by_state only
        return {"openid": openid, "credits": await self.records.credits(openid), "total_orders": len(orders),
                "paid_orders": len(paid), "total_paid_fen": sum(o.amount for o in paid),
                "credits_bought": sum(o.credits for o in paid), "by_state": by_state}

    # -- orders -------------------------------------------------------------------------------

    def _pay(self) -> PayClient:
        if self.pay is None:
            raise NotFound("WeChat Pay is not enabled on this gateway (wechat.billing_enabled)")
        return self.pay

    def products(self) -> list[dict[str, Any]]:
        return [{"product": name, "description": p.description, "price_fen": p.price_fen, "credits": p.credits}
                for name, p in self.cfg.products.items()]

    async def create_order(self, openid: str, product_id: str, *, attach: str | None = None) -> dict[str, Any]:
        """Store our order, then ask WeChat for a prepay_id; return the wx.requestPayment parameters."""
        pay = self._pay()
        product = self.cfg.products.get(product_id)
        if product is None:
            raise BadRequest(f"product: unknown; choose one of {', '.join(sorted(self.cfg.products))}")
        now = time.time()
        order = Order(
            out_trade_no=_new_order_no("PG"), openid=openid, product=product_id, description=product.description,
            amount=product.price_fen, currency="CNY", credits=product.credits, state=CREATED,
            created_at=now, updated_at=now,
        )
        await self.records.insert_order(order)
        try:
            prepay_id = await pay.jsapi(
                appid=self.cfg.appid, description=product.description, out_trade_no=order.out_trade_no,
                time_expire=rfc3339(now + self.cfg.order_ttl), notify_url=self.cfg.notify_url,
                amount={"total": order.amount, "currency": order.currency}, payer={"openid": openid},
                **({"attach": attach} if attach else {}),  # the client's own note, returned in the notification
            )
        except (PayError, PayUnavailable) as exc:
            error = str(exc)
            await self.records.update_order(order.out_trade_no, state=FAILED, error=error)
            log.error("wechatpay_order_failed", out_trade_no=order.out_trade_no, error=str(exc))
            if isinstance(exc, PayError) and exc.status == 401:
                raise UpstreamError(f"WeChat Pay refused this gateway's merchant signature ({exc.code}); "
                                    "the operator must check the merchant key and serial") from None
            if isinstance(exc, PayError) and not exc.retry:
                raise UpstreamError(f"WeChat Pay refused the order ({exc.code}); try again later") from None
            raise ServiceUnavailable("WeChat Pay is unreachable; try again in a moment") from None
        await self.records.update_order(order.out_trade_no, prepay_id=prepay_id)
        log.info("wechatpay_order_created", out_trade_no=order.out_trade_no, openid=openid, product=product_id,
                 amount=order.amount)
        assert self.merchant is not None
        return {"success": True, "out_trade_no": order.out_trade_no, "product": product_id, "amount": order.amount,
                "credits": order.credits, "payment": request_payment_params(self.cfg.appid, self.merchant.private_key,
                                                                            prepay_id)}

    def _mismatch(self, order: Order, tx: Mapping[str, Any]) -> str | None:
        raw_amount, raw_payer = tx.get("amount"), tx.get("payer")
        amount = raw_amount if isinstance(raw_amount, dict) else {}
        payer = raw_payer if isinstance(raw_payer, dict) else {}
        checks = [
            ("mchid", tx.get("mchid"), self.cfg.mchid),
            ("appid", tx.get("appid"), self.cfg.appid),
            ("out_trade_no", tx.get("out_trade_no"), order.out_trade_no),
            ("amount.total", amount.get("total"), order.amount),
            ("amount.currency", amount.get("currency", "CNY"), order.currency),
            ("payer.openid", payer.get("openid", order.openid), order.openid),
        ]
        for name, got, want in checks:
            if got != want:
                return f"{name} does not match the order"
        return None

    async def _settle(self, order: Order, tx: Mapping[str, Any], source: str) -> bool:
        """Apply a verified transaction to its order; ``True`` when this call granted the credits."""
        problem = self._mismatch(order, tx)
        if problem:
            log.error("wechatpay_transaction_mismatch", out_trade_no=order.out_trade_no, problem=problem,
                      source=source)
            raise NotifyRejected(problem)
        if tx.get("trade_state") != "SUCCESS":
            return False
        transaction_id = str(tx.get("transaction_id") or "")
        credited = await self.records.mark_paid(order.out_trade_no, transaction_id)
        if credited:
            log.info("wechatpay_order_paid", out_trade_no=order.out_trade_no, openid=order.openid,
                     credits=order.credits, source=source)
        else:
            log.info("wechatpay_order_already_paid", out_trade_no=order.out_trade_no, source=source)
        return credited

    async def handle_notify(self, headers: Mapping[str, str], body: bytes) -> None:
        """Verify, decrypt and apply one notification; raise :class:`NotifyRejected` to answer FAIL."""
        if headers.get("Wechatpay-Signature", "").startswith(PROBE_PREFIX):
            # WeChat checks that we verify signatures: fail it, quietly.
            log.info("wechatpay_signature_probe")
            raise NotifyRejected("signature verification failed")
        try:
            self.keyring.check_headers(headers, body)
        except SignatureError as exc:
            log.warning("wechatpay_notify_rejected", reason=str(exc))
            raise NotifyRejected("signature verification failed") from None
        try:
            event = json.loads(body)
            resource = event["resource"]
            if not isinstance(resource, dict):
                raise TypeError
            tx = decrypt_resource(self.cfg.apiv3_key.encode(), resource)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("wechatpay_notify_rejected", reason=f"resource: {exc}"[:200])
            raise NotifyRejected("malformed or undecryptable resource") from None
        event_type = str(event.get("event_type", ""))
        out_trade_no = str(tx.get("out_trade_no", ""))
        order = await self.records.get_order(out_trade_no)
        if order is None:
            log.error("wechatpay_notify_unknown_order", out_trade_no=out_trade_no[:64], event_type=event_type)
            raise NotifyRejected("unknown out_trade_no")
        if event_type.startswith("REFUND."):
            if tx.get("mchid") != self.cfg.mchid:
                raise NotifyRejected("mchid does not match")
            await self._refund_status(order, tx, "notify")
            return
        if event_type != "TRANSACTION.SUCCESS":
            log.info("wechatpay_notify_ignored", event_type=event_type[:64], out_trade_no=out_trade_no)
            return
        await self._settle(order, tx, "notify")

    async def _refunded(self, order: Order, refund_id: str) -> None:
        """Apply a verified ``REFUND.SUCCESS``: the credits the order granted go back, once.

        Policy: a refund made outside the gateway (the merchant console) takes back what the
        order granted; if the user spent some already, what remains is taken and the
        shortfall recorded and audited. Nothing is taken twice."""
        result = await self.records.refund_succeeded(order.out_trade_no, refund_id)
        if result is None:
            log.info("wechatpay_refund_already_applied", out_trade_no=order.out_trade_no)
            return
        taken, shortfall = result
        log.info("wechatpay_refund_succeeded", out_trade_no=order.out_trade_no)
        if taken or shortfall:
            audit("wechat_refund_credits_taken_back", who="wechatpay", ip="", out_trade_no=order.out_trade_no,
                  openid=order.openid, refund_id=refund_id, granted=order.credits, taken=taken, shortfall=shortfall)

    async def query(self, openid: str, out_trade_no: str) -> dict[str, Any]:
        """The caller's own order; an unpaid one is first asked of WeChat (a notification may be late)."""
        order = await self.records.get_order(out_trade_no)
        if order is None or order.openid != openid:
            raise NotFound("unknown order")
        if order.state == CREATED and self.pay is not None:
            try:
                await self._settle(order, await self.pay.query(out_trade_no), "query")
            except (PayError, PayUnavailable, NotifyRejected) as exc:
                log.warning("wechatpay_query_failed", out_trade_no=out_trade_no, error=str(exc))
            order = await self.records.get_order(out_trade_no) or order
        return {"success": True, "order": order.public()}

    async def reconcile(self, now: float | None = None) -> dict[str, int]:
        """Query orders left unpaid past ``order_ttl``: credit the paid ones, close the rest; then
        ask WeChat about refunds still ``refunding`` (:meth:`_sweep_refunds`)."""
        counts = {"paid": 0, "closed": 0, "pending": 0, "errors": 0,
                  "refunded": 0, "refund_closed": 0, "refund_pending": 0}
        await self.records.purge_sessions()
        await self.refund_failed_tasks()
        if self.pay is None:
            return counts
        now = time.time() if now is None else now
        await self._sweep_orders(now - self.cfg.order_ttl, counts)
        # A refund younger than a request's timeout may still be on its way to WeChat.
        await self._sweep_refunds(now - max(REFUND_SWEEP_AFTER, 2 * self.cfg.timeout), counts)
        return counts

    async def _sweep_orders(self, cutoff: float, counts: dict[str, int]) -> None:
        assert self.pay is not None
        for order in await self.records.stale_orders(cutoff):
            no = order.out_trade_no
            try:
                try:
                    tx = await self.pay.query(no)
                except PayError as exc:
                    if exc.code != "ORDER_NOT_EXIST":
                        raise
                    tx = {"trade_state": "CLOSED"}  # never reached WeChat
                state = tx.get("trade_state")
                if state == "SUCCESS":
                    await self._settle(order, tx, "reconcile")
                    counts["paid"] += 1
                elif state in ("NOTPAY", "CLOSED", "REVOKED", "PAYERROR"):
                    if state == "NOTPAY":
                        await self.pay.close(no)
                    await self.records.mark_closed(no)
                    log.info("wechatpay_order_closed", out_trade_no=no, trade_state=state)
                    counts["closed"] += 1
                else:
                    counts["pending"] += 1
            except (PayError, PayUnavailable, NotifyRejected) as exc:
                log.warning("wechatpay_reconcile_failed", out_trade_no=no, error=str(exc))
                counts["errors"] += 1

    async def _sweep_refunds(self, cutoff: float, counts: dict[str, int]) -> None:
        """Query each refund still ``refunding`` (a notification may be lost, or never asked for
        by an older gateway) and settle it as its notification would."""
        assert self.pay is not None
        for order in await self.records.pending_refunds(cutoff):
            no, out_refund_no = order.out_trade_no, str(order.out_refund_no)
            try:
                try:
                    refund = await self.pay.query_refund(out_refund_no)
                except PayError as exc:
                    if exc.retry or exc.code not in REFUND_NOT_FOUND:
                        raise
                    # The refund never reached WeChat (the admin's request was lost): as refused.
                    refund = {"out_trade_no": no, "out_refund_no": out_refund_no, "status": "CLOSED"}
                if refund.get("out_trade_no") != no or refund.get("out_refund_no") != out_refund_no:
                    raise NotifyRejected("refund query answered another refund")
                status = await self._refund_status(order, refund, "reconcile")
                key = {"SUCCESS": "refunded", "CLOSED": "refund_closed"}.get(status, "refund_pending")
                counts[key] += 1
            except (PayError, PayUnavailable, NotifyRejected) as exc:
                log.warning("wechatpay_refund_query_failed", out_trade_no=no, error=str(exc))
                counts["errors"] += 1

    async def run_reconciler(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.reconcile_interval)
            try:
                await self.reconcile()
            except Exception:
                log.exception("wechat_reconcile_crashed")

    async def refund_order(self, out_trade_no: str, reason: str, force: bool) -> dict[str, Any]:
        """Admin refund: take the credits back, then ask WeChat to return the money."""
        pay = self._pay()
        order = await self.records.get_order(out_trade_no)
        if order is None:
            raise NotFound("unknown order")
        if order.state == REFUNDING and order.out_refund_no:
            out_refund_no = order.out_refund_no  # a retry: WeChat dedupes on out_refund_no
        else:
            out_refund_no = _new_order_no("RF")
            result = await self.records.begin_refund(out_trade_no, out_refund_no, force)
            if result == "state":
                raise Conflict(f"only a paid order can be refunded (this one is {order.state})")
            if result == "spent":
                raise Conflict("the user has already spent these credits; send \"force\": true to refund anyway")
        try:
            # notify_url: WeChat sends REFUND.* only to a URL the request names (or the merchant
            # platform's); the reconcile sweep queries the refund if the notification never comes.
            answer = await pay.refund(
                out_trade_no=out_trade_no, out_refund_no=out_refund_no, notify_url=self.cfg.notify_url,
                amount={"refund": order.amount, "total": order.amount, "currency": order.currency},
                **({"reason": reason[:80]} if reason else {}),
            )
        except PayError as exc:
            if not exc.retry:
                error = str(exc)
                await self.records.undo_refund(out_trade_no, error)
                raise UpstreamError(f"WeChat Pay refused the refund ({exc.code}: {exc.message})") from None
            raise ServiceUnavailable(f"WeChat Pay is busy ({exc.code}); the refund may or may not have been made: "
                                     "retry the same request (it is idempotent)") from None
        except PayUnavailable:
            raise ServiceUnavailable("WeChat Pay did not answer; the refund may or may not have been made: "
                                     "retry the same request (it is idempotent)") from None
        order = await self.records.get_order(out_trade_no) or order
        status = await self._refund_status(order, {**answer, "out_refund_no": out_refund_no}, "refund")
        log.info("wechatpay_refund_requested", out_trade_no=out_trade_no, status=status)
        order = await self.records.get_order(out_trade_no) or order
        return {"success": True, "order": order.public(), "refund_status": answer.get("status")}

    async def _refund_status(self, order: Order, refund: Mapping[str, Any], source: str) -> str:
        """Apply a verified refund status — from the refund's answer, its notification or the sweep's
        query — to its order; return the status.

        ``SUCCESS``: :meth:`_refunded`, the one path that marks an order refunded (and takes back
        what a console refund's order granted). ``CLOSED`` (WeChat gave up; the money stayed with
        the merchant): our refund is undone, the order is ``paid`` with its credits back, and an
        admin may refund again. ``ABNORMAL`` (the money is stuck, e.g. the user's card is closed):
        the order stays ``refunding`` with its credits taken — the user is owed money, not
        credits — and an error is logged on every sweep until the operator settles it on the
        merchant platform. ``PROCESSING``: wait.
        """
        status = str(refund.get("refund_status") or refund.get("status") or "")[:32]
        refund_id = str(refund.get("refund_id") or "")[:64]
        ours = bool(order.out_refund_no) and refund.get("out_refund_no") == order.out_refund_no
        if status == "SUCCESS":
            await self._refunded(order, refund_id)
        elif status == "CLOSED" and ours:
            await self.records.undo_refund(order.out_trade_no, f"refund {order.out_refund_no} closed by WeChat")
            log.warning("wechatpay_refund_closed", out_trade_no=order.out_trade_no, source=source)
            audit("wechat_refund_closed", who="wechatpay", ip="", out_trade_no=order.out_trade_no,
                  openid=order.openid, out_refund_no=order.out_refund_no, credits=order.credits)
        elif status == "ABNORMAL" and ours:
            log.error("wechatpay_refund_abnormal", out_trade_no=order.out_trade_no, out_refund_no=order.out_refund_no,
                      source=source, hint="settle this refund on the merchant platform")
        if ours and refund_id and status in ("PROCESSING", "ABNORMAL"):
            await self.records.update_order(order.out_trade_no, refund_id=refund_id)
        return status


WECHAT = web.AppKey("wechat", WechatService)
