"""Typed application keys."""

from aiohttp import web

from .service import Gateway

GATEWAY = web.AppKey("gateway", Gateway)
