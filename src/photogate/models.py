"""Plain records shared by the stores, the registry and the API."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class TaskStatus(str, enum.Enum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


@dataclass
class NodeRecord:
    """What the registry persists about a node."""

    server_id: str
    ip: str
    port: int
    node_token: str
    node_key: str | None = None
    slots: int = 1
    weight: int = 1
    draining: bool = False
    #: Unregistered (DESIGN §9): kept with its id, key and address; no work, no probes.
    #: A registration that :func:`~photogate.identity.decide` gives this id brings it back.
    offline: bool = False
    registered_at: float = 0.0
    updated_at: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    @property
    def base_url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}"


@dataclass
class TaskRecord:
    task_id: str
    status: TaskStatus
    created_at: float
    updated_at: float
    input_mime: str
    input_bytes: int
    width: int
    height: int
    params: dict[str, Any] = field(default_factory=dict)
    server_id: str | None = None
    attempts: int = 0
    result_mime: str | None = None
    result_bytes: int | None = None
    error: str | None = None
    owner: str | None = None
    #: The owner's priority class (``access.classes``), decided at upload; None: the default class.
    priority_class: str | None = None
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6
