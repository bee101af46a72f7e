"""Who may submit, pay for and see a task: the hooks the public API and the dispatcher call.

The default is the open policy of the earlier gateway: anyone may upload, nothing is
charged, every task is visible by its id. ``photogate.wechat`` installs the real one
(login, credits, owner-only visibility) by setting :data:`ACCESS` in ``create_app``.
"""

from __future__ import annotations

from typing import Protocol

from aiohttp import web

from .errors import PhotogateError
from .models import TaskRecord


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


OPEN_ACCESS = OpenAccess()
ACCESS = web.AppKey("access", AccessPolicy)


def access_policy(app: web.Application) -> AccessPolicy:
    """The app's policy: the one set under :data:`ACCESS`, else the open one."""
    return app.get(ACCESS, OPEN_ACCESS)
