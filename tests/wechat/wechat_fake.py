"""A fake WeChat: api.weixin.qq.com and api.mch.weixin.qq.com as one real aiohttp app.

It holds locally generated keys (merchant, WeChat Pay public key, platform certificate),
checks our ``Authorization`` header over the raw path and body like WeChat does, signs
its 2xx Pay answers and answers errors unsigned (WeChat signs only once it has verified the
request), and builds and POSTs signed, encrypted notifications. The platform certificate's
serial starts with ``0x0A``: WeChat writes it as the certificate's own hex, leading zero kept.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yarl
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

APPID = "wx0123456789abcdef"
APP_SECRET = "app-secret-9f8e7d6c5b4a39281706"
MCHID = "1900000109"
MERCHANT_SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
APIV3_KEY = "K7pQ2xR9vT4mW8nZ1cB6yH3jL5fD0sGa"
PUB_KEY_ID = "PUB_KEY_ID_0119000001092024061400000000000001"
#: What jscode2session answers as session_key: it must never reach a client or a log line.
SESSION_KEY = "tiihtNczf5v6AKRyjwEUhQ=="


@dataclass(frozen=True)
class WxKeys:
    merchant: rsa.RSAPrivateKey
    merchant_path: Path
    pay: rsa.RSAPrivateKey
    pay_public_path: Path
    platform: rsa.RSAPrivateKey
    platform_cert_path: Path
    platform_serial: str
    other: rsa.RSAPrivateKey  # a key nobody trusts (forgeries)


def _pem_private(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_keys(folder: Path) -> WxKeys:
    """Generate every key once (RSA generation is the slow part of this suite)."""
    folder.mkdir(parents=True, exist_ok=True)
    merchant, pay, platform, other = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
                                      for _ in range(4))
    (folder / "apiclient_key.pem").write_bytes(_pem_private(merchant))
    (folder / "pub_key.pem").write_bytes(pay.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tenpay.com Root CA (fake)")])
    now = datetime.datetime.now(datetime.UTC)
    # 20 bytes like WeChat's, the first 0x0A: a serial whose hex starts with a zero (1 in 16 real ones).
    serial = int.from_bytes(b"\x0a" + secrets.token_bytes(19), "big")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(platform.public_key())
            .serial_number(serial).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365)).sign(platform, hashes.SHA256()))
    (folder / "wechatpay_cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return WxKeys(merchant, folder / "apiclient_key.pem", pay, folder / "pub_key.pem", platform,
                  folder / "wechatpay_cert.pem", wechat_serial(cert), other)


def wechat_serial(cert: x509.Certificate) -> str:
    """``Wechatpay-Serial`` as WeChat sends it: the 20 serial bytes in upper-case hex (``0A57F...``)."""
    return cert.serial_number.to_bytes(20, "big").hex().upper()


def rsa_sign(key: rsa.RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def rsa_verify(key: rsa.RSAPublicKey, message: bytes, signature: str) -> bool:
    try:
        key.verify(base64.b64decode(signature), message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


class FakeWechat:
    def __init__(self, keys: WxKeys) -> None:
        self.keys = keys
        #: How Pay answers are signed: pubkey | cert | forged | unsigned
        self.sign_mode = "pubkey"
        self.login_calls: dict[str, int] = {}
        self.token_calls = 0
        self.revoked: set[str] = set()
        self.sec_check_tokens: list[str] = []
        self.orders: dict[str, dict[str, Any]] = {}
        self.closed: list[str] = []
        self.refunds: list[dict[str, Any]] = []  # every refund request's body
        #: Refunds by out_refund_no: what the query answers and what a notification reports.
        self.refund_records: dict[str, dict[str, Any]] = {}
        self.refund_status = "SUCCESS"
        #: Where notifications for our notify_url really go (the test gateway's base URL).
        self.notify_base = ""
        #: Sign error answers too (WeChat does not; a forged signed error must still be refused).
        self.sign_errors = False
        #: A status (e.g. 500) that every Pay call answers with SYSTEM_ERROR; 0: none.
        self.outage = 0
        self.pay_requests: list[tuple[str, str]] = []
        #: Every Pay request as it came on the wire: method, raw path, Authorization, body.
        self.pay_wire: list[tuple[str, str, str, bytes]] = []
        self.auth_failures: list[str] = []
        self.server: TestServer | None = None

    # -- life -------------------------------------------------------------------------------

    @web.middleware
    async def _outage(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.outage and request.path.startswith("/v3/"):
            return self._answer(self.outage, {"code": "SYSTEM_ERROR", "message": "系统错误，请稍后重试"})
        return await handler(request)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._outage])
        app.router.add_get("/sns/jscode2session", self._jscode2session)
        app.router.add_post("/cgi-bin/stable_token", self._stable_token)
        app.router.add_post("/wxa/msg_sec_check", self._msg_sec_check)
        app.router.add_post("/v3/pay/transactions/jsapi", self._jsapi)
        app.router.add_get("/v3/pay/transactions/out-trade-no/{no}", self._query)
        app.router.add_post("/v3/pay/transactions/out-trade-no/{no}/close", self._close)
        app.router.add_post("/v3/refund/domestic/refunds", self._refund)
        app.router.add_get("/v3/refund/domestic/refunds/{no}", self._query_refund)
        return app

    async def start(self) -> None:
        self.server = TestServer(self.app(), host="127.0.0.1", port=0)
        await self.server.start_server()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}"

    # -- mini-program server API -----------------------------------------------------------------

    async def _jscode2session(self, request: web.Request) -> web.Response:
        q = request.query
        code = q.get("js_code", "")
        self.login_calls[code] = self.login_calls.get(code, 0) + 1
        if q.get("appid") != APPID or q.get("secret") != APP_SECRET or q.get("grant_type") != "authorization_code":
            return _text_json({"errcode": 40125, "errmsg": "invalid appsecret"})
        errors = {"used": 40163, "invalid": 40029, "rate": 45011, "blocked": 40226, "busy": -1}
        if code in errors:
            return _text_json({"errcode": errors[code], "errmsg": f"fake {code}"})
        if code == "busy-once" and self.login_calls[code] == 1:
            return _text_json({"errcode": -1, "errmsg": "system error"})
        openid = "o" + code.removeprefix("ok-")
        return _text_json({"openid": openid, "session_key": SESSION_KEY, "unionid": "u" + openid})

    async def _stable_token(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("appid") != APPID or body.get("secret") != APP_SECRET:
            return web.json_response({"errcode": 40125, "errmsg": "invalid appsecret"})
        self.token_calls += 1
        await asyncio.sleep(0.05)  # a slow WeChat: concurrent callers overlap this refresh
        return web.json_response({"access_token": f"AT-{self.token_calls}-{secrets.token_hex(8)}",
                                  "expires_in": 7200})

    async def _msg_sec_check(self, request: web.Request) -> web.Response:
        token = request.query.get("access_token", "")
        self.sec_check_tokens.append(token)
        if token in self.revoked:
            return web.json_response({"errcode": 40001, "errmsg": "invalid credential, access_token is invalid"})
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    # -- WeChat Pay ------------------------------------------------------------------------------

    def sign_headers(self, body: bytes, *, mode: str | None = None, timestamp: int | None = None) -> dict[str, str]:
        mode = mode or self.sign_mode
        if mode == "unsigned":
            return {}
        ts, nonce = str(int(time.time()) if timestamp is None else timestamp), secrets.token_hex(16)
        key, serial = {
            "pubkey": (self.keys.pay, PUB_KEY_ID),
            "cert": (self.keys.platform, self.keys.platform_serial),
            "forged": (self.keys.other, PUB_KEY_ID),
        }[mode]
        signature = rsa_sign(key, b"%s\n%s\n%s\n" % (ts.encode(), nonce.encode(), body))
        return {"Wechatpay-Timestamp": ts, "Wechatpay-Nonce": nonce, "Wechatpay-Signature": signature,
                "Wechatpay-Serial": serial, "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
                "Request-ID": secrets.token_hex(8)}

    def _answer(self, status: int, data: dict[str, Any] | None = None) -> web.Response:
        body = b"" if data is None else json.dumps(data).encode()
        signed = 200 <= status < 300 or self.sign_errors
        headers = self.sign_headers(body) if signed else {"Request-ID": secrets.token_hex(8)}
        if data is not None:
            headers["Content-Type"] = "application/json"
        return web.Response(status=status, body=body, headers=headers)

    async def _verified(self, request: web.Request) -> bytes | None:
        """The raw body when our Authorization header signs exactly this path and body."""
        body = await request.read()
        self.pay_requests.append((request.method, request.raw_path))
        header = request.headers.get("Authorization", "")
        self.pay_wire.append((request.method, request.raw_path, header, body))
        schema, _, rest = header.partition(" ")
        fields = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if schema != "WECHATPAY2-SHA256-RSA2048" or fields.get("mchid") != MCHID \
                or fields.get("serial_no") != MERCHANT_SERIAL:
            self.auth_failures.append("header")
            return None
        if abs(time.time() - int(fields.get("timestamp", "0"))) > 300:
            self.auth_failures.append("timestamp")
            return None
        message = b"%s\n%s\n%s\n%s\n%s\n" % (request.method.encode(), request.raw_path.encode(),
                                             fields["timestamp"].encode(), fields.get("nonce_str", "").encode(), body)
        if not rsa_verify(self.keys.merchant.public_key(), message, fields.get("signature", "")):
            self.auth_failures.append("signature")
            return None
        return body

    def _sign_error(self) -> web.Response:
        return self._answer(401, {"code": "SIGN_ERROR", "message": "签名错误"})

    async def _jsapi(self, request: web.Request) -> web.Response:
        raw = await self._verified(request)
        if raw is None:
            return self._sign_error()
        body = json.loads(raw)
        if body.get("mchid") != MCHID or body.get("appid") != APPID or not body.get("notify_url") \
                or not isinstance(body.get("amount", {}).get("total"), int) or not body.get("payer", {}).get("openid"):
            return self._answer(400, {"code": "PARAM_ERROR", "message": "bad order"})
        prepay_id = "wx" + secrets.token_hex(14)
        self.orders[body["out_trade_no"]] = {**body, "trade_state": "NOTPAY", "prepay_id": prepay_id}
        return self._answer(200, {"prepay_id": prepay_id})

    async def _query(self, request: web.Request) -> web.Response:
        if await self._verified(request) is None:
            return self._sign_error()
        no = request.match_info["no"]
        if request.query.get("mchid") != MCHID:
            return self._answer(400, {"code": "PARAM_ERROR", "message": "mchid"})
        if no not in self.orders:
            return self._answer(404, {"code": "ORDER_NOT_EXIST", "message": "订单不存在"})
        return self._answer(200, self.transaction(no))

    async def _close(self, request: web.Request) -> web.Response:
        if await self._verified(request) is None:
            return self._sign_error()
        no = request.match_info["no"]
        if no not in self.orders:
            return self._answer(404, {"code": "ORDER_NOT_EXIST", "message": "订单不存在"})
        self.orders[no]["trade_state"] = "CLOSED"
        self.closed.append(no)
        return self._answer(204)

    async def _refund(self, request: web.Request) -> web.Response:
        raw = await self._verified(request)
        if raw is None:
            return self._sign_error()
        body = json.loads(raw)
        order = self.orders.get(body.get("out_trade_no", ""))
        if order is None or order["trade_state"] != "SUCCESS" or body["amount"]["total"] != order["amount"]["total"]:
            return self._answer(400, {"code": "INVALID_REQUEST", "message": "cannot refund"})
        self.refunds.append(body)
        record = self.refund_records.get(body["out_refund_no"])
        if record is None:  # WeChat dedupes on out_refund_no: a retry answers the same refund
            record = {"refund_id": "50" + secrets.token_hex(8), "out_refund_no": body["out_refund_no"],
                      "transaction_id": order.get("transaction_id", ""), "out_trade_no": body["out_trade_no"],
                      "channel": "ORIGINAL", "user_received_account": "支付用户零钱",
                      "create_time": "2024-06-14T10:05:00+08:00", "status": self.refund_status,
                      "amount": body["amount"], "notify_url": body.get("notify_url")}
            self.refund_records[body["out_refund_no"]] = record
        return self._answer(200, self._refund_view(record))

    async def _query_refund(self, request: web.Request) -> web.Response:
        if await self._verified(request) is None:
            return self._sign_error()
        record = self.refund_records.get(request.match_info["no"])
        if record is None:
            return self._answer(404, {"code": "RESOURCE_NOT_EXISTS", "message": "退款单不存在"})
        return self._answer(200, self._refund_view(record))

    @staticmethod
    def _refund_view(record: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in record.items() if k != "notify_url"}

    # -- test controls ------------------------------------------------------------------------------

    def pay(self, out_trade_no: str) -> None:
        """The user paid in WeChat."""
        self.orders[out_trade_no]["trade_state"] = "SUCCESS"
        self.orders[out_trade_no]["transaction_id"] = "4200" + secrets.token_hex(8)

    async def finish_refund(self, out_refund_no: str, status: str = "SUCCESS") -> int | None:
        """WeChat finishes a ``PROCESSING`` refund; it notifies (REFUND.{status}) only when the
        refund request named a ``notify_url``. Returns our notify endpoint's HTTP status, or
        ``None`` when no notification was sent."""
        record = self.refund_records[out_refund_no]
        record["status"] = status
        url = record.get("notify_url")
        if not url:
            return None
        assert self.notify_base, "set fake.notify_base to the gateway's URL"
        target = self.notify_base.rstrip("/") + str(yarl.URL(url).raw_path)
        resource = {"mchid": MCHID, "out_trade_no": record["out_trade_no"],
                    "transaction_id": record["transaction_id"], "out_refund_no": out_refund_no,
                    "refund_id": record["refund_id"], "refund_status": status,
                    "user_received_account": record["user_received_account"],
                    "amount": {"total": record["amount"]["total"], "refund": record["amount"]["refund"],
                               "payer_total": record["amount"]["total"],
                               "payer_refund": record["amount"]["refund"]}}
        status_code, _ = await self.post(target, *self.notification(resource, event_type=f"REFUND.{status}"))
        return status_code

    def transaction(self, out_trade_no: str, /, **overrides: Any) -> dict[str, Any]:
        order = self.orders[out_trade_no]
        tx = {
            "appid": order["appid"], "mchid": order["mchid"], "out_trade_no": out_trade_no,
            "transaction_id": order.get("transaction_id", ""), "trade_type": "JSAPI",
            "trade_state": order["trade_state"], "trade_state_desc": "支付成功", "bank_type": "OTHERS",
            "attach": "", "success_time": "2024-06-14T10:00:00+08:00", "payer": {"openid": order["payer"]["openid"]},
            "amount": {"total": order["amount"]["total"], "payer_total": order["amount"]["total"],
                       "currency": "CNY", "payer_currency": "CNY"},
        }
        tx.update(overrides)
        return tx

    def notification(self, resource: dict[str, Any], *, event_type: str = "TRANSACTION.SUCCESS",
                     mode: str = "pubkey", timestamp: int | None = None) -> tuple[dict[str, str], bytes]:
        """A notification as WeChat sends it: the resource AES-256-GCM encrypted, the body signed."""
        nonce, associated = secrets.token_hex(6), "transaction"
        ciphertext = AESGCM(APIV3_KEY.encode()).encrypt(nonce.encode(), json.dumps(resource).encode(),
                                                         associated.encode())
        body = json.dumps({
            "id": secrets.token_hex(16), "create_time": "2024-06-14T10:00:01+08:00",
            "resource_type": "encrypt-resource",
            "event_type": event_type, "summary": "支付成功",
            "resource": {"original_type": "transaction", "algorithm": "AEAD_AES_256_GCM",
                         "ciphertext": base64.b64encode(ciphertext).decode(), "associated_data": associated,
                         "nonce": nonce},
        }).encode()
        headers = {"Content-Type": "application/json", **self.sign_headers(body, mode=mode, timestamp=timestamp)}
        return headers, body

    async def post(self, url: str, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        """POST a notification to our notify URL, as WeChat would."""
        async with aiohttp.ClientSession() as session, session.post(url, data=body, headers=headers) as resp:
            return resp.status, await resp.text()


def _text_json(data: dict[str, Any]) -> web.Response:
    # api.weixin.qq.com really answers JSON as text/plain.
    return web.Response(text=json.dumps(data), content_type="text/plain")
