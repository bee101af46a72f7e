"""Joining the fleet: register with the gateway, stay registered, unregister on shutdown.

The loop runs as a background task owned by the app's ``cleanup_ctx``: startup hooks run
before the port listens, so registering there could announce a node that is not yet up.

- Registration retries with capped exponential backoff (with jitter) until it succeeds.
  A 409 (our address is registered to a node with another ``node_key``, e.g. after the
  state dir was lost) is logged as ``register_conflict`` with the gateway's instructions
  (an operator runs ``photogate-admin remove GPU-00N``), and retried every
  ``backoff_max`` s, so the node joins as a new id by itself once that is done.
- A stable ``node_key`` kept in the state dir makes the gateway hand back the same
  ``GPU-00N`` after a restart or an IP change.
- Every ``ip_check_interval`` s the advertised IP is read again; a change re-registers.
- Every ``gateway_check_interval`` s the node asks ``GET /webhook/servers`` whether the
  gateway still lists it (and not as ``offline``: unregistered by someone else); a gateway
  that lost its store, or lists it offline, gets a fresh registration.
  (An inference request carrying a token that is not ours is *not* a trigger: anyone
  can send one.)
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import structlog

log = structlog.get_logger("gpunode.registration")

IpSource = Callable[[], Awaitable[str]]
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)


def load_node_key(state_dir: Path) -> str:
    """The node's stable key, created (0600) on first use."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "node_key"
    try:
        key = path.read_text(encoding="utf-8").strip()
        if key:
            return key
    except FileNotFoundError:
        pass
    key = secrets.token_hex(16)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    os.replace(tmp, path)
    return key


def fixed_ip(ip: str) -> IpSource:
    async def source() -> str:
        return ip
    return source


def url_ip(session: aiohttp.ClientSession, url: str) -> IpSource:
    """An IP echo service of the operator's choosing (plain-text answer)."""
    async def source() -> str:
        async with session.get(url, timeout=REQUEST_TIMEOUT) as resp:
            resp.raise_for_status()
            return (await resp.text()).strip()
    return source


