"""Issue 14: an independent implementation as the oracle for photogate's WeChat Pay cryptography.

The fake WeChat and photogate's client were written together and could agree on a mistake;
``wechatpayv3`` (the community Python SDK) and the ``openssl`` command line were not. On
identical inputs they must produce the same bytes: the request ``Authorization`` signature
(over what the client really sent), ``paySign``, the verdict on a notification's signature
(public key and platform certificate, whose serial starts with ``0A``) and the AES-256-GCM
decryption of its resource. RSA-SHA256 PKCS#1 v1.5 is deterministic, so equal inputs give
equal signatures byte for byte.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from wechat_fake import APIV3_KEY, APPID, MCHID, MERCHANT_SERIAL, PUB_KEY_ID, FakeWechat, WxKeys
from wechatpayv3 import core as oracle_core
from wechatpayv3 import utils as oracle

from photogate.wechat.pay import (
    KeyRing,
    Merchant,
    PayClient,
    SignatureError,
    authorization,
    decrypt_resource,
    request_payment_params,
)

FIELDS = re.compile(r'(\w+)="([^"]*)"')


def _pem(keys: WxKeys) -> str:
    return keys.merchant_path.read_text()


def _openssl_sign(key_path: Path, message: bytes, tmp_path: Path) -> str:
    """RSA-SHA256 by the openssl command line: a second implementation of the signature."""
    (tmp_path / "message").write_bytes(message)
    raw = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(key_path), str(tmp_path / "message")],
                         capture_output=True, check=True, timeout=30).stdout
    return base64.b64encode(raw).decode()


@pytest.fixture
def oracle_pubkey(wx_keys: WxKeys) -> oracle_core.Core:
    """wechatpayv3 configured with the WeChat Pay public key."""
    public = wx_keys.pay_public_path.read_text()
    return oracle_core.Core(MCHID, MERCHANT_SERIAL, _pem(wx_keys), APIV3_KEY, public_key=public,
                            public_key_id=PUB_KEY_ID)


@pytest.fixture
def oracle_cert(wx_keys: WxKeys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[oracle_core.Core]:
    """wechatpayv3 configured with the platform certificate (read from its cert_dir, no download)."""
    folder = tmp_path / "oracle-certs"
    folder.mkdir()
    shutil.copy(wx_keys.platform_cert_path, folder / f"{wx_keys.platform_serial}.pem")
    core = oracle_core.Core(MCHID, MERCHANT_SERIAL, _pem(wx_keys), APIV3_KEY, cert_dir=str(folder))
    # An unknown serial makes it download certificates from WeChat: never from a test.
    monkeypatch.setattr(core, "_update_certificates", lambda: None)
    yield core


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_request_signatures_match_the_oracle_on_the_wire(session: aiohttp.ClientSession,
                                                               fake_wechat: FakeWechat, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    keys = fake_wechat.keys
    ring = KeyRing.load(str(keys.pay_public_path), PUB_KEY_ID, (str(keys.platform_cert_path),))
    client = PayClient(session, fake_wechat.url, Merchant(MCHID, MERCHANT_SERIAL, keys.merchant, PUB_KEY_ID), ring)
    await client.jsapi(appid=APPID, description="照片增强 10 次 «UTF-8»", out_trade_no="PGORACLE01",
                       notify_url="https://photo.example.com/api/wechat/pay/notify",
                       amount={"total": 100, "currency": "CNY"}, payer={"openid": "oalice"})
    await client.query("PGORACLE01")  # GET, a query string, no body
    await client.close("PGORACLE01")
    assert len(fake_wechat.pay_wire) == 3 and fake_wechat.auth_failures == []
    private_key = oracle.load_private_key(_pem(keys))
    for method, raw_path, header, body in fake_wechat.pay_wire:
        ours = dict(FIELDS.findall(header))
        # The oracle signs the same request with our header's timestamp and nonce.
        monkeypatch.setattr(oracle, "time", SimpleNamespace(time=lambda ts=int(ours["timestamp"]): ts))
        theirs = oracle.build_authorization(raw_path, method, MCHID, MERCHANT_SERIAL, private_key,
                                            data=body.decode() or None, nonce_str=ours["nonce_str"])
        assert header == theirs, (method, raw_path)
        message = b"%s\n%s\n%s\n%s\n%s\n" % (method.encode(), raw_path.encode(), ours["timestamp"].encode(),
                                             ours["nonce_str"].encode(), body)
        assert ours["signature"] == _openssl_sign(keys.merchant_path, message, tmp_path), (method, raw_path)
    # And the signing function on its own, with a fixed timestamp and nonce.
    monkeypatch.setattr(oracle, "time", SimpleNamespace(time=lambda: 1718330400))
    body = '{"mchid":"1900000109","reason":"测试"}'
    assert authorization(MCHID, MERCHANT_SERIAL, keys.merchant, "POST", "/v3/refund/domestic/refunds",
                         body.encode(), timestamp=1718330400, nonce="593BEC0C930BF1AFEB40B4A08C8FB242") == \
        oracle.build_authorization("/v3/refund/domestic/refunds", "POST", MCHID, MERCHANT_SERIAL, private_key,
                                   data=body, nonce_str="593BEC0C930BF1AFEB40B4A08C8FB242")


def test_pay_sign_matches_the_oracle(wx_keys: WxKeys, oracle_pubkey: oracle_core.Core, tmp_path: Path) -> None:
    for prepay_id in ("wx201410272009395522657a690389285100", "wx" + "0" * 34):
        params = request_payment_params(APPID, wx_keys.merchant, prepay_id)
        fields = [params["appId"], params["timeStamp"], params["nonceStr"], params["package"]]
        assert params["paySign"] == oracle_pubkey.sign(fields)
        message = ("\n".join(fields) + "\n").encode()
        assert params["paySign"] == _openssl_sign(wx_keys.merchant_path, message, tmp_path)


def _ours(ring: KeyRing, headers: dict[str, str], body: bytes) -> dict[str, object] | None:
    """photogate's verdict and plaintext: what handle_notify verifies and decrypts."""
    try:
        ring.check_headers(headers, body)
        return decrypt_resource(APIV3_KEY.encode(), json.loads(body)["resource"])
    except SignatureError:
        return None


