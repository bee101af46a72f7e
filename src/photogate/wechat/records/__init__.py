"""WeChat users, sessions, orders, refunds and credit charges: :class:`WechatRecords` and its
two backends, :mod:`.sqlite` and :mod:`.redis`; ``storage.factory`` opens the one that goes with
the gateway's state store."""

from __future__ import annotations

from .protocol import WechatRecords

__all__ = ["WechatRecords"]
