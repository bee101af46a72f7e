"""The v3 client against the fake WeChat Pay: signing, verification in both key modes, AES-GCM."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
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
