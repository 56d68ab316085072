"""Redis adapters: every read and write of durable state goes through here."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.store.api_keys import ApiKeyStore
from orchestrator.store.audit import AuditTrail
from orchestrator.store.commands import CommandStore
from orchestrator.store.devices import DeviceStore
from orchestrator.store.download_keys import DownloadKeyStore
from orchestrator.store.files import FileStore
from orchestrator.store.hooks import HookStore
from orchestrator.store.keys import RedisKeys
from orchestrator.store.leases import LeaseStore
from orchestrator.store.notifications import NotificationStore
from orchestrator.store.projects import ProjectStore
from orchestrator.store.redis import Redis, translated
from orchestrator.store.retention import RetentionStore
from orchestrator.store.rollout_archive import RolloutArchive
from orchestrator.store.rollout_devices import RolloutDeviceStore
from orchestrator.store.rollouts import RolloutStore
from orchestrator.store.streams import EngineStreams


@dataclass(frozen=True)
class Stores:
    """Every store, sharing one client and one key prefix."""

    redis: Redis
    keys: RedisKeys
    projects: ProjectStore
    api_keys: ApiKeyStore
    devices: DeviceStore
    files: FileStore
    download_keys: DownloadKeyStore
    commands: CommandStore
    rollouts: RolloutStore  # the record, creation, state changes, listing
    rollout_devices: RolloutDeviceStore  # dispatch, transitions, results, deadlines
    leases: LeaseStore  # which replica drives a rollout
    audit: AuditTrail  # what happened to a rollout
    archive: RolloutArchive  # finished rollouts' devices, packed
    hooks: HookStore
    notifications: NotificationStore
    retention: RetentionStore
    streams: EngineStreams  # what the engine reads: key use, deploys, notices to send

    @classmethod
    def build(cls, redis: Redis, prefix: str) -> Stores:
        """Stores on `redis` under the key prefix `prefix`."""
        keys = RedisKeys(prefix)
        return cls(
            redis=redis,
            keys=keys,
            projects=ProjectStore(redis, keys),
            api_keys=ApiKeyStore(redis, keys),
            devices=DeviceStore(redis, keys),
            files=FileStore(redis, keys),
            download_keys=DownloadKeyStore(redis, keys),
            commands=CommandStore(redis, keys),
            rollouts=RolloutStore(redis, keys),
            rollout_devices=RolloutDeviceStore(redis, keys),
            leases=LeaseStore(redis, keys),
            audit=AuditTrail(redis, keys),
            archive=RolloutArchive(redis, keys),
            hooks=HookStore(redis, keys),
            notifications=NotificationStore(redis, keys),
            retention=RetentionStore(redis, keys),
            streams=EngineStreams(redis, keys),
        )

    @translated
    async def ping(self) -> bool:
        """True when Redis answers."""
        return bool(await self.redis.ping())
