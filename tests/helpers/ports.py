"""Ports: a free one, one that refuses, one a child process reported, a bound socket."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    """A port that was free a moment ago. Racy (another process may take it before the child
    binds it): only for servers that cannot bind port 0 themselves (redis-server, a README
    command naming a port), which then retry on EADDRINUSE. Children that can, bind 0 and
    report (:func:`reported_port`)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_socket() -> socket.socket:
    """A TCP socket bound to an ephemeral loopback port, not yet listening: hand it to a server
    in this process (``web.SockSite``), no race."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port where a connection is refused, for as long as the block runs: bound here
    and never listening, so no other process can take it and listen."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def reported_port(log: Path, event: str, offset: int = 0) -> int | None:
    """The port a child process bound (``--port 0``) and reported in its JSON log line ``event``
    (``gateway_listening`` for photogate, ``starting`` for gpunode), written after byte ``offset``."""
    try:
        with log.open("rb") as fh:
            fh.seek(offset)
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event and "port" in record:
            return int(record["port"])
    return None
