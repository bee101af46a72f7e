"""The WeChat access policy: sessions from ``/api/wechat/login``, credits, owner-only tasks."""

from __future__ import annotations

import structlog
from aiohttp import web

from ..access import PaymentRequired
from ..errors import Forbidden, Unauthorized
from ..models import TaskRecord
from ..netutil import bearer
from .config import WechatConfig
from .service import WechatService

log = structlog.get_logger("photogate.wechat.access")

LOGIN_HINT = "log in with WeChat first: POST /api/wechat/login {code}, then send Authorization: Bearer <token>"


class WechatAccess:
    """:class:`photogate.access.AccessPolicy` backed by WeChat sessions and credits."""

    def __init__(self, service: WechatService, cfg: WechatConfig) -> None:
        self.service = service
        self.cfg = cfg
        #: Whether :meth:`charge` charges anything (``wechat.billing_enabled``; the config is frozen).
        self.charges = cfg.billing_enabled

    async def session(self, request: web.Request) -> str | None:
        """The openid of the request's valid session, if any."""
        token = bearer(request)
        return await self.service.session_openid(token) if token else None

    async def require(self, request: web.Request) -> str:
        openid = await self.session(request)
        if openid is None:
            expired = bearer(request) is not None
            raise Unauthorized("your session has expired; log in again" if expired else LOGIN_HINT,
                               headers={"WWW-Authenticate": "Bearer"})
        return openid

    async def caller(self, request: web.Request, claimed: str | None) -> str:
        """The openid a pay call acts for: the session's (an ``openid`` the call names must be
        the same); without a session, the named one when ``wechat.legacy_clients`` is on."""
        openid = await self.session(request)
        if openid is not None:
            if claimed is not None and claimed != openid:
                raise Forbidden("this openid is not the one you logged in as")
            return openid
        if claimed is not None and self.cfg.legacy_clients and bearer(request) is None:
            # Counted in the log so an operator sees when the old mini program is gone.
            log.info("wechat_legacy_call", openid=claimed, path=request.path)
            return claimed
        return await self.require(request)  # raises: expired session, or none

    async def admit(self, request: web.Request) -> str | None:
        if self.cfg.login_enabled:
            return await self.require(request)
        # Login optional: a logged-in user still owns the tasks (they appear in /api/wechat/user).
        return await self.session(request)

    async def charge(self, owner: str | None, task_id: str) -> None:
        if not self.cfg.billing_enabled:
            return
        if owner is None:
            raise Unauthorized(LOGIN_HINT, headers={"WWW-Authenticate": "Bearer"})
        if not await self.service.charge(owner, task_id):
            raise PaymentRequired(
                f"not enough credits: an enhancement costs {self.cfg.credits_per_enhancement}; "
                "buy a pack with POST /api/wechat/pay/create {product}"
            )

    async def refund(self, owner: str | None, task_id: str) -> None:
        # Only a WeChat user's tasks were charged credits (not an API key's, not the open API's).
        if owner is not None and not owner.startswith(("key:", "ip:")):
            await self.service.refund_task(task_id)

    async def paid(self, owner: str) -> bool:
        """A user with credits left goes in ``access.wechat_paid_class``."""
        return await self.service.records.credits(owner) > 0

    def can_view(self, owner: str | None, task: TaskRecord) -> bool:
        if not self.cfg.login_enabled:
            return True
        return task.owner is not None and task.owner == owner
