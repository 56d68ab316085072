"""Projects: the unit that owns devices, files and rollouts, and the record of their deletion.

Deleting a project begins with its deletion record (`project:{id}:deletion`), written in one
script with the check that the engine has no rollout of the project left to drive. From then on
nothing new is made in the project: the rollout and file scripts refuse it, and every other
write to a project goes through `project_write`, which WATCHes the record. The things already
in the project are then deleted by whoever carries the deletion out (api/project_deletion.py),
and `finish_delete` removes the project itself; the record stays a while as the audit.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from redis.exceptions import WatchError

from orchestrator.errors import ProjectDeleting
from orchestrator.store.keys import RedisKeys
from orchestrator.store.redis import Pipeline, Redis, fields, load_script, translated
from orchestrator.timeutil import epoch_ms, isoformat_z, utc_now

DELETION_KEPT_S = 30 * 24 * 3600  # how long a finished deletion's record stays


@dataclass(frozen=True)
class Project:
    """A project record; `deleting` while its deletion has begun and not finished."""

    id: str
    name: str
    created_at: str
    description: str = ""
    tags: list[str] = field(default_factory=list)
    deleting: bool = False


@dataclass(frozen=True)
class ActiveRollout:
    """A rollout the engine still has work on, which keeps its project from being deleted."""

    id: str
    name: str
    state: str


@dataclass(frozen=True)
class DeletionStart:
    """What `begin_delete` found: no project, rollouts still active, or a deletion under way."""

    found: bool
    active: tuple[ActiveRollout, ...] = ()


def _decode(record: dict[str, str], deleting: bool) -> Project:
    return Project(
        id=record["id"],
        name=record["name"],
        created_at=record["created_at"],
        description=record.get("description", ""),
        tags=json.loads(record.get("tags") or "[]"),
        deleting=deleting,
    )


@asynccontextmanager
async def project_write(redis: Redis, keys: RedisKeys, project_id: str) -> AsyncIterator[Pipeline]:
    """A MULTI pipeline whose writes land only if the project's deletion has not begun.

    Queue the writes in the `async with` body; they run when it ends. The deletion record is
    WATCHed (only a deletion writes it), so ProjectDeleting comes when it exists already or
    appears before the writes run; nothing is written then.
    """
    record = keys.project_deletion(project_id)
    async with redis.pipeline(transaction=True) as pipe:
        await pipe.watch(record)
        # HLEN, not EXISTS: a Cluster pipeline splits EXISTS by slot and runs nothing at once.
        if await pipe.hlen(record):
            raise ProjectDeleting(project_id)
        pipe.multi()  # type: ignore[no-untyped-call]
        yield pipe
        try:
            await pipe.execute()
        except WatchError as exc:
            raise ProjectDeleting(project_id) from exc


class ProjectStore:
    """Create, look up, change and delete projects."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._update = load_script(redis, "project_update")
        self._begin_delete = load_script(redis, "project_delete_begin")

    @translated
    async def create(self, name: str, description: str = "", tags: Sequence[str] = ()) -> Project:
        """A new project with a random UUID."""
        now = utc_now()
        project = Project(
            id=str(uuid.uuid4()),
            name=name,
            created_at=isoformat_z(now),
            description=description,
            tags=list(tags),
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._keys.project(project.id),
                mapping={
                    "id": project.id,
                    "name": name,
                    "description": description,
                    "tags": json.dumps(project.tags),
                    "created_at": project.created_at,
                },
            )
            # Microseconds: projects made one after the other list in that order.
            pipe.zadd(self._keys.projects(), {project.id: int(now.timestamp() * 1_000_000)})
            await pipe.execute()
        return project

    @translated
    async def get(self, project_id: str) -> Project | None:
        """The project, or None when it does not exist."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(self._keys.project(project_id))
            pipe.exists(self._keys.project_deletion(project_id))
            record, deleting = await pipe.execute()
        return _decode(fields(record), bool(deleting)) if record else None

    @translated
    async def ids(self) -> list[str]:
        """Every project id, newest first."""
        reply = await self._redis.zrevrange(self._keys.projects(), 0, -1, withscores=True)
        scored = [(str(member), float(score)) for member, score in cast(list[Any], reply)]
        unscored = [project_id for project_id, score in scored if score == 0]
        if unscored:  # made before the score was kept: ordered by their `created_at`
            async with self._redis.pipeline(transaction=False) as pipe:
                for project_id in unscored:
                    pipe.hget(self._keys.project(project_id), "created_at")
                created = dict(zip(unscored, await pipe.execute(), strict=True))
            scored = sorted(
                (
                    (pid, score or (epoch_ms(created[pid] or "") or 0) * 1000)
                    for pid, score in scored
                ),
                key=lambda item: (item[1], item[0]),
                reverse=True,
            )
        return [project_id for project_id, _ in scored]

    @translated
    async def update(
        self,
        project_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        tags: Sequence[str] | None = None,
    ) -> Project | None:
        """Apply the given changes; None if the project is gone, ProjectDeleting if going."""
        changes: dict[str, str] = {}
        if name is not None:
            changes["name"] = name
        if description is not None:
            changes["description"] = description
        if tags is not None:
            changes["tags"] = json.dumps(list(tags))
        reply = await self._update(
            keys=[self._keys.project(project_id), self._keys.project_deletion(project_id)],
            args=[item for pair in changes.items() for item in pair],
        )
        if reply == "deleting":
            raise ProjectDeleting(project_id)
        if reply == "missing":
            return None
        return _decode(dict(zip(reply[0::2], reply[1::2], strict=True)), False)

    @translated
    async def begin_delete(self, project_id: str, *, by: str) -> DeletionStart:
        """Mark the project as being deleted unless the engine has work on one of its rollouts.

        A deletion that began already (and was cut short) is taken up again as it is.
        """
        reply = await self._begin_delete(
            keys=[
                self._keys.project(project_id),
                self._keys.project_deletion(project_id),
                self._keys.active_rollouts(),
            ],
            args=[project_id, self._keys.rollout(""), isoformat_z(utc_now()), by],
        )
        verdict, rest = str(reply[0]), [str(part) for part in reply[1:]]
        if verdict == "missing":
            return DeletionStart(found=False)
        active = tuple(ActiveRollout(*rest[index : index + 3]) for index in range(0, len(rest), 3))
        return DeletionStart(found=True, active=active)

    @translated
    async def count_deleted(self, project_id: str, **counts: int) -> None:
        """Add to the deletion record's counts of what went (devices=…, files=…)."""
        record = self._keys.project_deletion(project_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            for name, count in counts.items():
                if count:
                    pipe.hincrby(record, name, count)
            await pipe.execute()

    @translated
    async def finish_delete(self, project_id: str) -> None:
        """Remove the project and what is left of its indexes; its deletion record stays
        DELETION_KEPT_S. Call once everything in the project has been deleted."""
        keys = self._keys
        record = keys.project_deletion(project_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(
                keys.project(project_id),
                keys.project_devices(project_id),
                keys.project_files(project_id),
                keys.project_hooks(project_id),
                keys.project_notifications(project_id),
                keys.project_rollouts(project_id),
            )
            pipe.zrem(keys.projects(), project_id)
            pipe.hset(record, "finished_at", isoformat_z(utc_now()))
            pipe.expire(record, DELETION_KEPT_S)
            await pipe.execute()
