"""Verbs that run the service or work on Redis directly: serve, keys, projects, engines."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from orchestrator.domain.auth import Scope, parse_scopes
from orchestrator.domain.projects import validate_description, validate_project_tags
from orchestrator.errors import InvalidInput, NotFound

if TYPE_CHECKING:  # the settings and Redis's client load only in the verbs that use them
    from orchestrator.store import Stores

T = TypeVar("T")

keys_app = typer.Typer(help="API keys (offline, against OTA_REDIS_URL).", no_args_is_help=True)
projects_app = typer.Typer(
    help="Projects: create offline (against OTA_REDIS_URL); list, update, delete through the API.",
    no_args_is_help=True,
)
engines_app = typer.Typer(
    help="Engine replicas (offline, against OTA_REDIS_URL and OTA_MQTT_URL).", no_args_is_help=True
)


def offline(action: Callable[[Stores], Awaitable[T]]) -> T:
    """Run `action` on the stores of OTA_REDIS_URL, or of the embedded Redis when it is empty."""
    from orchestrator.service import embedded_redis
    from orchestrator.settings import Settings
    from orchestrator.store import Stores
    from orchestrator.store.redis import connect

    settings = Settings()

    async def go(url: str) -> T:
        redis = connect(url)
        try:
            return await action(Stores.build(redis, settings.redis_prefix))
        finally:
            await redis.aclose()

    with embedded_redis(settings) as resolved:
        return asyncio.run(go(resolved.redis_url))


def serve(
    role: Annotated[
        str | None,
        typer.Option(
            help="all: API and rollout engine; api: only the API; engine: only the engine"
        ),
    ] = None,
) -> None:
    """Run the API and the rollout engine (embedded Redis and MQTT when their URLs are empty)."""
    from orchestrator.logs import configure_logging
    from orchestrator.service import run
    from orchestrator.settings import Settings

    settings = Settings() if role is None else Settings(role=role)
    configure_logging(settings.log_format, settings.log_level)
    run(settings)


@keys_app.command("create")
def create_key(
    name: Annotated[str, typer.Option(help="Who or what the key is for")],
    scope: Annotated[
        list[str],
        typer.Option(
            help=f"Repeat for several: {', '.join(s.value for s in Scope)}. Creating a deploy "
            "hook needs hooks:write and rollouts:write; hooks:write also covers hooks:read "
            "and the notifications scopes"
        ),
    ],
    project: Annotated[
        list[str] | None, typer.Option(help="Limit the key to this project (repeatable)")
    ] = None,
) -> None:
    """Create an API key and print it, alone, on stdout (it is stored only as a hash)."""
    try:
        scopes = parse_scopes(scope)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scope") from None
    limits = frozenset(project or [])

    async def create(stores: Stores) -> str:
        for project_id in limits:
            if await stores.projects.get(project_id) is None:
                raise NotFound(
                    f"project {project_id} not found; create it with ota projects create"
                )
        plain, _ = await stores.api_keys.create(name, scopes, limits)
        return plain

    typer.echo(offline(create))


@projects_app.command("create")
def create_project(
    name: Annotated[str, typer.Option(help="The project's name")],
    description: Annotated[str, typer.Option(help="What the project is for")] = "",
    tag: Annotated[list[str] | None, typer.Option(help="A tag (repeatable)")] = None,
) -> None:
    """Create a project and print its id, alone, on stdout."""
    if not name.strip():
        raise InvalidInput("--name must not be empty")
    description = validate_description(description)
    tags = validate_project_tags(tag or [])

    async def create(stores: Stores) -> str:
        return (await stores.projects.create(name.strip(), description, tags)).id

    typer.echo(offline(create))


@engines_app.command("retire")
def retire_engine(
    instance_id: Annotated[str, typer.Argument(help="The gone replica's OTA_INSTANCE_ID")],
) -> None:
    """Apply the results waiting for an engine replica that is gone for good, end its session.

    Run it once a replica will not come back under its id (scaled down, host lost): until then
    the broker keeps giving it a share of the results. The replica must be stopped.
    """
    from orchestrator.engine.retire import retire
    from orchestrator.settings import Settings

    settings = Settings()
    if not settings.redis_url or not settings.mqtt_url:
        raise InvalidInput(
            "ota engines retire needs OTA_REDIS_URL and OTA_MQTT_URL: the Redis and the broker "
            "the replica used"
        )

    async def drain(stores: Stores) -> int:
        return await retire(stores, settings, instance_id)

    applied = offline(drain)
    typer.echo(f"retired {instance_id}: {applied} waiting results applied, its session ended")


def register(app: typer.Typer) -> None:
    """Add these verbs to the `ota` app."""
    app.command("serve")(serve)
    app.add_typer(keys_app, name="keys")
    app.add_typer(projects_app, name="projects")
    app.add_typer(engines_app, name="engines")
