"""Domain errors; one middleware in ``app.py`` turns them into JSON ``{"error": ...}``."""

from __future__ import annotations


class NodeError(Exception):
    """Base class: ``status`` is the HTTP status the client sees."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadImage(NodeError):
    """The image or the request parameters cannot be used (the gateway fails the task)."""

    status = 400


class UnsupportedImage(NodeError):
    """The body is not an image format the node reads."""

    status = 415


class Unauthorized(NodeError):
    status = 401


class QueueFull(NodeError):
    """Every slot is busy and the bounded queue is full: the gateway should try elsewhere."""

    status = 503
