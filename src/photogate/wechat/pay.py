"""The small WeChat Pay API v3 client: request signing, response verification, AES-256-GCM.

Every request carries ``Authorization: WECHATPAY2-SHA256-RSA2048 ...`` signed with the
merchant key over the exact bytes sent. Every 2xx answer (and every notification) must carry
a valid ``Wechatpay-Signature`` by a key in the :class:`KeyRing`: the WeChat Pay public key
(``PUB_KEY_ID_...``) and/or the platform certificates, chosen by ``Wechatpay-Serial`` —
both at once during WeChat's migration. A 2xx without a valid signature is forged.
WeChat signs an answer only once it has verified our request, so an error answer (a 401
``SIGN_ERROR`` above all) may come unsigned, as the official SDKs expect: a non-2xx answer
is read as WeChat's business error ``{code, message}``; one that does carry a signature must
verify. All crypto is ``cryptography``'s: RSA-SHA256 PKCS#1 v1.5 and AES-GCM.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import structlog
import yarl
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = structlog.get_logger("photogate.wechat.pay")

SCHEMA = "WECHATPAY2-SHA256-RSA2048"
#: Answers and notifications more than this many seconds off our clock are refused (replays).
MAX_SKEW = 300
#: WeChat's signature probes carry signatures starting with this; they must fail verification.
PROBE_PREFIX = "WECHATPAY/SIGNTEST/"
_HEX = re.compile(r"[0-9A-F]{1,128}")


class SignatureError(ValueError):
    """A signature, timestamp, serial or ciphertext that does not verify."""


class PayError(Exception):
    """WeChat Pay answered an error (non-2xx); ``code`` is its error code, e.g. ``ORDER_NOT_EXIST``.

    ``retry`` is true for the answers WeChat documents as "try the same request again"
    (5xx ``SYSTEM_ERROR``, 429 ``FREQUENCY_LIMITED``): they decide nothing."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"WeChat Pay HTTP {status} {code}: {message}")
        self.status, self.code, self.message = status, code, message

    @property
    def retry(self) -> bool:
        return self.status >= 500 or self.status == 429 or self.code in ("SYSTEM_ERROR", "FREQUENCY_LIMITED")


class PayUnavailable(Exception):
    """WeChat Pay could not be reached or gave an answer we cannot trust."""


# -- keys -----------------------------------------------------------------------------------


def load_private_key(path: str | Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError("not an RSA private key")
    return key


def load_public_key(path: str | Path) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, rsa.RSAPublicKey):
        raise TypeError("not an RSA public key")
    return key


def certificate_serial(cert: x509.Certificate) -> str:
    """The certificate's own serial as WeChat (and ``openssl x509 -serial``) writes it in
    ``Wechatpay-Serial``: upper-case hex of its bytes, a leading zero kept (``0A57...``)."""
    n = cert.serial_number
    return n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big").hex().upper()


def serial_key(serial: str) -> str:
    """How serials are compared: a hex serial by its value (``0A57F...`` is ``A57F...``), any other
    (``PUB_KEY_ID_...``) by its upper-case text."""
    text = serial.strip().upper()
    return format(int(text, 16), "X") if _HEX.fullmatch(text) else text


