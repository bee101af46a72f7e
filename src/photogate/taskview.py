"""How a task is shown: the status answer clients poll, and the timings operators read.

The public API, the admin API and the dashboard all describe tasks with these."""

from __future__ import annotations

import re
from typing import Any

from .estimates import Estimate
from .models import TaskRecord, TaskStatus

#: A task id as ``enhance`` makes it (``secrets.token_hex(16)``); anything else is no task.
TASK_ID = re.compile(r"^[0-9a-f]{32}$")
MESSAGES = {
    TaskStatus.QUEUED: "任务排队中",
    TaskStatus.PROCESSING: "正在处理",
    TaskStatus.COMPLETED: "处理完成",
    TaskStatus.FAILED: "处理失败",
}


def status_body(task: TaskRecord, estimate: Estimate | None = None) -> dict[str, Any]:
    """The status answer; ``estimate`` (progress, ETA, queue place) from the dispatcher's
    estimator, or left out (``api.StatusBodies`` adds it to the cached rest)."""
    return {
        "task_id": task.task_id,
        "status": task.status.value,
        "message": MESSAGES[task.status],
        "result_url": f"/api/v1/download/{task.task_id}" if task.status is TaskStatus.COMPLETED else None,
        "error": task.error if task.status is TaskStatus.FAILED else None,
        "server_id": task.server_id,
        "attempts": task.attempts,
        "width": task.width,
        "height": task.height,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        **(estimate.fields() if estimate is not None else {}),
    }


def _seconds(start: float | None, end: float | None) -> float | None:
    return round(end - start, 3) if start is not None and end is not None else None


def whose(task: TaskRecord) -> dict[str, str | None]:
    """Who a task belongs to, for the admin views: its owner (``key:<id>``, an openid or
    ``ip:<address>``) and its priority class."""
    return {"owner": task.owner, "class": task.priority_class}


def timings(task: TaskRecord) -> dict[str, float | None]:
    """Seconds the task waited, ran and took in all (``None`` for what has not happened yet)."""
    return {
        "queued_s": _seconds(task.created_at, task.started_at),
        "processing_s": _seconds(task.started_at, task.finished_at),
        "total_s": _seconds(task.created_at, task.finished_at),
    }
