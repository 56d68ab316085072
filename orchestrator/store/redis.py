"""The Redis connection and the translation of redis-py errors at this edge."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, ParamSpec, TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    ReadOnlyError,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from orchestrator.errors import StoreRefused, StoreUnavailable
from orchestrator.numerals import whole_number

P = ParamSpec("P")
T = TypeVar("T")

Redis = aioredis.Redis
Pipeline = aioredis.client.Pipeline


# Refusals that pass on their own: a replica promoted a moment ago, a restart loading its data,
# a cluster moving slots.
PASSING_REFUSALS = (ReadOnlyError, BusyLoadingError, TryAgainError, ClusterDownError)

MAX_CONNECTIONS = 64  # per process; callers beyond it wait for a free connection
# A pooled connection that Redis closed (a restart, a failover behind one address) fails its
# next command: reconnect and send it again, up to this many times, 50 ms to 1 s apart.
RECONNECT_RETRIES = 3


SENTINEL_SCHEME = "redis+sentinel://"
CLUSTER_SCHEME = "redis+cluster://"


def connect(url: str) -> Redis:
    """A client for `url` that returns str and fails fast when Redis is down.

    The pool blocks when all connections are busy: redis-py's default pool raises "Too many
    connections" instead, which turned a burst of parallel work into lost results.
    A `redis+sentinel://` URL asks the Sentinels for the current primary (see `sentinel`).
    """
    if url.startswith(SENTINEL_SCHEME):
        return sentinel(url)
    if url.startswith(CLUSTER_SCHEME):
        return cluster(url)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=30,
        health_check_interval=30,
        max_connections=MAX_CONNECTIONS,
        timeout=30,
        retry=Retry(
            ExponentialWithJitterBackoff(base=0.05, cap=1.0),
            RECONNECT_RETRIES,
            supported_errors=(RedisConnectionError,),
        ),
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool: aclose() closes it


class _SentinelRedis(aioredis.Redis):
    """A client of Sentinel's primary that also closes its connections to the Sentinels."""

    sentinels: list[aioredis.Redis]

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        """Close the primary's pool, then the Sentinel clients."""
        await super().aclose(close_connection_pool)
        for client in getattr(self, "sentinels", []):
            await client.aclose()


def sentinel(url: str) -> Redis:
    """A client of the primary that Redis Sentinel names, following it through failovers.

    `redis+sentinel://[[user]:password@]host:port[,host:port…]/service_name[/db]`; the
    password is the primary's; `?sentinel_password=…` is the Sentinels' own, when they have
    one. The pool grows as needed (redis-py has no blocking pool for Sentinel).
    """
    parts = urlsplit(url)
    service, _, db = parts.path.strip("/").partition("/")
    hosts = parts.netloc.rpartition("@")[2]
    sentinels = []
    for host in hosts.split(","):
        name, _, port_text = host.rpartition(":")
        port = whole_number(port_text, max_digits=5)
        if not name or port is None or not service or (db and whole_number(db) is None):
            raise ValueError(
                f"OTA_REDIS_URL {url!r} is not a Sentinel URL; write it as "
                "redis+sentinel://[:password@]host:26379[,host:26379]/service_name[/db]"
            )
        sentinels.append((name, port))
    query = parse_qs(parts.query)
    sentinel_password = query.get("sentinel_password", [None])[0]
    sentinel_set = aioredis.sentinel.Sentinel(  # type: ignore[no-untyped-call,unused-ignore]  # untyped before redis-py 8.2
        sentinels,
        sentinel_kwargs={"password": sentinel_password, "socket_connect_timeout": 5},
        socket_connect_timeout=5,
    )
    client = cast(
        _SentinelRedis,
        sentinel_set.master_for(
            service,
            redis_class=_SentinelRedis,
            decode_responses=True,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            db=int(db or 0),
            socket_timeout=30,
            health_check_interval=30,
        ),
    )
    client.sentinels = list(sentinel_set.sentinels)
    return client


def cluster(url: str) -> Redis:
    """A Redis Cluster client; every key must carry one hash tag (see Settings.redis_prefix).

    `redis+cluster://[[user]:password@]host:port[,host:port…]`: any reachable nodes; the
    client learns the rest. Each state change is one Lua script or MULTI over several keys,
    which Cluster runs only when they share a slot: the key prefix's hash tag (`{ota}:`) puts
    them all in one, so a cluster gives failover, not sharding of one installation.
    """
    parts = urlsplit(url)
    nodes = []
    for host in parts.netloc.rpartition("@")[2].split(","):
        name, _, port_text = host.rpartition(":")
        port = whole_number(port_text, max_digits=5)
        if not name or port is None:
            raise ValueError(
                f"OTA_REDIS_URL {url!r} is not a Cluster URL; write it as "
                "redis+cluster://[:password@]host:6379[,host:6379]"
            )
        nodes.append(aioredis.cluster.ClusterNode(name, port))
    client = aioredis.cluster.RedisCluster(
        startup_nodes=nodes,
        decode_responses=True,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        socket_connect_timeout=5,
        socket_timeout=30,
        health_check_interval=30,
    )
    # The stores use the commands both clients share; Cluster routes each by its keys.
    return cast(Redis, client)


def translated(func: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Turn redis-py connection errors into StoreUnavailable so callers never import redis."""

    @functools.wraps(func)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await func(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StoreUnavailable(
                f"Redis is unreachable ({exc}); check OTA_REDIS_URL and that Redis is running"
            ) from exc
        except PASSING_REFUSALS as exc:  # a failover or a restart under way
            raise StoreUnavailable(f"Redis is not serving yet: {exc}") from exc
        except RedisError as exc:
            raise StoreRefused(f"Redis refused a command: {exc}") from exc

    return wrapper


def load_script(redis: Redis, name: str) -> AsyncScript:
    """Register the Lua script `store/lua/{name}.lua` on this client."""
    source = resources.files("orchestrator.store").joinpath(f"lua/{name}.lua").read_text()
    return redis.register_script(source)


async def hgetall_many(script: AsyncScript, keys: list[str]) -> list[dict[str, str]]:
    """Every hash of `keys` by the `hgetall_many` script: one command, however many keys."""
    if not keys:
        return []
    rows = await script(keys=keys)
    return [dict(zip(row[0::2], row[1::2], strict=True)) for row in rows]


def fields(reply: Any) -> dict[str, str]:
    """A hash reply as str to str (the client decodes responses; redis-py types it loosely)."""
    return cast(dict[str, str], reply)


def members(reply: Any) -> list[str]:
    """A list reply (ZRANGE, SMEMBERS) as str values."""
    return [str(item) for item in reply]
