"""Typed application state keys."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from .config import NodeConfig
from .engines import EnhanceEngine
from .registration import IpSource, Registrar

CONFIG = web.AppKey("gpunode.config", NodeConfig)
HTTP = web.AppKey("gpunode.http", aiohttp.ClientSession)
ENGINE: web.AppKey[EnhanceEngine] = web.AppKey("gpunode.engine")
REGISTRAR = web.AppKey("gpunode.registrar", Registrar)
#: Where the advertised IP comes from; tests swap it to simulate an IP change.
IP_SOURCE: web.AppKey[IpSource] = web.AppKey("gpunode.ip_source")
REGISTRATION_TASK = web.AppKey("gpunode.registration_task", asyncio.Task)
