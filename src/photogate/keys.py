"""Typed application keys."""

from aiohttp import web

from .gateway import Gateway

GATEWAY = web.AppKey("gateway", Gateway)
