"""Running the service: embedded servers when their URLs are empty, then uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import structlog
import uvicorn

from orchestrator.api import create_app
from orchestrator.embedded import (
    BrokerTls,
    EmbeddedBroker,
    EmbeddedRedis,
    embedded_dynsec_missing,
    free_port,
    port_taken,
)
from orchestrator.settings import MqttProvision, Settings
from orchestrator.transport.clients import without_credentials
from orchestrator.transport.exposure import ANONYMOUS_RISK

log = structlog.get_logger(__name__)

T = TypeVar("T")


def service_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop `ota serve` runs on: uvloop where it is installed, as uvicorn chooses."""
    try:
        import uvloop
    except ImportError:  # not on this platform: asyncio's own loop
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run_on_service_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to its end on a new loop of the kind `ota serve` runs on."""
    with asyncio.Runner(loop_factory=service_loop_factory()) as runner:
        return runner.run(main)


@contextlib.contextmanager
def embedded_redis(settings: Settings) -> Iterator[Settings]:
    """`settings` with OTA_REDIS_URL filled in by an embedded Redis when it was empty."""
    if settings.redis_url:
        yield settings
        return
    with EmbeddedRedis(settings.redis_data_dir).start() as redis:
        yield settings.model_copy(update={"redis_url": redis.url})


def embedded_broker_security(asked: MqttProvision) -> tuple[Literal["dynsec", "none"], str]:
    """What the embedded broker runs for OTA_MQTT_PROVISION=`asked`, and why it is open if it is.

    Dynamic security (every device logs in as itself) unless it was turned off with `none` or
    cannot run here (no Mosquitto, or no plugin); then the second value says why anyone may
    connect. An explicit `dynsec` that cannot run fails in EmbeddedBroker with the fix.
    """
    if asked == "dynsec":
        return "dynsec", ""
    if asked == "none":
        return "none", "OTA_MQTT_PROVISION=none turned device accounts off"
    missing = embedded_dynsec_missing()
    return ("none", missing) if missing else ("dynsec", "")


@contextlib.contextmanager
def embedded_servers(settings: Settings) -> Iterator[Settings]:
    """`settings` with every empty URL filled in by an embedded server, stopped on exit.

    The embedded broker's security is settled here: the settings it yields carry
    `mqtt_provision` `dynsec` (devices log in as themselves) or `none` (anyone may connect).
    """
    with embedded_redis(settings) as resolved:
        if resolved.mqtt_url:
            yield resolved
            return
        provision, open_because = embedded_broker_security(resolved.mqtt_provision)
        broker = EmbeddedBroker(
            resolved.broker_data_dir, dynsec=provision == "dynsec", tls=broker_tls(resolved)
        )
        with broker.start():
            url = without_credentials(broker.url)
            tls_port = broker.tls_port or 0
            if tls_port:
                log.info(
                    "embedded mqtt broker listens with TLS for devices",
                    url=device_mqtt_url(resolved, tls_port),
                    listen=f"{resolved.http_host}:{tls_port}",
                    certificate=resolved.mqtt_tls_cert,
                )
            if open_because:
                log.warning(
                    f"the embedded MQTT broker accepts anonymous clients ({open_because}): "
                    f"{ANONYMOUS_RISK}. For per-device logins install Mosquitto (Debian's "
                    "mosquitto package, with its dynamic-security plugin) and leave "
                    "OTA_MQTT_PROVISION unset",
                    kind=broker.kind,
                    url=url,
                )
            else:
                log.info(
                    "embedded mqtt broker started; devices log in with their id and token",
                    kind=broker.kind,
                    url=url,
                )
            yield resolved.model_copy(
                update={
                    "mqtt_url": broker.url,
                    "mqtt_version": broker.mqtt_version,
                    "mqtt_provision": provision,
                    "mqtt_tls_port": tls_port,
                }
            )


def broker_tls(settings: Settings) -> BrokerTls | None:
    """The embedded broker's TLS listener for devices, on OTA_HTTP_HOST (None without a cert).

    OTA_MQTT_TLS_PORT kept when set; its default 8883 too, unless something else listens
    there, then a free port (with a warning: devices must be told it).
    """
    if not settings.mqtt_tls:
        return None
    host, port = settings.http_host, settings.mqtt_tls_port
    if port and "mqtt_tls_port" not in settings.model_fields_set and port_taken(host, port):
        log.warning("mqtt tls port taken, using a free one", wanted=port)
        port = 0
    return BrokerTls(Path(settings.mqtt_tls_cert), Path(settings.mqtt_tls_key), host, port)


def device_mqtt_url(settings: Settings, tls_port: int) -> str:
    """Where devices connect with TLS: OTA_PUBLIC_URL's host (as for downloads), the TLS port."""
    host = urlsplit(settings.public_url).hostname or settings.http_host
    return f"mqtts://{f'[{host}]' if ':' in host else host}:{tls_port}"


def choose_http_port(settings: Settings) -> Settings:
    """Keep the configured port; move an unconfigured, taken default to a free port."""
    explicit = "OTA_HTTP_PORT" in os.environ
    if settings.http_port and (explicit or not port_taken(settings.http_host, settings.http_port)):
        return settings
    port = free_port(settings.http_host)
    log.warning("http port taken, using a free one", wanted=settings.http_port, port=port)
    update: dict[str, object] = {"http_port": port}
    if settings.public_url == f"http://{settings.http_host}:{settings.http_port}":
        update["public_url"] = f"http://{settings.http_host}:{port}"
    return settings.model_copy(update=update)


