"""What `ota hooks` and `ota notifications` share: the list, delete and deliveries verbs.

Both are a project's webhooks (api/webhooks.py): a `WebhookVerbs` says what differs (the
calls, the columns, the words), `add_verbs` writes the three verbs once. Each module keeps its
own `create`, whose options differ.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Annotated, Generic, TypeVar

import typer
from pydantic import BaseModel
from rich.console import RenderableType

from orchestrator.api.schemas import Done
from orchestrator.cli.output import print_answer, show_records
from orchestrator.cli.server import Json, Server, connected, run
from orchestrator.client import ApiClient

# `create`'s --secret, for hooks and notifications alike.
Secret = Annotated[
    str | None,
    typer.Option(
        help="The HMAC secret deliveries are signed with (16 or more characters); generated "
        "when left out",
        show_default=False,
    ),
]

R = TypeVar("R", bound=BaseModel)
D = TypeVar("D", bound=BaseModel)


def _as_listed(target: Server, record: R) -> R:
    return record


@dataclass(frozen=True)
class WebhookVerbs(Generic[R, D]):
    """One kind of webhook as its verbs show it."""

    noun: str  # "hook": in messages
    id_help: str  # the ID argument's help
    kept_for: str  # how long deliveries are kept: "24 hours"
    list_doc: str
    delete_doc: str
    deliveries_doc: str
    none: str  # what `list` says when there are none
    records: Callable[[ApiClient], Awaitable[list[R]]]
    delete: Callable[[ApiClient, str], Awaitable[Done]]
    deliveries: Callable[[ApiClient, str], Awaitable[list[D]]]
    columns: tuple[str, ...]
    row: Callable[[R], Sequence[RenderableType]]
    delivery_columns: tuple[str, ...]
    delivery_row: Callable[[D], Sequence[RenderableType]]
    right: Collection[str] = ()  # delivery columns aligned right
    shown: Callable[[Server, R], R] = _as_listed  # a record as `list` shows it


def add_verbs(app: typer.Typer, kind: WebhookVerbs[R, D]) -> None:
    """`list`, `delete ID` and `deliveries ID` for the kind, on `app`."""

    @connected()
    def list_verb(target: Server, as_json: Json = False) -> None:
        records = [kind.shown(target, record) for record in run(kind.records, target)]
        show_records(
            records, as_json=as_json, none=kind.none, columns=kind.columns, row=kind.row, fold=True
        )

    def delete(target: Server, record_id: str, as_json: bool) -> None:
        answer = run(lambda api: kind.delete(api, record_id), target)
        print_answer(answer, as_json=as_json, line=f"deleted {kind.noun} {record_id}")

    def deliveries(target: Server, record_id: str, as_json: bool) -> None:
        found = run(lambda api: kind.deliveries(api, record_id), target)
        show_records(
            found,
            as_json=as_json,
            none=f"no deliveries to {kind.noun} {record_id} in the last {kind.kept_for}",
            columns=kind.delivery_columns,
            row=kind.delivery_row,
            fold=True,
            right=kind.right,
        )

    list_verb.__doc__ = kind.list_doc
    app.command("list")(list_verb)
    app.command("delete")(_on_one(kind.id_help, kind.delete_doc, delete))
    app.command("deliveries")(_on_one(kind.id_help, kind.deliveries_doc, deliveries))


def _on_one(
    id_help: str, doc: str, act: Callable[[Server, str, bool], None]
) -> Callable[..., None]:
    """A verb taking one record's ID (and the server options) that does `act`."""

    @connected()
    def verb(
        target: Server,
        record_id: str = typer.Argument(help=id_help, metavar="ID", show_default=False),
        as_json: Json = False,
    ) -> None:
        act(target, record_id, as_json)

    verb.__doc__ = doc
    return verb
