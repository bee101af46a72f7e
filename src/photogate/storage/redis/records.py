"""Tasks and nodes as Redis holds them: a task is a hash of strings, a node a JSON record."""

from __future__ import annotations

import json
from typing import Any

from redis.typing import EncodableT, FieldT

from ...models import NodeRecord, TaskRecord, TaskStatus

_FLOATS = ("created_at", "updated_at", "started_at", "finished_at")
_INTS = ("input_bytes", "width", "height", "attempts", "result_bytes")
#: Task fields stored only when set (an absent field reads back as None).
_OPTIONAL = ("server_id", "result_mime", "result_bytes", "error", "owner", "started_at", "finished_at",
             "priority_class")
FINISHED = (TaskStatus.COMPLETED.value, TaskStatus.FAILED.value)


def field_text(value: object) -> str | None:
    """A task field as its hash stores it (None: the field is absent)."""
    if value is None:
        return None
    if isinstance(value, TaskStatus):
        return value.value
    if isinstance(value, float):
        return repr(value)
    return str(value)


def task_hash(task: TaskRecord) -> dict[FieldT, EncodableT]:
    """The task's hash (``HSET`` mapping)."""
    fields: dict[FieldT, EncodableT] = {
        "task_id": task.task_id, "status": task.status.value, "created_at": repr(task.created_at),
        "updated_at": repr(task.updated_at), "input_mime": task.input_mime, "input_bytes": str(task.input_bytes),
        "width": str(task.width), "height": str(task.height), "params": json.dumps(task.params),
        "attempts": str(task.attempts),
    }
    for name in _OPTIONAL:
        value = field_text(getattr(task, name))
        if value is not None:
            fields[name] = value
    return fields


def task_from_hash(data: dict[str, str]) -> TaskRecord:
    values: dict[str, Any] = dict(data)
    for name in _FLOATS:
        if name in values:
            values[name] = float(values[name])
    for name in _INTS:
        if name in values:
            values[name] = int(values[name])
    values["status"] = TaskStatus(values["status"])
    values["params"] = json.loads(values.get("params") or "{}")
    return TaskRecord(**values)


def node_from_json(raw: str) -> tuple[int, NodeRecord]:
    """``(ordinal, record)`` of a node's JSON record."""
    data = json.loads(raw)
    info = data.get("info")
    record = NodeRecord(
        server_id=data["server_id"], ip=data["ip"], port=int(data["port"]), node_token=data["node_token"],
        node_key=data.get("node_key"), slots=int(data.get("slots") or 1), weight=int(data.get("weight") or 1),
        draining=bool(data.get("draining")), offline=bool(data.get("offline")),
        registered_at=float(data.get("registered_at") or 0),
        updated_at=float(data.get("updated_at") or 0), info=info if isinstance(info, dict) else {},
    )
    return int(data.get("ordinal") or 0), record
