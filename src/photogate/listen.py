"""The gateway's sockets, bound before the app runs, so that the port is known.

``server.port: 0`` (or ``--port 0``) takes a free port; the port really bound is what the
``gateway_listening`` log line reports. Binding ourselves and handing the sockets to aiohttp
(``run_app(sock=...)``) is what makes that port knowable: aiohttp's own site reports only the
port it was asked for. They are bound, not listening: asyncio listens once the app has started,
so until then a connection is refused, as before.
"""

from __future__ import annotations

import os
import socket


def bind(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address ``host`` resolves to, all on one port (as asyncio's
    ``create_server`` binds them, but with port 0 resolved once: the same free port for all)."""
    infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            if os.name == "posix":  # a restart rebinds at once; elsewhere SO_REUSEADDR lets ports be stolen
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # one socket per family, as asyncio does
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:
                address = (address[0], bound_port(sockets[:1]), *address[2:])
            sock.bind(address)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def bound_port(sockets: list[socket.socket]) -> int:
    return int(sockets[0].getsockname()[1])
