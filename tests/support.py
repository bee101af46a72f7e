"""The import point most tests use (``from support import make_config, wait_until``): the
names of :mod:`helpers` that tests share, re-exported. New shared code goes in ``helpers/``."""

from __future__ import annotations

from helpers.fake_node import FakeNode, node_factory
from helpers.gateway import ADMIN_TOKEN, LOOPBACK_NODES, REPO, Gateway, make_config
from helpers.photos import image_bytes
from helpers.polling import wait_until
from helpers.ports import free_port, refused_port, reported_port
from helpers.processes import ChildProcess, GatewayProcess
from helpers.public_api import SECRET
from helpers.raw_http import read_http_answer

__all__ = [
    "node_factory",
    "ADMIN_TOKEN",
    "LOOPBACK_NODES",
    "REPO",
    "SECRET",
    "ChildProcess",
    "FakeNode",
    "Gateway",
    "GatewayProcess",
    "free_port",
    "image_bytes",
    "make_config",
    "read_http_answer",
    "reported_port",
    "refused_port",
    "wait_until",
]
