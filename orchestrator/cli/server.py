"""What every server verb shares: --api-url/--api-key/--project and the client.

The three values come from the options, else from `OTA_API_URL`, `OTA_API_KEY` and
`OTA_PROJECT`, else from the `credentials.env` that `ota serve` writes into its data directory
on first start (`.ota/credentials.env`), so a local service needs no setup at all.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from orchestrator.client import ApiClient

T = TypeVar("T")

DEFAULT_API_URL = "http://127.0.0.1:8080"
CREDENTIALS_FILE = "credentials.env"

ApiUrl = Annotated[
    str | None,
    typer.Option(
        "--api-url",
        help=f"The service's URL [env OTA_API_URL; default {DEFAULT_API_URL}]",
        show_default=False,
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", help="An API key [env OTA_API_KEY]", show_default=False),
]
Project = Annotated[
    str | None,
    typer.Option("--project", help="The project's id [env OTA_PROJECT]", show_default=False),
]
Json = Annotated[bool, typer.Option("--json", help="Print the API's JSON instead of a table")]


@dataclass(frozen=True)
class Server:
    """Where the API is and who we are to it."""

    api_url: str
    api_key: str
    project_id: str

    def client(self) -> ApiClient:
        """A client for this server (use it with `async with`)."""
        return ApiClient(self.api_url, self.api_key, self.project_id)


def saved_credentials() -> dict[str, str]:
    """`OTA_*=value` lines of `{OTA_DATA_DIR or .ota}/credentials.env`, if the file exists."""
    path = Path(os.environ.get("OTA_DATA_DIR") or ".ota") / CREDENTIALS_FILE
    try:
        text = path.read_text()
    except OSError:
        return {}
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip().removeprefix("export ")
        name, sep, value = line.partition("=")
        if sep and name.startswith("OTA_"):
            values[name] = value.strip().strip("'\"")
    return values


def server(api_url: str | None, api_key: str | None, project: str | None) -> Server:
    """Options first, then the environment, then the saved credentials of a local service."""
    saved = saved_credentials()

    def pick(given: str | None, name: str, default: str = "") -> str:
        return given or os.environ.get(name) or saved.get(name) or default

    return Server(
        api_url=pick(api_url, "OTA_API_URL", DEFAULT_API_URL),
        api_key=pick(api_key, "OTA_API_KEY"),
        project_id=pick(project, "OTA_PROJECT"),
    )


def connected(*, project: bool = True) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A verb with --api-url, --api-key and (unless `project` is False) --project, which it
    receives as one `target: Server` argument.

    The options stand just before the verb's --json (else after its own), as in every verb.
    """
    shared = [("api_url", ApiUrl), ("api_key", ApiKey)] + ([("project", Project)] * project)

    def decorate(verb: Callable[..., None]) -> Callable[..., None]:
        own = [
            parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for parameter in inspect.signature(verb, eval_str=True).parameters.values()
            if parameter.name != "target"
        ]
        options = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=kind)
            for name, kind in shared
        ]
        names = [parameter.name for parameter in own]
        at = names.index("as_json") if "as_json" in names else len(own)
        parameters = [*own[:at], *options, *own[at:]]

        @functools.wraps(verb)
        def with_target(**given: Any) -> None:
            target = server(given.pop("api_url"), given.pop("api_key"), given.pop("project", ""))
            verb(target=target, **given)

        # What Typer reads the options from (it calls the verb with keywords only).
        with_target.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        with_target.__annotations__ = {p.name: p.annotation for p in parameters}
        return with_target

    return decorate


def run(work: Callable[[ApiClient], Awaitable[T]], target: Server) -> T:
    """Run `work` with a client of `target`, in a fresh event loop."""

    async def go() -> T:
        async with target.client() as api:
            return await work(api)

    return asyncio.run(go())