def write_credentials(path: Path, *, api_url: str, api_key: str, project_id: str) -> None:
    """Save the first admin key and project for the local user only (mode 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as handle:
        handle.write(
            f"export OTA_API_URL={api_url}\nexport OTA_API_KEY={api_key}\n"
            f"export OTA_PROJECT={project_id}\n"
        )


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run(settings: Settings) -> None:
    """Serve the API until SIGINT/SIGTERM, with embedded servers when URLs are empty."""
    # uvicorn re-raises the signal it caught once it has shut down; turning SIGTERM into
    # SystemExit lets the embedded servers stop in order instead of dying with the process.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    settings = choose_http_port(settings)
    with embedded_servers(settings) as resolved:
        if not settings.redis_url:
            asyncio.run(bootstrap(resolved))
        app = create_app(resolved)
        print_banner(
            resolved, embedded_redis=not settings.redis_url, embedded_broker=not settings.mqtt_url
        )
        config = uvicorn.Config(
            app,
            host=resolved.http_host,
            port=resolved.http_port,
            log_config=None,
            lifespan="on",
            # Downloads to slow devices may run 15 minutes; give them a bounded grace period.
            timeout_graceful_shutdown=30,
        )
        uvicorn.Server(config).run()
    log.info("service stopped")


async def start_serving(
    settings: Settings, *, start_timeout_s: float = 30.0
) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    """Uvicorn serving `create_app(settings)` in this event loop, once it serves.

    Stop it with `server.should_exit = True`, then await the task.
    """
    config = uvicorn.Config(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="uvicorn")
    async with asyncio.timeout(start_timeout_s):
        while not server.started:
            if task.done():
                task.result()  # it failed to start: raise why
                raise RuntimeError("uvicorn stopped before it started serving")
            await asyncio.sleep(0.01)
    return server, task


@contextlib.asynccontextmanager
async def serving(settings: Settings, *, start_timeout_s: float = 30.0) -> AsyncIterator[None]:
    """Uvicorn serving `create_app(settings)` in this event loop, stopped on exit.

    For whoever needs the service beside other work in one process (`ota demo`, tests).
    """
    server, task = await start_serving(settings, start_timeout_s=start_timeout_s)
    try:
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 60)


def broker_note(settings: Settings, *, embedded: bool) -> str:
    """How devices log in to the broker, for the banner and the demo (empty for your own)."""
    if not embedded:
        return ""
    if settings.mqtt_provision == "dynsec":
        return "devices log in with user name and client id = device id, password = device token"
    return f"ACCEPTS ANONYMOUS CLIENTS: {ANONYMOUS_RISK}"


def print_banner(settings: Settings, *, embedded_redis: bool, embedded_broker: bool) -> None:
    """Tell the person at the terminal where things are and how to start."""
    mqtt_url = without_credentials(settings.mqtt_url)
    note = broker_note(settings, embedded=embedded_broker)
    lines = [
        f"OTA orchestrator on {settings.public_url}  (API docs: {settings.public_url}/docs)",
        f"  Redis: {settings.redis_url}{'  (embedded)' if embedded_redis else ''}",
        f"  MQTT:  {mqtt_url}{f'  (embedded; {note})' if note else ''}",
    ]
    if embedded_broker and settings.mqtt_tls and settings.mqtt_tls_port:
        port = settings.mqtt_tls_port
        lines.append(
            f"  MQTT for devices, TLS: {device_mqtt_url(settings, port)}  (listening on "
            f"{settings.http_host}:{port}, certificate {settings.mqtt_tls_cert})"
        )
    credentials = settings.data_dir / "credentials.env"
    if embedded_redis and credentials.exists():
        lines += [
            f"  An admin key and a project are in {credentials}; in another terminal:",
            f"    source {credentials}",
            f"    ota simulate --devices 100 --mqtt-url {mqtt_url}"
            f"{' --mqtt-version 3.1.1' if settings.mqtt_version == '3.1.1' else ''}"
            "   # a simulated fleet",
            "    ota plan rollouts/canary.yaml   # then ota apply PLAN --watch",
            "  The README's quick start walks through it.",
        ]
    print("\n".join(lines), file=sys.stderr, flush=True)


async def bootstrap(settings: Settings) -> None:
    """On a Redis with no API keys at all, make an admin key and a project for the local user.

    Only for embedded Redis (a laptop or the demo); they are written to
    `{data_dir}/credentials.env` (mode 0600), never logged.
    """
    from orchestrator.domain.auth import Scope
    from orchestrator.store import Stores
    from orchestrator.store.redis import connect

    redis = connect(settings.redis_url)
    try:
        stores = Stores.build(redis, settings.redis_prefix)
        if await stores.api_keys.count():
            return
        plain, _ = await stores.api_keys.create("local-admin", frozenset({Scope.ADMIN}))
        project = await stores.projects.create("default")
        write_credentials(
            settings.data_dir / "credentials.env",
            api_url=settings.public_url,
            api_key=plain,
            project_id=project.id,
        )
    finally:
        await redis.aclose()
