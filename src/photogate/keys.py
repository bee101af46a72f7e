"""Typed application keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from .gateway import Gateway

#: Typed by a TYPE_CHECKING import: importing a handler module must not load the gateway.
GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")