def sign(private_key: rsa.RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(private_key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode("ascii")


def verify(public_key: rsa.RSAPublicKey, message: bytes, signature: str) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
        public_key.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


class KeyRing:
    """WeChat Pay's verification keys by serial: ``PUB_KEY_ID_...`` and platform certificate serials."""

    def __init__(self, keys: Mapping[str, rsa.RSAPublicKey] | None = None) -> None:
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._names: dict[str, str] = {}  # as configured, for the logs
        for serial, key in (keys or {}).items():
            self.add(serial, key)

    def add(self, serial: str, key: rsa.RSAPublicKey) -> None:
        self._keys[serial_key(serial)] = key
        self._names[serial_key(serial)] = serial.strip().upper()

    def merge(self, other: KeyRing) -> None:
        self._keys.update(other._keys)
        self._names.update(other._names)

    @property
    def serials(self) -> list[str]:
        return sorted(self._names.values())

    @classmethod
    def load(cls, public_key: str = "", public_key_id: str = "", certs: tuple[str, ...] = ()) -> KeyRing:
        """Read the configured key files (blocking: call from an executor)."""
        ring = cls()
        if public_key:
            ring.add(public_key_id, load_public_key(public_key))
        now = datetime.now(UTC)
        for path in certs:
            cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
            if cert.not_valid_after_utc < now:
                log.warning("wechatpay_certificate_expired", path=str(path), serial=certificate_serial(cert))
                continue
            key = cert.public_key()
            if not isinstance(key, rsa.RSAPublicKey):
                raise TypeError(f"{path}: not an RSA certificate")
            ring.add(certificate_serial(cert), key)
        return ring

    def check(self, serial: str, timestamp: str, nonce: str, body: bytes, signature: str,
              *, now: float | None = None) -> None:
        """Verify a WeChat Pay signature over ``TIMESTAMP\\nNONCE\\nBODY\\n``; raise :class:`SignatureError`."""
        if not (serial and timestamp and nonce and signature):
            raise SignatureError("missing Wechatpay-* signature headers")
        if signature.startswith(PROBE_PREFIX):
            raise SignatureError("signature probe")
        try:
            stamp = int(timestamp)
        except ValueError:
            raise SignatureError("malformed Wechatpay-Timestamp") from None
        if abs((time.time() if now is None else now) - stamp) > MAX_SKEW:
            raise SignatureError("Wechatpay-Timestamp more than 5 minutes off")
        key = self._keys.get(serial_key(serial))
        if key is None:
            raise SignatureError(f"unknown Wechatpay-Serial {serial[:64]!r}")
        message = b"%s\n%s\n%s\n" % (timestamp.encode(), nonce.encode(), body)
        if not verify(key, message, signature):
            raise SignatureError("Wechatpay-Signature does not verify")

    def check_headers(self, headers: Mapping[str, str], body: bytes, *, now: float | None = None) -> None:
        self.check(
            headers.get("Wechatpay-Serial", ""), headers.get("Wechatpay-Timestamp", ""),
            headers.get("Wechatpay-Nonce", ""), body, headers.get("Wechatpay-Signature", ""), now=now,
        )


def decrypt_resource(apiv3_key: bytes, resource: Mapping[str, Any]) -> dict[str, Any]:
    """Decrypt a notification's ``resource`` (AEAD_AES_256_GCM with the APIv3 key) to its JSON."""
    if resource.get("algorithm") != "AEAD_AES_256_GCM":
        raise SignatureError(f"unsupported resource algorithm {str(resource.get('algorithm'))[:32]!r}")
    try:
        plain = AESGCM(apiv3_key).decrypt(
            str(resource["nonce"]).encode(),
            base64.b64decode(str(resource["ciphertext"]), validate=True),
            str(resource.get("associated_data") or "").encode() or None,
        )
        data = json.loads(plain)
    except (InvalidTag, KeyError, binascii.Error, ValueError):
        raise SignatureError("resource does not decrypt with the APIv3 key") from None
    if not isinstance(data, dict):
        raise SignatureError("decrypted resource is not a JSON object")
    return data


def authorization(mchid: str, serial: str, private_key: rsa.RSAPrivateKey, method: str, path_qs: str,
                  body: bytes, *, timestamp: int | None = None, nonce: str | None = None) -> str:
    """The ``Authorization`` header over ``METHOD\\nPATH?QUERY\\nTIMESTAMP\\nNONCE\\nBODY\\n``."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_hex(16)
    message = b"%s\n%s\n%s\n%s\n%s\n" % (method.upper().encode(), path_qs.encode(), ts.encode(), nonce.encode(), body)
    signature = sign(private_key, message)
    return (f'{SCHEMA} mchid="{mchid}",nonce_str="{nonce}",signature="{signature}",'
            f'timestamp="{ts}",serial_no="{serial}"')


def request_payment_params(appid: str, private_key: rsa.RSAPrivateKey, prepay_id: str) -> dict[str, str]:
    """The ``wx.requestPayment`` parameters, ``paySign`` over ``appId\\ntimeStamp\\nnonceStr\\npackage\\n``."""
    timestamp, nonce, package = str(int(time.time())), secrets.token_hex(16), f"prepay_id={prepay_id}"
    message = f"{appid}\n{timestamp}\n{nonce}\n{package}\n".encode()
    return {"appId": appid, "timeStamp": timestamp, "nonceStr": nonce, "package": package, "signType": "RSA",
            "paySign": sign(private_key, message)}


def rfc3339(epoch: float) -> str:
    """WeChat's time format, in Beijing time (e.g. ``2024-06-08T10:34:56+08:00``)."""
    return datetime.fromtimestamp(epoch, timezone(timedelta(hours=8))).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Merchant:
    mchid: str
    serial: str
    private_key: rsa.RSAPrivateKey
    #: Sent as ``Wechatpay-Serial`` so WeChat answers with the public key rather than a certificate.
    public_key_id: str = ""


class PayClient:
    """Signed, verified calls to ``pay_base`` over the app's own aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, merchant: Merchant, keyring: KeyRing,
                 *, timeout: float = 10.0) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.merchant = merchant
        self.keyring = keyring
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def request(self, method: str, path_qs: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send one signed request; return the verified JSON answer (``{}`` for 204) or raise."""
        raw = b"" if body is None else json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        # encoded=True: the bytes on the wire are the bytes signed.
        url = yarl.URL(self.base_url + path_qs, encoded=True)
        m = self.merchant
        headers = {
            "Authorization": authorization(m.mchid, m.serial, m.private_key, method, url.raw_path_qs, raw),
            "Accept": "application/json",
            "User-Agent": "photogate",
        }
        if raw:
            headers["Content-Type"] = "application/json"
        if m.public_key_id:
            headers["Wechatpay-Serial"] = m.public_key_id
        try:
            async with self.session.request(method, url, data=raw or None, headers=headers, timeout=self.timeout,
                                            allow_redirects=False) as resp:
                answer = await resp.read()
                status, resp_headers = resp.status, resp.headers
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise PayUnavailable(f"WeChat Pay unreachable: {type(exc).__name__}") from None
        ok = 200 <= status < 300
        if ok or "Wechatpay-Signature" in resp_headers:
            try:
                self.keyring.check_headers(resp_headers, answer)
            except SignatureError as exc:
                log.error("wechatpay_response_unverified", path=url.path, status=status, reason=str(exc))
                raise PayUnavailable(f"WeChat Pay answer failed verification: {exc}") from None
        if not ok:
            raise _business_error(url.path, status, answer)
        try:
            data = json.loads(answer) if answer else {}
        except ValueError:
            raise PayUnavailable("WeChat Pay answered malformed JSON") from None
        if not isinstance(data, dict):
            raise PayUnavailable("WeChat Pay answered malformed JSON")
        return data

    async def jsapi(self, **order: Any) -> str:
        """Create a JSAPI order; return its ``prepay_id``."""
        data = await self.request("POST", "/v3/pay/transactions/jsapi", {"mchid": self.merchant.mchid, **order})
        prepay_id = data.get("prepay_id")
        if not isinstance(prepay_id, str) or not prepay_id:
            raise PayUnavailable("WeChat Pay answered without prepay_id")
        return prepay_id

    async def query(self, out_trade_no: str) -> dict[str, Any]:
        return await self.request(
            "GET", f"/v3/pay/transactions/out-trade-no/{out_trade_no}?mchid={self.merchant.mchid}")

    async def close(self, out_trade_no: str) -> None:
        await self.request("POST", f"/v3/pay/transactions/out-trade-no/{out_trade_no}/close",
                           {"mchid": self.merchant.mchid})

    async def refund(self, **refund: Any) -> dict[str, Any]:
        return await self.request("POST", "/v3/refund/domestic/refunds", refund)

    async def query_refund(self, out_refund_no: str) -> dict[str, Any]:
        return await self.request("GET", f"/v3/refund/domestic/refunds/{out_refund_no}")


def _business_error(path: str, status: int, answer: bytes) -> PayError:
    """A non-2xx answer as WeChat's ``{code, message}``; a body that is not one still names its status."""
    try:
        data = json.loads(answer) if answer else {}
    except ValueError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    code, message = str(data.get("code") or f"HTTP_{status}")[:64], str(data.get("message") or "")[:300]
    if status == 401 or code == "SIGN_ERROR":
        # Our request's signature was refused: a configuration fault, not an outage.
        log.error("wechatpay_request_refused", path=path, status=status, code=code,
                  hint="check wechat.mchid, wechat.merchant_serial and wechat.merchant_private_key")
    else:
        log.warning("wechatpay_error_answer", path=path, status=status, code=code)
    return PayError(status, code, message)
