"""The HTTP client of ``photogate-admin``: settings from the arguments and the environment,
requests to one gateway, and every failure mapped to a :class:`~.errors.CliError` (and so
to an exit status): transport failures to :class:`~.errors.Unreachable` (3), error answers
to :class:`~.errors.Refused` (1) with the gateway's own message.

Redirects are never followed: a request may carry the webhook secret or the admin token.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from .errors import Refused, Unreachable, UsageError

DEFAULT_GATEWAY = "http://127.0.0.1:8080"

#: Which credential a request carries: the webhook secret, the admin token, or none.
Auth = Literal["secret", "admin"] | None


@dataclass(frozen=True)
class Settings:
    gateway: str
    secret: str | None
    admin_token: str | None
    json: bool
    timeout: float


def settings(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """The global options (absent from ``args`` when not given), then the environment, then defaults."""
    gateway = (getattr(args, "gateway", None) or env.get("GATEWAY_URL") or DEFAULT_GATEWAY).rstrip("/")
    if not gateway.startswith(("http://", "https://")):
        raise UsageError(f"--gateway: expected an http:// or https:// URL, got {gateway!r}")
    return Settings(
        gateway=gateway,
        secret=getattr(args, "secret", None) or env.get("WEBHOOK_SECRET") or env.get("SHARED_SECRET") or None,
        admin_token=getattr(args, "admin_token", None) or env.get("PHOTOGATE_ADMIN_TOKEN") or None,
        json=getattr(args, "json", False),
        timeout=getattr(args, "timeout", 30.0),
    )


class Client:
    """Requests to one gateway. Maps every transport failure to :class:`Unreachable`
    and every error answer to :class:`Refused`, with the gateway's own message."""

    def __init__(self, session: aiohttp.ClientSession, config: Settings) -> None:
        self.session = session
        self.config = config

    def secret(self) -> str:
        if not self.config.secret:
            raise UsageError("this command needs the webhook secret: --secret, $WEBHOOK_SECRET or $SHARED_SECRET")
        return self.config.secret

    def admin_token(self) -> str:
        if not self.config.admin_token:
            raise UsageError("this command needs the admin token: --admin-token, or $PHOTOGATE_ADMIN_TOKEN")
        return self.config.admin_token

    def _headers(self, auth: Auth) -> dict[str, str]:
        if auth == "secret":
            return {"X-Webhook-Secret": self.secret()}
        if auth == "admin":
            return {"Authorization": f"Bearer {self.admin_token()}"}
        return {}

    async def call(self, method: str, path: str, *, auth: Auth = None, **kwargs: Any) -> dict[str, Any]:
        """One request whose answer is a JSON object."""
        async with self.open(method, path, auth=auth, **kwargs) as resp:
            raw = await self._read(resp)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise Refused(f"{self.config.gateway}{path} answered HTTP {resp.status} with something that is not "
                          "JSON; is --gateway the photogate address?", http_status=resp.status) from None
        if not isinstance(body, dict):
            raise Refused(f"{self.config.gateway}{path} answered with JSON that is not an object",
                          http_status=resp.status)
        return body

    def open(self, method: str, path: str, *, auth: Auth = None, **kwargs: Any) -> Response:
        """``async with client.open(...) as resp``: a 2xx response (read it under
        :meth:`transport_errors`), or the right :class:`~.errors.CliError`."""
        return Response(self, method, path, self._headers(auth), kwargs)

    @contextmanager
    def transport_errors(self) -> Iterator[None]:
        """Turn aiohttp's failures inside the block into the operator's messages."""
        try:
            yield
        except aiohttp.InvalidURL:
            raise UsageError(f"--gateway: not a valid URL: {self.config.gateway!r}") from None
        except asyncio.TimeoutError:  # before ClientError: ServerTimeoutError is both
            raise self._timed_out() from None
        except aiohttp.ClientError as exc:
            raise self._unreachable(exc) from None

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        with self.transport_errors():
            return await resp.read()

    def _unreachable(self, exc: aiohttp.ClientError) -> Unreachable:
        url = self.config.gateway
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            reason = f"its TLS certificate was not accepted: {exc.certificate_error}"
            return Unreachable(f"cannot reach the gateway at {url}: {reason}", gateway=url, reason=reason)
        if isinstance(exc, aiohttp.ClientSSLError):
            reason = f"TLS handshake failed: {exc.os_error}"
            return Unreachable(f"cannot reach the gateway at {url}: {reason}", gateway=url, reason=reason)
        if isinstance(exc, aiohttp.ClientConnectorError):
            err = exc.os_error
            # errno gives "Connection refused" where strerror says "Connect call failed (...)";
            # DNS errors have negative codes and a good strerror.
            reason = os.strerror(err.errno) if err.errno and err.errno > 0 else (err.strerror or str(exc))
            return Unreachable(f"cannot reach the gateway at {url}: {reason}", gateway=url, reason=reason)
        reason = str(exc) or type(exc).__name__
        return Unreachable(f"lost the connection to the gateway at {url}: {reason}", gateway=url, reason=reason)

    def _timed_out(self) -> Unreachable:
        url, seconds = self.config.gateway, self.config.timeout
        return Unreachable(f"no answer from the gateway at {url} within {seconds:g} s (--timeout)",
                           gateway=url, reason="timeout")

    async def refusal(self, resp: aiohttp.ClientResponse, path: str) -> Refused:
        """The error answer ``resp`` as a :class:`Refused` with the gateway's message."""
        raw = await self._read(resp)
        try:
            message = json.loads(raw).get("error")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            message = None
        if not isinstance(message, str) or not message:
            message = f"HTTP {resp.status} {resp.reason or ''} from {self.config.gateway}{path}".strip()
        return Refused(message, http_status=resp.status)


class Response:
    """``async with client.open(...) as resp``: a 2xx response, or the right CliError."""

    def __init__(self, client: Client, method: str, path: str, headers: dict[str, str], kwargs: dict[str, Any]) -> None:
        self.client, self.method, self.path, self.headers, self.kwargs = client, method, path, headers, kwargs
        self.resp: aiohttp.ClientResponse | None = None

    async def __aenter__(self) -> aiohttp.ClientResponse:
        client = self.client
        url = client.config.gateway + self.path
        with client.transport_errors():
            # Never follow a redirect: it could carry the secret or the token to another host.
            self.resp = await client.session.request(
                self.method, url, headers=self.headers, allow_redirects=False, **self.kwargs
            )
        resp = self.resp
        try:
            if 300 <= resp.status < 400:
                where = resp.headers.get("Location", "?")
                raise Refused(f"the gateway answered with a redirect ({resp.status}) to {where}; not followed because "
                              "the request carries credentials: point --gateway at the final address",
                              http_status=resp.status, location=where)
            if resp.status >= 400:
                raise await client.refusal(resp, self.path)
        except BaseException:
            resp.release()
            raise
        return resp

    async def __aexit__(self, *exc: object) -> None:
        if self.resp is not None:
            self.resp.release()