def route_ip(gateway_url: str) -> IpSource:
    """The local address the OS would use to reach the gateway (UDP connect sends nothing)."""
    parts = urlsplit(gateway_url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)

    async def source() -> str:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        family, _, _, _, addr = infos[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(addr)
            return str(s.getsockname()[0])
    return source


class Registrar:
    """Holds the registration state (server_id, node_token) and runs the loop."""

    def __init__(self, session: aiohttp.ClientSession, *, gateway_url: str, secret: str, port: int,
                 node_key: str, ip_source: IpSource, slots: int, model: str, scale: int,
                 queue_size: int = 0, ip_check_interval: float = 60.0, gateway_check_interval: float = 60.0,
                 backoff_initial: float = 1.0, backoff_max: float = 60.0) -> None:
        self.session = session
        self.gateway_url = gateway_url.rstrip("/")
        self._secret = secret
        self.port = port
        self.node_key = node_key
        self.ip_source = ip_source
        self.slots = slots
        self.queue_size = queue_size
        self.model = model
        self.scale = scale
        self.ip_check_interval = ip_check_interval
        self.gateway_check_interval = gateway_check_interval
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.server_id: str | None = None
        self.ip: str | None = None
        self._token: str | None = None
        self.registrations = 0
        self.attempts = 0
        #: The gateway answered 409: our address is another node's (see register_conflict).
        self.conflict = False
        self.registered = asyncio.Event()

    @property
    def token(self) -> str | None:
        return self._token

    async def _current_ip(self) -> str | None:
        try:
            return await self.ip_source()
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:  # noqa: UP041 - not TimeoutError on 3.10
            log.warning("ip_lookup_failed", error=str(exc))
            return None

    async def register_once(self, ip: str) -> bool:
        self.attempts += 1
        payload = {"ip": ip, "port": self.port, "secret": self._secret, "node_key": self.node_key,
                   "slots": self.slots, "queue_size": self.queue_size, "model": self.model, "scale": self.scale}
        try:
            async with self.session.post(f"{self.gateway_url}/webhook/register", json=payload,
                                         timeout=REQUEST_TIMEOUT) as resp:
                body = await resp.json(content_type=None) if resp.content_length != 0 else {}
                if resp.status != 200 or not isinstance(body, dict) or not body.get("success", True):
                    err = body.get("error") or body.get("message") if isinstance(body, dict) else None
                    if resp.status == 409:
                        # Our address belongs to a node with another key (we lost our state
                        # directory?). Only an operator can settle it; keep asking, slowly.
                        self.conflict = True
                        log.error("register_conflict", status=409, error=err, gateway=self.gateway_url,
                                  retry_in_s=self.backoff_max)
                    else:
                        log.warning("register_refused", status=resp.status, error=err, gateway=self.gateway_url)
                    return False
        except (asyncio.TimeoutError, aiohttp.ClientError, ValueError) as exc:  # noqa: UP041
            log.warning("register_failed", error=str(exc) or type(exc).__name__, gateway=self.gateway_url)
            return False
        server_id = body.get("server_id")
        token = body.get("node_token")
        if not server_id or not token:
            log.warning("register_answer_incomplete", has_server_id=bool(server_id), has_token=bool(token))
            return False
        previous = self.server_id
        self.conflict = False
        self.server_id, self._token, self.ip = str(server_id), str(token), ip
        self.registrations += 1
        self.registered.set()
        log.info("registered", server_id=self.server_id, ip=ip, port=self.port, previous_server_id=previous,
                 gateway=self.gateway_url)
        return True

    async def register_until_success(self) -> None:
        delay = self.backoff_initial
        while True:
            ip = await self._current_ip()
            if ip and await self.register_once(ip):
                return
            if self.conflict:  # nothing changes until an operator acts: no need to ask often
                delay = self.backoff_max
            wait = min(self.backoff_max, delay) * random.uniform(0.8, 1.2)
            log.info("register_retry", in_s=round(wait, 2))
            await asyncio.sleep(wait)
            delay = min(self.backoff_max, delay * 2)

    async def gateway_knows_us(self) -> bool | None:
        """True/False from ``GET /webhook/servers``; None when the gateway cannot tell."""
        try:
            async with self.session.get(f"{self.gateway_url}/webhook/servers",
                                        headers={"X-Webhook-Secret": self._secret},
                                        timeout=REQUEST_TIMEOUT) as resp:
                if resp.status != 200:
                    return None
                body = await resp.json(content_type=None)
        except (asyncio.TimeoutError, aiohttp.ClientError, ValueError):  # noqa: UP041
            return None
        data = body.get("data", body) if isinstance(body, dict) else None
        servers = data.get("servers") if isinstance(data, dict) else None
        if not isinstance(servers, list):
            return None
        for s in servers:
            if isinstance(s, dict) and s.get("server_id") == self.server_id:
                # Listed as offline: unregistered (kept with its id); registering brings it back.
                return (s.get("ip", self.ip) == self.ip and int(s.get("port", self.port)) == self.port
                        and s.get("status") != "offline")
        return False

    async def run(self) -> None:
        """Register, then keep the registration true; runs until cancelled."""
        await self.register_until_success()
        next_ip = time.monotonic() + self.ip_check_interval
        next_gw = time.monotonic() + self.gateway_check_interval if self.gateway_check_interval > 0 else float("inf")
        while True:
            now = time.monotonic()
            await asyncio.sleep(max(0.0, min(next_ip, next_gw) - now))
            now = time.monotonic()
            if now >= next_ip:
                next_ip = now + self.ip_check_interval
                ip = await self._current_ip()
                if ip and ip != self.ip:
                    log.info("ip_changed", old_ip=self.ip, new_ip=ip, server_id=self.server_id)
                    await self.register_until_success()
                    continue
            if now >= next_gw:
                next_gw = now + self.gateway_check_interval
                known = await self.gateway_knows_us()
                if known is False:
                    log.warning("gateway_forgot_node", server_id=self.server_id)
                    await self.register_until_success()

    async def unregister(self) -> bool:
        if not self.server_id:
            return False
        payload = {"ip": self.ip, "port": self.port, "secret": self._secret, "server_id": self.server_id,
                   "node_key": self.node_key}
        try:
            async with self.session.post(f"{self.gateway_url}/webhook/unregister", json=payload,
                                         timeout=aiohttp.ClientTimeout(total=5)) as resp:
                ok = resp.status == 200
                log.info("unregistered" if ok else "unregister_refused", server_id=self.server_id,
                         status=resp.status)
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:  # noqa: UP041
            log.warning("unregister_failed", server_id=self.server_id, error=str(exc) or type(exc).__name__)
            ok = False
        self._token = None
        self.registered.clear()
        return ok
