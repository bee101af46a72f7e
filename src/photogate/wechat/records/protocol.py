"""What the WeChat service asks of its records: users and sessions, orders and refunds,
credit charges for tasks. :class:`WechatRecords` is the interface; :class:`Order` and the
order states are the records' shape, the same in every backend.

Every credit change is one atomic step in the backend (a ``BEGIN IMMEDIATE`` transaction in
SQLite, one Lua script in Redis), so a credit is never granted or spent twice, whatever
arrives at which gateway.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

#: Order states. ``created`` is written before WeChat is called, so a notification or a
#: query always finds the order; ``failed``: WeChat refused to create it.
CREATED, FAILED, PAID, CLOSED, REFUNDING, REFUNDED = "created", "failed", "paid", "closed", "refunding", "refunded"


@dataclass
class Order:
    out_trade_no: str
    openid: str
    product: str
    description: str
    amount: int
    currency: str
    credits: int
    state: str
    prepay_id: str | None = None
    transaction_id: str | None = None
    error: str | None = None
    out_refund_no: str | None = None
    refund_id: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    paid_at: float | None = None

    def public(self) -> dict[str, Any]:
        """What the mini program sees (no prepay_id: it is only good for paying this order)."""
        data = asdict(self)
        del data["prepay_id"], data["openid"], data["error"]
        return data


class WechatRecords(Protocol):
    """WeChat users, sessions, orders, refunds and credit charges, in the gateway's store.

    Each method returns an awaitable (a backend may wrap its coroutines, e.g. to turn a Redis
    error into a 503)."""

    def create_schema(self) -> Awaitable[None]: ...

    # -- users and sessions
    def login(self, openid: str, unionid: str | None, token_hash: str, ttl: float) -> Awaitable[None]:
        """Create the user (0 credits) or note the login; store the session ``ttl`` seconds."""
    def session_openid(self, token_hash: str) -> Awaitable[str | None]:
        """The openid of a live session."""
    def purge_sessions(self) -> Awaitable[int]:
        """Drop expired sessions; how many."""
    def credits(self, openid: str) -> Awaitable[int]: ...

    # -- orders and refunds
    def insert_order(self, order: Order) -> Awaitable[None]: ...
    def update_order(self, out_trade_no: str, **changes: str | None) -> Awaitable[None]:
        """Set an order's fields (``None`` clears one) and its ``updated_at``."""
    def get_order(self, out_trade_no: str) -> Awaitable[Order | None]: ...
    def user_orders(self, openid: str, limit: int = 20) -> Awaitable[list[Order]]:
        """The user's orders, newest first."""
    def stale_orders(self, before: float, limit: int = 100) -> Awaitable[list[Order]]:
        """Orders still ``created`` since before ``before``: the reconciler asks WeChat about them."""
    def pending_refunds(self, before: float, limit: int = 100) -> Awaitable[list[Order]]:
        """Orders ``refunding`` since before ``before``: the refund sweep asks WeChat about them."""
    def mark_paid(self, out_trade_no: str, transaction_id: str) -> Awaitable[bool]:
        """Mark the order paid and grant its credits, once: ``True`` only for the call that did it.
        A ``closed`` or ``failed`` order may still be paid (WeChat took the money): credit it."""
    def mark_closed(self, out_trade_no: str) -> Awaitable[bool]:
        """``created`` → ``closed``; ``True`` if it was ``created``."""
    def begin_refund(self, out_trade_no: str, out_refund_no: str, force: bool) -> Awaitable[str]:
        """Take the order's credits back and mark it ``refunding``. Returns ``ok``, ``state`` (not
        paid) or ``spent`` (the user has fewer credits left than the order granted, and not ``force``)."""
    def undo_refund(self, out_trade_no: str, error: str) -> Awaitable[None]:
        """WeChat refused the refund: the order is paid again and its credits come back."""
    def refund_succeeded(self, out_trade_no: str, refund_id: str) -> Awaitable[tuple[int, int] | None]:
        """WeChat reports the order refunded: mark it ``refunded``, once. A ``paid`` order (refunded
        in the merchant console) gives back its credits, or what the user has left, the shortfall
        recorded. Returns ``(taken, shortfall)``; ``None`` if refunded already or unknown."""

    # -- credits for tasks
    def charge(self, openid: str, task_id: str, amount: int) -> Awaitable[bool]:
        """Spend ``amount`` credits on ``task_id``; ``False`` (nothing changed) if the user has too few."""
    def refund_charge(self, task_id: str) -> Awaitable[int]:
        """Give a task's credits back, once; the credits given back (0 if done already or none)."""
    def failed_charged_tasks(self) -> Awaitable[list[str]]:
        """Tasks that failed while their charge stands (a crash between the two): to refund."""
    def user_tasks(self, openid: str, limit: int = 20) -> Awaitable[list[dict[str, Any]]]:
        """The user's tasks, newest first, as ``/api/wechat/user`` shows them."""
