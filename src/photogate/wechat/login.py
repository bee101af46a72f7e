"""Mini-program login (``jscode2session``) and the server ``access_token`` (``stable_token``).

WeChat's ``session_key`` is read and dropped here: it never reaches a client, a log
line or the database. The caller gets our own opaque session token instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from ..errors import (
    BadRequest,
    Forbidden,
    PhotogateError,
    ServiceUnavailable,
    TooManyRequests,
)
from .config import WechatConfig

log = structlog.get_logger("photogate.wechat.login")

#: Refresh the access_token this many seconds before WeChat says it expires.
TOKEN_MARGIN = 300
#: errcodes meaning "this access_token is no longer good": refresh and retry once.
STALE_TOKEN = frozenset({40001, 42001})


class UpstreamError(PhotogateError):
    """WeChat answered with an error we cannot map to the client's fault."""

    status = 502


@dataclass(frozen=True)
class Identity:
    openid: str
    unionid: str | None = None


def _login_error(errcode: int, errmsg: str) -> PhotogateError:
    if errcode in (40029, 40163):
        return BadRequest("the login code is invalid or was already used; call wx.login() again for a new one")
    if errcode == 45011:
        return TooManyRequests("too many logins from this user; try again in a minute", headers={"Retry-After": "60"})
    if errcode == 40226:
        return Forbidden("WeChat reports this user as blocked (high-risk); login refused")
    if errcode == -1:
        return ServiceUnavailable("WeChat is busy; try again in a moment", headers={"Retry-After": "5"})
    return UpstreamError(f"WeChat refused the login (errcode {errcode}: {errmsg[:100]})")


class WechatApi:
    """Calls to ``api.weixin.qq.com`` (or the configured ``api_base``)."""

    def __init__(self, session: aiohttp.ClientSession, cfg: WechatConfig,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.session = session
        self.cfg = cfg
        self.base = cfg.api_base.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=cfg.timeout)
        self.clock = clock
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = asyncio.Lock()

    async def _json(self, method: str, path: str, *, params: Mapping[str, str] | None = None,
                    body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        # Never log the URL or the exception text: the query holds the secret or the token.
        try:
            async with self.session.request(method, self.base + path, params=params, json=body,
                                            timeout=self.timeout, allow_redirects=False) as resp:
                if resp.status != 200:
                    return {"errcode": -1, "errmsg": f"HTTP {resp.status}"}
                data = await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            return {"errcode": -1, "errmsg": type(exc).__name__}
        return data if isinstance(data, dict) else {"errcode": -1, "errmsg": "malformed answer"}

    async def code2session(self, code: str) -> Identity:
        """Exchange a ``wx.login()`` code for the user's openid; one retry when WeChat is busy."""
        params = {"appid": self.cfg.appid, "secret": self.cfg.secret, "js_code": code,
                  "grant_type": "authorization_code"}
        for attempt in (1, 2):
            data = await self._json("GET", "/sns/jscode2session", params=params)
            errcode = int(data.get("errcode") or 0)
            if errcode == 0 and isinstance(data.get("openid"), str) and data["openid"]:
                unionid = data.get("unionid")
                return Identity(data["openid"], unionid if isinstance(unionid, str) else None)
            errcode = errcode or -1
            log.warning("wechat_login_refused", errcode=errcode, errmsg=str(data.get("errmsg", ""))[:100],
                        attempt=attempt)
            if errcode != -1:
                break
        raise _login_error(errcode, str(data.get("errmsg", "")))

    # -- access_token -------------------------------------------------------------------------

    async def access_token(self, *, stale: str | None = None) -> str:
        """The cached ``access_token``; one refresh in flight however many callers need it.

        ``stale``: a token WeChat just refused; it is replaced unless someone already did.
        """
        if self._token and self._token != stale and self.clock() < self._token_expires - TOKEN_MARGIN:
            return self._token
        async with self._token_lock:
            if self._token and self._token != stale and self.clock() < self._token_expires - TOKEN_MARGIN:
                return self._token
            data = await self._json("POST", "/cgi-bin/stable_token", body={
                "grant_type": "client_credential", "appid": self.cfg.appid, "secret": self.cfg.secret,
                "force_refresh": False,
            })
            token = data.get("access_token")
            if not isinstance(token, str) or not token:
                log.error("wechat_access_token_failed", errcode=data.get("errcode"),
                          errmsg=str(data.get("errmsg", ""))[:100])
                raise ServiceUnavailable("WeChat access_token unavailable; try again later")
            self._token, self._token_expires = token, self.clock() + float(data.get("expires_in") or 7200)
            log.info("wechat_access_token_refreshed", expires_in=data.get("expires_in"))
            return token

    async def call(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST a server API that takes ``?access_token=``; one retry with a fresh token on 40001/42001."""
        token = await self.access_token()
        data = await self._json("POST", path, params={"access_token": token}, body=body)
        if int(data.get("errcode") or 0) in STALE_TOKEN:
            log.info("wechat_access_token_stale", errcode=data.get("errcode"))
            token = await self.access_token(stale=token)
            data = await self._json("POST", path, params={"access_token": token}, body=body)
        return data
