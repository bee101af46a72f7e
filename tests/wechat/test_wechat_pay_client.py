"""The v3 client against the fake WeChat Pay: signing, verification in both key modes, AES-GCM."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from support import make_config
from wechat_fake import (
    APIV3_KEY,
    APP_SECRET,
    APPID,
    MCHID,
    MERCHANT_SERIAL,
    PUB_KEY_ID,
    FakeWechat,
    WxKeys,
    rsa_verify,
)
from wechat_support import wechat_config

from photogate.app import create_app
from photogate.config import ConfigError
from photogate.wechat.pay import (
    KeyRing,
    Merchant,
    PayClient,
    PayError,
    PayUnavailable,
    SignatureError,
    certificate_serial,
    decrypt_resource,
    load_public_key,
    request_payment_params,
)

ORDER = {"appid": APPID, "description": "照片增强 10 次", "out_trade_no": "PGTEST0001",
         "notify_url": "https://photo.example.com/api/wechat/pay/notify",
         "amount": {"total": 100, "currency": "CNY"}, "payer": {"openid": "oalice"}}


def _ring(keys: WxKeys, *, pubkey: bool = True, cert: bool = True) -> KeyRing:
    return KeyRing.load(str(keys.pay_public_path) if pubkey else "", PUB_KEY_ID if pubkey else "",
                        (str(keys.platform_cert_path),) if cert else ())


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _client(session: aiohttp.ClientSession, fake: FakeWechat, ring: KeyRing, key=None) -> PayClient:  # type: ignore[no-untyped-def]
    merchant = Merchant(MCHID, MERCHANT_SERIAL, key or fake.keys.merchant, PUB_KEY_ID)
    return PayClient(session, fake.url, merchant, ring, timeout=5)


async def test_signed_requests_and_both_verification_modes(session: aiohttp.ClientSession,
                                                           fake_wechat: FakeWechat) -> None:
    client = _client(session, fake_wechat, _ring(fake_wechat.keys))
    for mode in ("pubkey", "cert"):
        fake_wechat.sign_mode = mode
        prepay_id = await client.jsapi(**{**ORDER, "out_trade_no": f"PGTEST-{mode}"})
        assert prepay_id.startswith("wx")
        tx = await client.query(f"PGTEST-{mode}")  # GET with a query string: signed as sent
        assert tx["trade_state"] == "NOTPAY"
    await client.close("PGTEST-cert")  # 204, an empty signed body
    assert fake_wechat.closed == ["PGTEST-cert"] and fake_wechat.auth_failures == []
    with pytest.raises(PayError) as err:
        await client.query("PG-nowhere")
    assert err.value.status == 404 and err.value.code == "ORDER_NOT_EXIST"


async def test_the_fake_checks_our_signature(session: aiohttp.ClientSession, fake_wechat: FakeWechat) -> None:
    client = _client(session, fake_wechat, _ring(fake_wechat.keys), key=fake_wechat.keys.other)
    with pytest.raises(PayError) as err:
        await client.jsapi(**ORDER)
    assert err.value.code == "SIGN_ERROR" and fake_wechat.auth_failures == ["signature"]


@pytest.mark.parametrize(("mode", "pubkey", "cert"), [
    ("forged", True, True), ("unsigned", True, True), ("cert", True, False), ("pubkey", False, True),
])
async def test_unverifiable_answers_are_refused(session: aiohttp.ClientSession, fake_wechat: FakeWechat,
                                                mode: str, pubkey: bool, cert: bool) -> None:
    fake_wechat.sign_mode = mode
    client = _client(session, fake_wechat, _ring(fake_wechat.keys, pubkey=pubkey, cert=cert))
    with pytest.raises(PayUnavailable, match="failed verification"):
        await client.jsapi(**ORDER)


def test_keyring_checks_window_serial_and_probe(wx_keys: WxKeys) -> None:
    fake = FakeWechat(wx_keys)
    ring = _ring(wx_keys)
    body = b'{"ok":true}'
    headers = fake.sign_headers(body, mode="pubkey")
    ring.check_headers(headers, body)
    ts = int(headers["Wechatpay-Timestamp"])
    ring.check_headers(headers, body, now=ts + 299)
    with pytest.raises(SignatureError, match="5 minutes"):
        ring.check_headers(headers, body, now=ts + 301)
    with pytest.raises(SignatureError, match="probe"):
        ring.check_headers({**headers, "Wechatpay-Signature": "WECHATPAY/SIGNTEST/" + "A" * 40}, body)
    with pytest.raises(SignatureError, match="unknown Wechatpay-Serial"):
        ring.check_headers({**headers, "Wechatpay-Serial": "PUB_KEY_ID_OTHER"}, body)
    with pytest.raises(SignatureError, match="does not verify"):
        ring.check_headers(headers, body + b" ")
    with pytest.raises(SignatureError, match="missing"):
        ring.check_headers({}, body)


def test_resource_decrypts_and_tampering_fails() -> None:
    plain = {"out_trade_no": "PG1", "amount": {"total": 100}}
    ct = AESGCM(APIV3_KEY.encode()).encrypt(b"0123456789ab", json.dumps(plain).encode(), b"transaction")
    resource = {"algorithm": "AEAD_AES_256_GCM", "nonce": "0123456789ab", "associated_data": "transaction",
                "ciphertext": base64.b64encode(ct).decode()}
    assert decrypt_resource(APIV3_KEY.encode(), resource) == plain
    flipped = bytes([ct[0] ^ 1]) + ct[1:]
    for bad in ({**resource, "ciphertext": base64.b64encode(flipped).decode()},
                {**resource, "associated_data": "refund"}, {**resource, "nonce": "0123456789ac"},
                {**resource, "algorithm": "AES-CBC"}, {**resource, "ciphertext": "%%%"}):
        with pytest.raises(SignatureError):
            decrypt_resource(APIV3_KEY.encode(), bad)
    with pytest.raises(SignatureError):
        decrypt_resource(b"x" * 32, resource)


def test_request_payment_signature(wx_keys: WxKeys) -> None:
    params = request_payment_params(APPID, wx_keys.merchant, "wx201410272009395522657a690389285100")
    assert params["package"] == "prepay_id=wx201410272009395522657a690389285100" and params["signType"] == "RSA"
    assert abs(int(params["timeStamp"]) - time.time()) < 5
    message = f"{APPID}\n{params['timeStamp']}\n{params['nonceStr']}\n{params['package']}\n".encode()
    assert rsa_verify(wx_keys.merchant.public_key(), message, params["paySign"])
    assert load_public_key(wx_keys.pay_public_path).key_size == 2048


def test_config_errors_name_the_key(tmp_path: Path, fake_wechat: FakeWechat) -> None:
    cases = {
        "wechat.secret": {"wechat.secret": ""},
        "wechat.billing_enabled": {"wechat.login_enabled": False},
        "wechat.apiv3_key": {"wechat.apiv3_key": "short"},
        "wechat.pay_public_key": {"wechat.pay_public_key_id": ""},
        "wechat.products.credits10.price_fen": {"wechat.products": {"credits10": {"description": "x", "credits": 1}}},
        "wechat.notify_url": {"wechat.notify_url": "photo.example.com/notify"},
    }
    for key, overrides in cases.items():
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            wechat_config(tmp_path, fake_wechat, **overrides)
    with pytest.raises(ConfigError, match=r"wechat\.appid: required"):
        make_config(tmp_path, **{"wechat.login_enabled": True})
    cfg = wechat_config(tmp_path, fake_wechat, **{"wechat.merchant_private_key": str(tmp_path / "missing.pem")})
    with pytest.raises(ConfigError, match=r"wechat\.merchant_private_key: cannot load"):
        create_app(cfg)
    cfg = wechat_config(tmp_path, fake_wechat, **{"wechat.platform_certs": [str(fake_wechat.keys.pay_public_path)]})
    with pytest.raises(ConfigError, match=r"wechat\.platform_certs\[0\]"):
        create_app(cfg)


def test_secrets_from_the_environment(tmp_path: Path) -> None:
    from photogate.config import load_config

    cfg = load_config(None, overrides={"webhook.secret": "s" * 24, "wechat.appid": APPID}, env={
        "WECHAT_APP_SECRET": APP_SECRET, "WECHAT_MCH_APIV3_KEY": APIV3_KEY, "WECHAT_MCH_PRIVATE_KEY": "/k.pem",
    })
    assert (cfg.wechat.secret, cfg.wechat.apiv3_key, cfg.wechat.merchant_private_key) == (APP_SECRET, APIV3_KEY,
                                                                                          "/k.pem")
    public = cfg.public_dict()["wechat"]
    assert public["secret"] == "***" and public["apiv3_key"] == "***"


# -- issue 14, item 9: certificate serials with a leading zero ----------------------------------------------


def test_certificate_serial_keeps_its_leading_zero(wx_keys: WxKeys) -> None:
    cert = x509.load_pem_x509_certificate(wx_keys.platform_cert_path.read_bytes())
    assert cert.serial_number >> 152 == 0x0A  # the fake's certificate: a serial whose hex starts with 0
    # As openssl writes it (and WeChat sends it): its own upper-case hex, the zero kept.
    out = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(wx_keys.platform_cert_path)],
                         capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    assert out == f"serial={wx_keys.platform_serial}" and wx_keys.platform_serial.startswith("0A")
    assert certificate_serial(cert) == wx_keys.platform_serial
    ring = _ring(wx_keys, pubkey=False)
    assert ring.serials == [wx_keys.platform_serial]
    fake = FakeWechat(wx_keys)
    body = b'{"ok":true}'
    headers = fake.sign_headers(body, mode="cert")
    assert headers["Wechatpay-Serial"] == wx_keys.platform_serial
    # The same serial however it is written: compared by value, as WeChat's SDKs do.
    for serial in (wx_keys.platform_serial, wx_keys.platform_serial[1:], wx_keys.platform_serial.lower(),
                   "00" + wx_keys.platform_serial):
        ring.check_headers({**headers, "Wechatpay-Serial": serial}, body)
    other = format(int(wx_keys.platform_serial, 16) + 1, "X")
    with pytest.raises(SignatureError, match="unknown Wechatpay-Serial"):
        ring.check_headers({**headers, "Wechatpay-Serial": other}, body)


# -- issue 14, item 11: error answers are WeChat's business errors, 2xx answers must be signed ---------------


async def test_unsigned_error_answers_are_business_errors(session: aiohttp.ClientSession,
                                                          fake_wechat: FakeWechat) -> None:
    client = _client(session, fake_wechat, _ring(fake_wechat.keys))
    with pytest.raises(PayError) as err:
        await client.query("PG-nowhere")  # WeChat's 404 comes unsigned
    assert (err.value.status, err.value.code, err.value.message, err.value.retry) == (
        404, "ORDER_NOT_EXIST", "订单不存在", False)
    with pytest.raises(PayError) as err:
        await client.query_refund("RF-nowhere")
    assert (err.value.status, err.value.code) == (404, "RESOURCE_NOT_EXISTS")
    fake_wechat.outage = 500
    with pytest.raises(PayError) as err:
        await client.jsapi(**ORDER)
    assert (err.value.status, err.value.code, err.value.retry) == (500, "SYSTEM_ERROR", True)
    # A signed error answer must verify: a forged one is refused, not believed.
    fake_wechat.outage, fake_wechat.sign_errors, fake_wechat.sign_mode = 0, True, "forged"
    with pytest.raises(PayUnavailable, match="failed verification"):
        await client.query("PG-nowhere")
    fake_wechat.sign_mode = "pubkey"
    with pytest.raises(PayError) as err:
        await client.query("PG-nowhere")
    assert err.value.code == "ORDER_NOT_EXIST"


async def test_sign_error_reaches_the_user_as_what_it_is(make_wx_gateway, fake_wechat: FakeWechat,  # type: ignore[no-untyped-def]
                                                         tmp_path: Path) -> None:
    """A wrong merchant key: WeChat's unsigned 401 SIGN_ERROR, not "WeChat Pay is unreachable"."""
    wrong = tmp_path / "wrong_key.pem"
    wrong.write_bytes(fake_wechat.keys.other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    gateway = await make_wx_gateway(**{"wechat.merchant_private_key": str(wrong)})
    resp = await gateway.client.post("/api/wechat/auth/openid", json={"code": "ok-quinn"})
    token = (await resp.json())["token"]
    with structlog.testing.capture_logs() as logs:
        resp = await gateway.client.post("/api/wechat/pay/create", json={"product": "credits10"},
                                         headers={"Authorization": f"Bearer {token}"})
    body = await resp.json()
    assert resp.status == 502 and "SIGN_ERROR" in body["error"] and "merchant key" in body["error"], body
    assert fake_wechat.auth_failures == ["signature"]
    refused = [e for e in logs if e["event"] == "wechatpay_request_refused"]
    assert len(refused) == 1 and refused[0]["log_level"] == "error" and refused[0]["code"] == "SIGN_ERROR"
    assert not [e for e in logs if e["event"] == "wechatpay_response_unverified"]
