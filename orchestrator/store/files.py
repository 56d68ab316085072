"""Metadata of uploaded firmware and logo files (the bytes live in `blobs`)."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.domain.files import FileType
from orchestrator.errors import ProjectDeleting
from orchestrator.store.keys import RedisKeys
from orchestrator.store.redis import Redis, fields, load_script, members, translated


@dataclass(frozen=True)
class StoredFile:
    """A file's metadata; `path` is where its bytes are, relative to the files directory."""

    project_id: str
    name: str
    type: FileType
    description: str
    size: int
    sha256: str
    time: str
    path: str


def _decode(record: dict[str, str]) -> StoredFile:
    return StoredFile(
        project_id=record["project_id"],
        name=record["name"],
        type=FileType(record["type"]),
        description=record.get("description", ""),
        size=int(record["size"]),
        sha256=record["sha256"],
        time=record["time"],
        path=record["path"],
    )


class FileStore:
    """Register, look up, list and forget files."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._create = load_script(redis, "file_create")
        self._delete = load_script(redis, "file_delete")

    def _index_keys(self, project_id: str, name: str) -> list[str]:
        return [
            self._keys.file(project_id, name),
            self._keys.project_files(project_id),
            self._keys.all_files(),
        ]

    @translated
    async def create(self, stored: StoredFile) -> bool:
        """Register the file; False when a file of that name exists in the project.

        ProjectDeleting when the project's deletion has begun (the upload may have started
        before it did)."""
        record = {
            "project_id": stored.project_id,
            "name": stored.name,
            "type": stored.type.value,
            "description": stored.description,
            "size": str(stored.size),
            "sha256": stored.sha256,
            "time": stored.time,
            "path": stored.path,
        }
        pairs = [item for pair in record.items() for item in pair]
        created = await self._create(
            keys=[
                *self._index_keys(stored.project_id, stored.name),
                self._keys.project_deletion(stored.project_id),
            ],
            args=[stored.name, stored.project_id, *pairs],
        )
        if created == -1:
            raise ProjectDeleting(stored.project_id)
        return bool(created)

    @translated
    async def get(self, project_id: str, name: str) -> StoredFile | None:
        """The file's metadata, or None."""
        record = fields(await self._redis.hgetall(self._keys.file(project_id, name)))
        return _decode(record) if record else None

    @translated
    async def exists(self, project_id: str, name: str) -> bool:
        """True when the project has a file of that name."""
        return bool(await self._redis.exists(self._keys.file(project_id, name)))

    @translated
    async def of_type(self, project_ids: list[str] | None, file_type: FileType) -> list[StoredFile]:
        """Files of `file_type` in the given projects (None: every project), by name."""
        if project_ids is None:
            everything = members(await self._redis.zrange(self._keys.all_files(), 0, -1))
            pairs = [member.split("/", 1) for member in everything]
        else:
            pairs = []
            for project_id in project_ids:
                names = members(
                    await self._redis.zrange(self._keys.project_files(project_id), 0, -1)
                )
                pairs.extend([project_id, name] for name in names)
        async with self._redis.pipeline(transaction=False) as pipe:
            for project_id, name in pairs:
                pipe.hgetall(self._keys.file(project_id, name))
            rows = await pipe.execute()
        files = [_decode(fields(row)) for row in rows if row]
        return [f for f in files if f.type is file_type]

    @translated
    async def delete(self, project_id: str, name: str) -> str | None:
        """Forget the file; the path of its bytes for the caller to remove, or None."""
        path = await self._delete(keys=self._index_keys(project_id, name), args=[name, project_id])
        return str(path) if path else None
