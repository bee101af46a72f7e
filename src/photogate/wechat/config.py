"""The ``wechat:`` section: mini-program login and WeChat Pay API v3, and its validation.

Imports nothing from the WeChat runtime, so the core :mod:`photogate.config` can hold this
section without loading the service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..config_fields import SECRET, ConfigError

#: Environment variables that override this section's keys: the secrets, and the merchant
#: settings that come with them.
WECHAT_ENV_OVERRIDES: dict[str, str] = {
    "WECHAT_APP_ID": "wechat.appid",
    "WECHAT_APP_SECRET": "wechat.secret",
    "WECHAT_MCH_ID": "wechat.mchid",
    "WECHAT_MCH_SERIAL": "wechat.merchant_serial",
    "WECHAT_MCH_PRIVATE_KEY": "wechat.merchant_private_key",
    "WECHAT_MCH_APIV3_KEY": "wechat.apiv3_key",
    "WECHAT_PAY_PUBLIC_KEY": "wechat.pay_public_key",
    "WECHAT_PAY_PUBLIC_KEY_ID": "wechat.pay_public_key_id",
}


@dataclass(frozen=True)
class WechatProduct:
    """A credit pack the mini program can buy: the client names it, never its price."""

    description: str = ""
    price_fen: int = 0
    credits: int = 0


@dataclass(frozen=True)
class WechatConfig:
    """Mini-program login and WeChat Pay API v3 (``photogate.wechat``); off while ``appid`` is empty."""

    appid: str = ""
    secret: str = field(default="", metadata=SECRET)
    #: /api/v1/enhance needs a WeChat session; tasks are visible to their owner only.
    login_enabled: bool = False
    #: Each enhancement costs ``credits_per_enhancement`` credits, bought with WeChat Pay.
    billing_enabled: bool = False
    #: The original mini program's openid-based calls (create, query, orders, stats) without
    #: our session token: anyone who knows an openid may list its orders (README).
    legacy_clients: bool = False
    credits_per_enhancement: int = 1
    session_ttl: float = 30 * 86400.0
    api_base: str = "https://api.weixin.qq.com"
    pay_base: str = "https://api.mch.weixin.qq.com"
    timeout: float = 10.0
    mchid: str = ""
    merchant_serial: str = ""
    merchant_private_key: str = field(default="", metadata=SECRET)  # path of apiclient_key.pem: not shown
    apiv3_key: str = field(default="", metadata=SECRET)
    pay_public_key: str = ""  # path of the WeChat Pay public key (pub_key.pem)
    pay_public_key_id: str = ""  # PUB_KEY_ID_...
    platform_certs: tuple[str, ...] = ()  # paths of WeChat Pay platform certificates (PEM)
    notify_url: str = ""
    order_ttl: float = 1800.0
    reconcile_interval: float = 300.0
    products: Mapping[str, WechatProduct] = field(default_factory=dict)


def validate_wechat_config(wx: WechatConfig) -> None:
    """Raise :class:`ConfigError` naming the first ``wechat.*`` key that is wrong."""
    if not wx.appid:
        if wx.login_enabled or wx.billing_enabled or wx.legacy_clients:
            raise ConfigError("wechat.appid: required when wechat.login_enabled, billing_enabled or "
                              "legacy_clients is true")
        return
    for ok, message in _checks(wx) + (_billing_checks(wx) if wx.billing_enabled else []):
        if not ok:
            raise ConfigError(message)
    for name, product in wx.products.items():
        _validate_product(name, product)


def _checks(wx: WechatConfig) -> list[tuple[bool, str]]:
    return [
        (bool(wx.secret), "wechat.secret: empty; set it in the config file or WECHAT_APP_SECRET"),
        (wx.api_base.startswith(("http://", "https://")), "wechat.api_base: must be an http(s) URL"),
        (wx.pay_base.startswith(("http://", "https://")), "wechat.pay_base: must be an http(s) URL"),
        (wx.session_ttl > 0, "wechat.session_ttl: must be > 0"),
        (wx.timeout > 0, "wechat.timeout: must be > 0"),
        (wx.credits_per_enhancement >= 1, "wechat.credits_per_enhancement: must be >= 1"),
        (wx.order_ttl >= 60, "wechat.order_ttl: must be >= 60 (WeChat needs a minute at least)"),
        (wx.reconcile_interval > 0, "wechat.reconcile_interval: must be > 0"),
        (bool(wx.pay_public_key) == bool(wx.pay_public_key_id),
         "wechat.pay_public_key: set both pay_public_key and pay_public_key_id, or neither"),
    ]


def _billing_checks(wx: WechatConfig) -> list[tuple[bool, str]]:
    return [
        (wx.login_enabled, "wechat.billing_enabled: needs wechat.login_enabled (credits belong to a user)"),
        (bool(wx.mchid), "wechat.mchid: required for billing (or WECHAT_MCH_ID)"),
        (bool(wx.merchant_serial), "wechat.merchant_serial: required for billing (or WECHAT_MCH_SERIAL)"),
        (bool(wx.merchant_private_key),
         "wechat.merchant_private_key: required for billing: the path of apiclient_key.pem"),
        (len(wx.apiv3_key.encode()) == 32, "wechat.apiv3_key: must be the 32-character APIv3 key"),
        (bool(wx.pay_public_key or wx.platform_certs),
         "wechat.pay_public_key: set it (and pay_public_key_id) or wechat.platform_certs to verify WeChat Pay"),
        (wx.notify_url.startswith(("http://", "https://")), "wechat.notify_url: must be an http(s) URL"),
        (bool(wx.products), "wechat.products: billing needs at least one product"),
        # An old client names a price (total_fee), not a product: each price must name one.
        (not wx.legacy_clients or len({p.price_fen for p in wx.products.values()}) == len(wx.products),
         "wechat.legacy_clients: each of wechat.products needs its own price_fen (old clients "
         "choose a product by its price, total_fee)"),
    ]


def _validate_product(name: str, product: WechatProduct) -> None:
    if not (1 <= len(name) <= 32 and name.replace("_", "").replace("-", "").isalnum() and name.isascii()):
        raise ConfigError(f"wechat.products.{name}: ids are 1-32 letters, digits, '-' or '_'")
    if product.price_fen < 1:
        raise ConfigError(f"wechat.products.{name}.price_fen: must be >= 1 (in fen: 100 = 1 yuan)")
    if product.credits < 1:
        raise ConfigError(f"wechat.products.{name}.credits: must be >= 1")
    if not 1 <= len(product.description) <= 127:
        raise ConfigError(f"wechat.products.{name}.description: 1 to 127 characters")
