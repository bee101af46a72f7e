"""Tasks in Redis: one hash per task, indexed by status, by finish time and by owner."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from ...models import TaskRecord, TaskStatus
from ..common import check_updatable
from ..protocols import TaskStore
from .connection import RedisConnection, texts, unavailable
from .records import FINISHED, field_text, task_from_hash, task_hash


class RedisTasks(RedisConnection, TaskStore):
    """:class:`~photogate.storage.protocols.TaskStore` on Redis. Nothing is cached: another
    gateway may have changed any task a moment ago."""

    @unavailable
    async def insert_task(self, task: TaskRecord | Callable[[], TaskRecord]) -> TaskRecord:
        """Store the task and put it in the shared queue, in one transaction. ``task`` may be
        a function that builds the record (in the executor: it may do file I/O)."""
        if callable(task):
            task = await asyncio.get_running_loop().run_in_executor(None, task)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.task(task.task_id), mapping=task_hash(task))
            pipe.zadd(self.keys.status(task.status.value), {task.task_id: task.created_at})
            if task.status is TaskStatus.QUEUED:
                pipe.zadd(self.keys.queue, {task.task_id: task.created_at})
            if task.status.value in FINISHED:
                pipe.zadd(self.keys.done, {task.task_id: task.updated_at})
            if task.owner:  # a WeChat user's own list of tasks
                pipe.zadd(self.keys.owner(task.owner), {task.task_id: task.created_at})
            await pipe.execute()
        return task

    @unavailable
    async def update_task(self, task_id: str, *, prepare: Callable[[], dict[str, Any]] | None = None,
                          **changes: Any) -> None:
        """Change a task's fields. ``prepare``, if given, runs first (in the executor: it may
        do file I/O) and returns more changes; what it raises, this raises."""
        if prepare is not None:
            changes = {**changes, **await asyncio.get_running_loop().run_in_executor(None, prepare)}
        check_updatable(changes)
        encoded = json.dumps({k: field_text(v) for k, v in changes.items()})
        await self.scripts.update_task(keys=[self.keys.task(task_id), self.keys.claimed],
                                       args=[self.prefix, task_id, encoded, repr(time.time())])

    def peek_task(self, task_id: str) -> TaskRecord | None:
        """Nothing is cached here: another gateway may have changed any task."""
        return None

    @unavailable
    async def get_task(self, task_id: str) -> TaskRecord | None:
        data = texts(await self.redis.hgetall(self.keys.task(task_id)))
        return task_from_hash(data) if data else None

    async def _tasks(self, ids: Sequence[str]) -> list[TaskRecord]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hgetall(self.keys.task(task_id))
            rows = await pipe.execute()
        return [task_from_hash(texts(row)) for row in rows if row]

    @unavailable
    async def list_tasks(
        self, statuses: Sequence[TaskStatus], limit: int = 1_000_000, *, newest_first: bool = False
    ) -> list[TaskRecord]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for status in statuses:
                key = self.keys.status(TaskStatus(status).value)
                if newest_first:
                    pipe.zrevrange(key, 0, limit - 1, withscores=True)
                else:
                    pipe.zrange(key, 0, limit - 1, withscores=True)
            found = await pipe.execute()
        scored = sorted(((score, task_id) for rows in found for task_id, score in rows), reverse=newest_first)
        return await self._tasks([task_id for _score, task_id in scored[:limit]])

    @unavailable
    async def count_tasks(self) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for status in TaskStatus:
                pipe.zcard(self.keys.status(status.value))
            counts = await pipe.execute()
        return {status.value: int(n) for status, n in zip(TaskStatus, counts)}

    @unavailable
    async def expired_task_ids(self, before: float) -> list[str]:
        """Finished (completed or failed) tasks last touched before ``before``."""
        return [str(task_id) for task_id in await self.redis.zrangebyscore(self.keys.done, "-inf", f"({before!r}")]

    @unavailable
    async def delete_task(self, task_id: str) -> None:
        await self.scripts.delete_task(keys=[self.keys.task(task_id)], args=[self.prefix, task_id])
