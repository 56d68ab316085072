"""API keys: stored as sha256 digests, with scopes and optional project limits."""

from __future__ import annotations

import hashlib
import secrets
import uuid

from orchestrator.domain.auth import API_KEY_PREFIX, Principal, Scope
from orchestrator.store.keys import RedisKeys
from orchestrator.store.redis import Redis, fields, load_script, translated
from orchestrator.timeutil import isoformat_z, utc_now


def digest(secret: str) -> str:
    """The sha256 hex digest under which a secret is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeyStore:
    """Create API keys and authenticate the callers that present them."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._unscope = load_script(redis, "api_keys_unscope")

    @translated
    async def create(
        self, name: str, scopes: frozenset[Scope], projects: frozenset[str] = frozenset()
    ) -> tuple[str, Principal]:
        """A new key: its plain text (shown once, never stored) and what it may do."""
        plain = API_KEY_PREFIX + secrets.token_urlsafe(32)
        principal = Principal(key_id=str(uuid.uuid4()), name=name, scopes=scopes, projects=projects)
        key_digest = digest(plain)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._keys.api_key(key_digest),
                mapping={
                    "id": principal.key_id,
                    "name": name,
                    "scopes": " ".join(sorted(scopes)),
                    "projects": " ".join(sorted(projects)),
                    "created_at": isoformat_z(utc_now()),
                },
            )
            pipe.zadd(self._keys.api_keys(), {key_digest: 0})
            await pipe.execute()
        return plain, principal

    @translated
    async def authenticate(self, plain: str) -> Principal | None:
        """Who holds `plain`, or None for an unknown key."""
        if not plain.startswith(API_KEY_PREFIX):
            return None
        record = fields(await self._redis.hgetall(self._keys.api_key(digest(plain))))
        if not record:
            return None
        return Principal(
            key_id=record["id"],
            name=record["name"],
            scopes=frozenset(Scope(s) for s in record["scopes"].split()),
            projects=frozenset(record.get("projects", "").split()),
        )

    @translated
    async def count(self) -> int:
        """How many keys exist."""
        return int(await self._redis.zcard(self._keys.api_keys()))

    @translated
    async def unscope(self, project_id: str) -> tuple[int, int]:
        """Take a deleted project out of the keys limited to it: (keys revoked, keys narrowed).

        A key limited to that project alone is deleted (an empty limit would open every
        project to it); a key limited to others too keeps those.
        """
        revoked, narrowed = await self._unscope(
            keys=[self._keys.api_keys()], args=[self._keys.api_key(""), project_id]
        )
        return int(revoked), int(narrowed)
