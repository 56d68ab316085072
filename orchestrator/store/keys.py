"""Every Redis key the orchestrator writes, in one place.

All keys start with the configured prefix (`OTA_REDIS_PREFIX`, default `ota:`), so several
installations, or many tests, can share one Redis. Sorted sets named `…:index` hold members
with score 0 and are read lexically (ZRANGEBYLEX) for stable cursor pagination.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    """Key templates bound to one prefix."""

    prefix: str = "ota:"

    def project(self, project_id: str) -> str:
        """Hash: id, name, description, tags (JSON list), created_at."""
        return f"{self.prefix}project:{project_id}"

    def projects(self) -> str:
        """Sorted set of every project id scored by its creation (epoch µs; 0 for projects
        made before the score was kept, whose `created_at` orders them)."""
        return f"{self.prefix}projects:index"

    def project_deletion(self, project_id: str) -> str:
        """Hash: the project's deletion (started_at, by, counts of what went, finished_at).
        While it exists nothing new is made in the project; once finished it is the deletion's
        audit record and expires (store/projects.py DELETION_KEPT_S)."""
        return f"{self.prefix}project:{project_id}:deletion"

    def api_key(self, digest: str) -> str:
        """Hash by sha256 of the key: id, name, scopes (space-separated), projects, created_at."""
        return f"{self.prefix}apikey:{digest}"

    def api_keys(self) -> str:
        """Sorted set (lex) of every API key digest."""
        return f"{self.prefix}apikeys:index"

    def device(self, device_id: str) -> str:
        """Hash: the device record (store/devices.py: short field names, or the long ones
        earlier versions wrote); the token only as its sha256."""
        return f"{self.prefix}device:{device_id}"

    def device_token(self, digest: str) -> str:
        """String: the device id owning the device token with this sha256 (hex). Only tokens
        made by earlier versions have one; newer tokens carry their device id."""
        return f"{self.prefix}devtoken:{digest}"

    def project_devices(self, project_id: str) -> str:
        """Sorted set (lex): the project's device ids, the first leaf of an id set cut in leaves
        of at most 128 ids (store/lua/devices.lua); the others are `{this key}:{first id}`."""
        return f"{self.prefix}project:{project_id}:devices:index"

    def project_devices_bounds(self, project_id: str) -> str:
        """Sorted set (lex): the first id of each further leaf of project_devices."""
        return f"{self.prefix}project:{project_id}:devices:bounds"

    def project_tag(self, project_id: str, tag: str) -> str:
        """Sorted set (lex): the project's device ids carrying this tag, first leaf of an id set
        like project_devices."""
        return f"{self.prefix}project:{project_id}:tag:{tag}:index"

    def project_tag_bounds(self, project_id: str, tag: str) -> str:
        """Sorted set (lex): the first id of each further leaf of project_tag."""
        return f"{self.prefix}project:{project_id}:tag:{tag}:bounds"

    def file_download_keys(self, project_id: str, name: str) -> str:
        """Set of the download keys issued for a file by commands (TTL: the newest key's)."""
        return f"{self.prefix}file:{project_id}:{name}:dkeys"

    def device_download_keys(self, device_id: str) -> str:
        """Set of the download keys issued to a device (revoked when it is deleted)."""
        return f"{self.prefix}device:{device_id}:dkeys"

    def file(self, project_id: str, name: str) -> str:
        """Hash: name, type, description, size (bytes), sha256, time, path."""
        return f"{self.prefix}file:{project_id}:{name}"

    def project_files(self, project_id: str) -> str:
        """Sorted set (lex) of the project's file names."""
        return f"{self.prefix}project:{project_id}:files:index"

    def all_files(self) -> str:
        """Sorted set (lex) of `project_id/name` for every file of every project."""
        return f"{self.prefix}files:index"

    def download_key(self, key: str) -> str:
        """Hash with a TTL (OTA_DOWNLOAD_KEY_TTL seconds): the key's binding and claim state."""
        return f"{self.prefix}dk:{key}"

    def command(self, command_id: str) -> str:
        """Hash with a TTL (24 h): which device a command went to, for matching its results."""
        return f"{self.prefix}command:{command_id}"

    def download_events(self) -> str:
        """Stream of download-key claims and deliveries, read by the rollout engine."""
        return f"{self.prefix}events:downloads"

    def rollout(self, rollout_id: str) -> str:
        """Hash: the rollout (state, reason, plan JSON, wave, cursor, reach, timestamps)."""
        return f"{self.prefix}rollout:{rollout_id}"

    def rollout_device(self, rollout_id: str, device_id: str) -> str:
        """Hash: one device in one rollout (state, wave, command_id, attempts, key, flags)."""
        return f"{self.prefix}rollout:{rollout_id}:dev:{device_id}"

    def rollout_device_prefix(self, rollout_id: str) -> str:
        """What rollout_device keys start with (Lua builds them from it)."""
        return f"{self.prefix}rollout:{rollout_id}:dev:"

    def rollout_order(self, rollout_id: str) -> str:
        """List: the cohort's device ids in wave order."""
        return f"{self.prefix}rollout:{rollout_id}:order"

    def rollout_archive(self, rollout_id: str) -> str:
        """Hash: a finished rollout's device records packed (store/rollout_archive.py): `meta`
        (JSON), `c:{n}` chunks of records in cohort order, `b:{n}` lookup buckets."""
        return f"{self.prefix}rollout:{rollout_id}:archive"

    def rollout_retry(self, rollout_id: str) -> str:
        """List: devices put back to pending for a retry, dispatched before new ones."""
        return f"{self.prefix}rollout:{rollout_id}:retry"

    def rollout_unpublished(self, rollout_id: str) -> str:
        """Set: devices moved to sent whose command may not have been published yet."""
        return f"{self.prefix}rollout:{rollout_id}:unpublished"

    def rollout_counts(self, rollout_id: str) -> str:
        """Hash: `{wave}:{state}` and `all:{state}` device counts, `fail:{type}` failures."""
        return f"{self.prefix}rollout:{rollout_id}:counts"

    def rollout_deadlines(self, rollout_id: str) -> str:
        """Sorted set: device id scored by the epoch ms at which it times out."""
        return f"{self.prefix}rollout:{rollout_id}:deadlines"

    def rollout_events(self, rollout_id: str) -> str:
        """List of JSON: the audit trail (who or what changed the state, when, why)."""
        return f"{self.prefix}rollout:{rollout_id}:events"

    def rollout_lease(self, rollout_id: str) -> str:
        """String with a PX expiry: the engine replica driving the rollout."""
        return f"{self.prefix}rollout:{rollout_id}:lease"

    def project_rollouts(self, project_id: str) -> str:
        """Sorted set: the project's rollout ids scored by creation time (ms)."""
        return f"{self.prefix}project:{project_id}:rollouts"

    def rollouts_channel(self) -> str:
        """Pub/sub channel: a rollout was created (engines look at once, not at their next poll)."""
        return f"{self.prefix}rollouts:created"

    def active_rollouts(self) -> str:
        """Set: rollouts the engine still has work on; left in the step that ends a rollout."""
        return f"{self.prefix}rollouts:active"

    def finished_rollouts(self) -> str:
        """Sorted set: terminal rollouts scored by when they finished (epoch ms); each is
        deleted with all its keys once OTA_ROLLOUT_RETENTION has passed (store/retention.py)."""
        return f"{self.prefix}rollouts:finished"

    def archived_rollouts(self) -> str:
        """Sorted set: finished rollouts whose device records are all packed, scored as in
        finished_rollouts; a rollout leaves it when retention deletes it."""
        return f"{self.prefix}rollouts:archived"

    def rollout_name(self, project_id: str, name: str) -> str:
        """String: the active rollout holding this name in the project."""
        return f"{self.prefix}project:{project_id}:rollout-name:{name}"

    def device_rollout(self, device_id: str) -> str:
        """String: the active rollout a device belongs to (one at a time)."""
        return f"{self.prefix}device:{device_id}:rollout"

    def device_rollout_prefix(self) -> str:
        """What device_rollout keys start with (Lua builds them from it)."""
        return f"{self.prefix}device:"

    def hook(self, hook_id: str) -> str:
        """Hash: a deploy hook (id, project_id, name, plan template, secret, created_at/by)."""
        return f"{self.prefix}hook:{hook_id}"

    def project_hooks(self, project_id: str) -> str:
        """Sorted set (lex) of the project's hook ids."""
        return f"{self.prefix}project:{project_id}:hooks:index"

    def hook_delivery(self, hook_id: str, delivery_id: str) -> str:
        """Hash with a 24 h TTL: one delivery (rollout_id, status, reason, scheme, version)."""
        return f"{self.prefix}hook:{hook_id}:delivery:{delivery_id}"

    def hook_body(self, hook_id: str, digest: str) -> str:
        """String with a 24 h TTL: the rollout id a GitHub-signed body (its sha256 hex) got."""
        return f"{self.prefix}hook:{hook_id}:body:{digest}"

    def hook_deliveries(self, hook_id: str) -> str:
        """Sorted set: the hook's delivery ids scored by receipt time (epoch ms)."""
        return f"{self.prefix}hook:{hook_id}:deliveries"

    def deploy_requests(self) -> str:
        """Stream of accepted hook deliveries, each started as a rollout by one engine."""
        return f"{self.prefix}events:deploys"

    def rollout_notices(self) -> str:
        """Stream of rollout audit entries worth a notification (state changes, waves)."""
        return f"{self.prefix}events:rollouts"

    def notification(self, subscription_id: str) -> str:
        """Hash: a notification subscription (id, project_id, url, events, secret, created)."""
        return f"{self.prefix}notification:{subscription_id}"

    def project_notifications(self, project_id: str) -> str:
        """Sorted set (lex) of the project's notification subscription ids."""
        return f"{self.prefix}project:{project_id}:notifications:index"

    def notice_delivery(self, message_id: str) -> str:
        """Hash with a 7-day TTL: one notice to one subscriber (body, state, attempts JSON)."""
        return f"{self.prefix}notice:{message_id}"

    def notification_deliveries(self, subscription_id: str) -> str:
        """Sorted set: the subscription's notice ids scored by creation time (epoch ms)."""
        return f"{self.prefix}notification:{subscription_id}:deliveries"

    def notices_due(self) -> str:
        """Sorted set: notice ids scored by when their next attempt is due (epoch ms)."""
        return f"{self.prefix}notices:due"