def _theirs(core: oracle_core.Core, headers: dict[str, str], body: bytes) -> dict[str, object] | None:
    result = core.callback(headers, body)
    return None if result is None else result["resource"]


def test_notification_verdicts_and_plaintext_match_the_oracle(wx_keys: WxKeys, oracle_pubkey: oracle_core.Core,
                                                              oracle_cert: oracle_core.Core) -> None:
    fake = FakeWechat(wx_keys)
    fake.orders["PGORACLE02"] = {"appid": APPID, "mchid": MCHID, "amount": {"total": 100},
                                 "payer": {"openid": "oalice"}, "trade_state": "NOTPAY"}
    fake.pay("PGORACLE02")
    tx = fake.transaction("PGORACLE02", attach="备注 ✓")
    rings = {"pubkey": KeyRing.load(str(wx_keys.pay_public_path), PUB_KEY_ID),
             "cert": KeyRing.load(certs=(str(wx_keys.platform_cert_path),))}
    oracles = {"pubkey": oracle_pubkey, "cert": oracle_cert}
    for mode in ("pubkey", "cert"):
        headers, body = fake.notification(tx, mode=mode)
        assert headers["Wechatpay-Serial"].startswith("0A" if mode == "cert" else "PUB_KEY_ID_")
        tampered = body.replace(b'"summary": "', b'"summary": "x')
        forged_headers, forged_body = fake.notification(tx, mode="forged")
        if mode == "cert":
            forged_headers = {**forged_headers, "Wechatpay-Serial": headers["Wechatpay-Serial"]}
        cases = {
            "good": (headers, body),
            "tampered body": (headers, tampered),
            "forged signature": (forged_headers, forged_body),
            "signature of another body": ({**headers, "Wechatpay-Signature": forged_headers["Wechatpay-Signature"]},
                                          body),
        }
        for what, (h, b) in cases.items():
            ours, theirs = _ours(rings[mode], h, b), _theirs(oracles[mode], h, b)
            assert ours == theirs, (mode, what)
            assert (ours is not None) == (what == "good"), (mode, what)
        assert _ours(rings[mode], headers, body) == tx


def test_resource_decryption_matches_the_oracle() -> None:
    plain = json.dumps({"out_trade_no": "PGORACLE03", "summary": "退款成功 ✓", "amount": {"refund": 100}},
                       ensure_ascii=False).encode()
    for nonce, associated in (("0123456789ab", "transaction"), ("n0nceN0nce12", "refund"), ("abcdefabcdef", "")):
        ct = AESGCM(APIV3_KEY.encode()).encrypt(nonce.encode(), plain, associated.encode() or None)
        resource = {"algorithm": "AEAD_AES_256_GCM", "nonce": nonce, "associated_data": associated,
                    "ciphertext": base64.b64encode(ct).decode()}
        theirs = oracle.aes_decrypt(nonce, resource["ciphertext"], associated, APIV3_KEY)
        assert theirs is not None and decrypt_resource(APIV3_KEY.encode(), resource) == json.loads(theirs)
        flipped = base64.b64encode(bytes([ct[0] ^ 1]) + ct[1:]).decode()
        assert oracle.aes_decrypt(nonce, flipped, associated, APIV3_KEY) is None
        with pytest.raises(SignatureError):
            decrypt_resource(APIV3_KEY.encode(), {**resource, "ciphertext": flipped})


def test_the_merchant_key_is_the_one_the_oracle_loads(wx_keys: WxKeys) -> None:
    """Guard for the comparisons above: both sides sign with the same key."""
    theirs = oracle.load_private_key(_pem(wx_keys))
    assert theirs.private_numbers() == wx_keys.merchant.private_numbers()
    assert wx_keys.merchant.key_size == 2048
    assert serialization.load_pem_private_key(wx_keys.merchant_path.read_bytes(), None).key_size == 2048
