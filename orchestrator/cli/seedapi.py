"""The seed API from the shell: `ota devices create|list|update`, `ota files`, `ota send`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orchestrator.api.schemas import DeviceOut, FileListItem
from orchestrator.cli.output import console, given, print_answer, print_json, table
from orchestrator.cli.server import Json, Server, connected, run
from orchestrator.client import ApiClient
from orchestrator.errors import InvalidInput
from orchestrator.jsonutil import loads

devices_app = typer.Typer(help="Devices of the project (seed 003).", no_args_is_help=True)
files_app = typer.Typer(help="Firmware and logo files of the project.", no_args_is_help=True)


@devices_app.command("create")
@connected()
def create_device(
    target: Server,
    name: Annotated[str, typer.Option(help="The device's name")],
    source: Annotated[str, typer.Option(help="mqtt (takes commands) or http")] = "mqtt",
    tag: Annotated[list[str] | None, typer.Option(help="A tag (repeatable)")] = None,
    brand: Annotated[str, typer.Option(help="Brand (for rollout targets)")] = "Custom",
    model: Annotated[str, typer.Option(help="Model (for rollout targets)")] = "Custom",
    description: Annotated[str, typer.Option(help="Free text")] = "",
    metadata: Annotated[
        list[str] | None, typer.Option(help="Custom metadata KEY=VALUE (repeatable)")
    ] = None,
    as_json: Json = False,
) -> None:
    """Create a device; prints its id and its token (shown only this once)."""
    fields = {
        "name": name,
        "description": description,
        "source": source,
        "tags": tag or [],
        "brand": brand,
        "model": model,
        "metadata": _pairs(metadata or [], "--metadata"),
    }
    device = run(lambda api: api.create_device(**fields), target)
    if as_json:
        print_json(device)
        return
    typer.echo(f"device_id    {device.metadata.device_id}")
    typer.echo(f"device_token {device.metadata.device_token or ''}  (shown only now)")


def _pairs(given: list[str], option: str) -> dict[str, str]:
    """`KEY=VALUE` options as a mapping; InvalidInput names the one without `=`."""
    pairs: dict[str, str] = {}
    for item in given:
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise InvalidInput(f"{option} must be KEY=VALUE, got {item!r}")
        pairs[key] = value
    return pairs


@devices_app.command("update")
@connected()
def update_device(
    target: Server,
    device_id: Annotated[str, typer.Argument(help="The device's id")],
    name: Annotated[str | None, typer.Option(help="A new name")] = None,
    description: Annotated[str | None, typer.Option(help="A new description")] = None,
    tag: Annotated[
        list[str] | None, typer.Option(help="The device's tags from now on (repeatable)")
    ] = None,
    metadata: Annotated[
        list[str] | None,
        typer.Option(help="Set custom metadata KEY=VALUE (repeatable; other keys are kept)"),
    ] = None,
    unset: Annotated[
        list[str] | None, typer.Option(help="Remove the custom metadata KEY (repeatable)")
    ] = None,
    as_json: Json = False,
) -> None:
    """Change a device's name, description, tags or custom metadata; the rest is kept."""
    changed: dict[str, str | None] = {**_pairs(metadata or [], "--metadata")}
    changed |= dict.fromkeys(unset or [])
    changes = given(name=name, description=description, tags=tag)
    if changed:
        changes["metadata"] = changed
    if not changes:
        raise InvalidInput(
            "nothing to change: give --name, --description, --tag, --metadata or --unset"
        )
    device = run(lambda api: api.update_device(device_id, **changes), target)
    print_answer(device, as_json=as_json, line=f"updated {device.id}: {device.name}")


@devices_app.command("list")
@connected()
def list_devices(
    target: Server,
    tag: Annotated[str, typer.Option(help="Only devices with this tag")] = "",
    metadata: Annotated[
        list[str] | None,
        typer.Option(help="Only devices whose custom metadata holds KEY:VALUE (repeatable)"),
    ] = None,
    as_json: Json = False,
) -> None:
    """The project's devices."""

    async def collect(api: ApiClient) -> list[DeviceOut]:
        return [device async for device in api.devices(tag=tag, metadata=metadata or [])]

    devices = run(collect, target)
    if as_json:
        print_json(devices)
        return
    listed = table(("id", "name", "source", "brand", "model", "tags", "firmware", "last seen"))
    for device in devices:
        listed.add_row(
            device.id,
            device.name,
            device.source,
            device.brand,
            device.model,
            ",".join(device.tags),
            device.firmware_version or "",
            device.last_seen,
        )
    console().print(listed)
    typer.echo(f"{len(devices)} devices")


@files_app.command("upload")
@connected()
def upload_file(
    target: Server,
    path: Annotated[Path, typer.Argument(help="The file; its name is its name in the project")],
    type_: Annotated[str, typer.Option("--type", help="firmware or logo")] = "firmware",
    description: Annotated[str, typer.Option(help="Free text")] = "",
    as_json: Json = False,
) -> None:
    """Upload a firmware or logo file (names are immutable: a new version needs a new name)."""
    if not path.is_file():
        raise typer.BadParameter(f"{path} is not a readable file", param_hint="PATH")
    stored = run(
        lambda api: api.upload_file(path, type_=type_, description=description),
        target,
    )
    print_answer(
        stored,
        as_json=as_json,
        line=f"uploaded {stored.name}  {stored.size} bytes  sha256 {stored.sha256}",
    )


@files_app.command("list")
@connected()
def list_files(
    target: Server,
    type_: Annotated[str, typer.Option("--type", help="firmware or logo (default both)")] = "",
    as_json: Json = False,
) -> None:
    """The project's files."""

    kinds = [type_] if type_ else ["firmware", "logo"]  # the API lists one type at a time
    files = run(lambda api: _files_of(api, kinds), target)
    if as_json:
        print_json(files)
        return
    listed = table(("name", "type", "size", "uploaded", "description"), right=("size",))
    for stored in files:
        listed.add_row(stored.name, stored.type, str(stored.size), stored.time, stored.description)
    console().print(listed)


async def _files_of(api: ApiClient, kinds: list[str]) -> list[FileListItem]:
    return [f for kind in kinds for f in await api.files(type_=kind)]


@connected()
def send(
    target: Server,
    device_id: Annotated[str, typer.Argument(help="The device's id", metavar="DEVICE")],
    command: Annotated[
        str, typer.Argument(help="download_firmware, reboot, … or a custom command")
    ],
    data: Annotated[
        str, typer.Argument(help='The command\'s data as JSON, e.g. \'{"file_name": "fw.bin"}\'')
    ] = "{}",
    as_json: Json = False,
) -> None:
    """Send one command to one device over MQTT (QoS 2)."""
    try:
        payload = loads(data, where="data")  # standard JSON: the API refuses NaN and the like
    except InvalidInput as exc:
        raise typer.BadParameter(
            f"{exc.message} (quote the whole of it for the shell: "
            """'{"file_name": "fw.bin"}')""",
            param_hint="DATA",
        ) from None
    if not isinstance(payload, dict):
        raise typer.BadParameter("must be a JSON object, e.g. '{}'", param_hint="DATA")
    sent = run(lambda api: api.send(device_id, command, payload), target)
    print_answer(
        sent, as_json=as_json, line=f"sent {command} to {device_id}: command_id {sent.command_id}"
    )


def register(app: typer.Typer) -> None:
    """Add these verbs to the `ota` app."""
    app.add_typer(devices_app, name="devices")
    app.add_typer(files_app, name="files")
    app.command("send")(send)
