"""Who may submit, pay for and see a task: the hooks the public API and the dispatcher call.

Two levels. An :class:`AccessPolicy` is a login scheme: the default is the open policy of the
earlier gateway (anyone may upload, nothing is charged, every task is visible by its id);
``photogate.wechat`` installs its own (login, credits, owner-only visibility) by setting
:data:`ACCESS` in ``create_app``. :class:`GatewayAccess` (what the public API calls, under
:data:`ADMISSION`) puts API keys in front of that policy and names every upload's owner and
priority class: ``key:<id>`` and the key's class for ``Authorization: Bearer pk_...``; the
openid and ``access.wechat_paid_class`` (with credits) or ``access.default_class`` for a WeChat
session; ``ip:<client address>`` and ``access.default_class`` on the open API.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from .access_config import AccessConfig
from .apikeys.protocol import KeyRecord
from .apikeys.service import KEY_LENGTH, PREFIX, ApiKeys
from .errors import PhotogateError, Unauthorized
from .models import TaskRecord
from .netutil import bearer, client_ip


class PaymentRequired(PhotogateError):
    """The user has no credits left for another enhancement."""

    status = 402


class AccessPolicy(Protocol):
    #: Whether :meth:`charge` may charge anything (when not, an upload is recorded in fewer steps).
    charges: bool

    async def admit(self, request: web.Request) -> str | None:
        """The request's owner (``None``: anonymous); raise ``Unauthorized`` when a login is required."""

    async def charge(self, owner: str | None, task_id: str) -> None:
        """Pay for ``task_id`` atomically when it is accepted; raise :class:`PaymentRequired` if it cannot be."""

    async def refund(self, owner: str | None, task_id: str) -> None:
        """Give back what ``charge`` took for a task that failed; idempotent."""

    def can_view(self, owner: str | None, task: TaskRecord) -> bool:
        """Whether ``owner`` may see the task's status and download its result."""

    async def paid(self, owner: str) -> bool:
        """Whether ``owner`` (admitted by :meth:`admit`) has paid: it goes in the paid class."""


class OpenAccess:
    """Anyone may upload; nothing is charged; a task id is the only credential."""

    charges = False

    async def admit(self, request: web.Request) -> str | None:
        return None

    async def charge(self, owner: str | None, task_id: str) -> None:
        return None

    async def refund(self, owner: str | None, task_id: str) -> None:
        return None

    def can_view(self, owner: str | None, task: TaskRecord) -> bool:
        return True

    async def paid(self, owner: str) -> bool:
        return False


OPEN_ACCESS = OpenAccess()
ACCESS = web.AppKey("access", AccessPolicy)


NOT_A_KEY = "this API key is not valid; ask the operator for a key"
KEY_HINT = "this API needs a key: send Authorization: Bearer pk_... (ask the operator for one)"


@dataclass(frozen=True)
class Admission:
    """Who a request is, as :meth:`GatewayAccess.admit` decided."""

    #: The task owner: ``key:<id>``, an openid, or ``ip:<address>`` (``None``: not named).
    owner: str | None = None
    #: The priority class of its uploads (``None``: not decided, e.g. for a status poll).
    priority_class: str | None = None
    #: The API key the request came with.
    key: KeyRecord | None = None
    #: The owner as the login policy knows it (an openid; ``None`` for keys and the open API).
    session: str | None = None
    #: Whether :meth:`GatewayAccess.charge` has anything to count or take for an upload.
    charges: bool = False


class GatewayAccess:
    """API keys in front of the login policy (open or WeChat), the owner and class of uploads,
    per-key quotas. No key is cached: each request with a key looks it up, so a revoke holds at
    once on every gateway."""

    def __init__(self, policy: AccessPolicy, cfg: AccessConfig, trusted_proxies: Sequence[str] = ()) -> None:
        self.policy = policy
        self.cfg = cfg
        self.trusted_proxies = tuple(trusted_proxies)
        #: Set once the store is open (``lifecycle``); until then no key is valid.
        self.keys: ApiKeys | None = None

    async def admit(self, request: web.Request, *, upload: bool = False) -> Admission:
        """The request's owner (and, for an ``upload``, its class); 401 for a wrong or revoked
        key, or for no key at all when ``access.require_key`` is on (a WeChat session passes)."""
        token = bearer(request)
        looks_like_key = token is not None and token.startswith(PREFIX)
        # Only a token of a key's length is looked up as one: a WeChat session token (43
        # characters) that happens to start with pk_ is still a session.
        if looks_like_key and token is not None and len(token) == KEY_LENGTH:
            if self.keys is None:
                raise Unauthorized("API keys are not available yet; try again in a moment")
            record = await self.keys.authenticate(token)
            if upload:
                self.keys.check(record)  # used up: refused before the photo is read
            # Every key's uploads are counted (its day's use shows in the key list), quota or not.
            return Admission(f"key:{record.id}", record.priority_class, record, charges=True)
        openid = await self.policy.admit(request)
        if openid is not None:  # a WeChat session: the user owns its tasks
            paid = upload and await self.policy.paid(openid)
            klass = (self.cfg.wechat_paid_class if paid else self.cfg.default_class) if upload else None
            return Admission(openid, klass, session=openid, charges=self.policy.charges)
        if looks_like_key:
            raise Unauthorized(NOT_A_KEY, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if self.cfg.require_key:
            raise Unauthorized(KEY_HINT, headers={"WWW-Authenticate": "Bearer"})
        return Admission(f"ip:{client_ip(request, self.trusted_proxies)}", self.cfg.default_class,
                         charges=self.policy.charges)

    async def charge(self, who: Admission, task_id: str, megapixels: float) -> Callable[[], Awaitable[None]]:
        """Count the upload against its key's quota (429 when used up), or charge it as the
        login policy does (WeChat credits). Returns what gives it back if the upload is refused
        after all (a full queue, the store failing)."""
        if who.key is None:
            await self.policy.charge(who.session, task_id)
            return lambda: self.policy.refund(who.session, task_id)
        assert self.keys is not None, "a key was admitted before the key records opened"
        keys, counted = self.keys, await self.keys.consume(who.key, megapixels)
        return lambda: keys.give_back(counted)

    def can_view(self, who: Admission, task: TaskRecord) -> bool:
        """A key's tasks are seen only with that key; the rest as the login policy says."""
        if who.key is not None or (task.owner or "").startswith("key:"):
            return task.owner == who.owner
        return self.policy.can_view(who.session, task)


ADMISSION = web.AppKey("admission", GatewayAccess)


def access_policy(app: web.Application) -> GatewayAccess:
    """What the public API asks: the app's :class:`GatewayAccess` (one over the open policy
    when none was installed)."""
    access = app.get(ADMISSION)
    if access is None:
        access = GatewayAccess(app.get(ACCESS, OPEN_ACCESS), AccessConfig())
    return access
