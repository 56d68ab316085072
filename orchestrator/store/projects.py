"""Projects: the unit that owns devices, files and rollouts."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from orchestrator.store.keys import RedisKeys
from orchestrator.store.redis import Redis, fields, members, translated
from orchestrator.timeutil import isoformat_z, utc_now


@dataclass(frozen=True)
class Project:
    """A project record."""

    id: str
    name: str
    created_at: str


class ProjectStore:
    """Create and look up projects."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys

    @translated
    async def create(self, name: str) -> Project:
        """A new project with a random UUID."""
        project = Project(id=str(uuid.uuid4()), name=name, created_at=isoformat_z(utc_now()))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._keys.project(project.id),
                mapping={"id": project.id, "name": name, "created_at": project.created_at},
            )
            pipe.zadd(self._keys.projects(), {project.id: 0})
            await pipe.execute()
        return project

    @translated
    async def get(self, project_id: str) -> Project | None:
        """The project, or None when it does not exist."""
        record = fields(await self._redis.hgetall(self._keys.project(project_id)))
        if not record:
            return None
        return Project(id=record["id"], name=record["name"], created_at=record["created_at"])

    @translated
    async def ids(self) -> list[str]:
        """Every project id."""
        return members(await self._redis.zrange(self._keys.projects(), 0, -1))
