"""How the CLI writes what it read: a Rich console, tables of records, or the API's JSON."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, TypeVar

import typer
from pydantic import BaseModel
from pydantic_core import to_jsonable_python
from rich.console import Console, RenderableType
from rich.table import Table

R = TypeVar("R", bound=BaseModel)


def given(**options: object) -> dict[str, object]:
    """The options a verb was given (those not None): the fields a PATCH changes."""
    return {name: value for name, value in options.items() if value is not None}


def console(*, stderr: bool = False) -> Console:
    """The console the CLI prints to (no guessed highlighting of numbers and ids)."""
    return Console(stderr=stderr, highlight=False)


def print_json(value: Any) -> None:
    """`value` (a model of the API's, a list of them, or plain values) as indented JSON on
    stdout, with the field names the API writes."""
    jsonable = to_jsonable_python(value, by_alias=True)
    typer.echo(json.dumps(jsonable, indent=2, ensure_ascii=False))


def print_answer(value: Any, *, as_json: bool, line: str) -> None:
    """With --json the API's answer as JSON (see print_json), else the one `line` for people."""
    if as_json:
        print_json(value)
    else:
        typer.echo(line)


def table(
    columns: Iterable[str], *, right: Collection[str] = (), fold: bool = False, **options: Any
) -> Table:
    """A table with a dim header; `right` columns are right-aligned, `fold` wraps long cells."""
    shown = Table(box=None, header_style="dim", **options)
    for column in columns:
        shown.add_column(
            column,
            justify="right" if column in right else "left",
            overflow="fold" if fold else "ellipsis",
        )
    return shown


def show_records(
    records: Sequence[R],
    *,
    as_json: bool,
    none: str,
    columns: Iterable[str],
    row: Callable[[R], Sequence[RenderableType]],
    fold: bool = False,
    right: Collection[str] = (),
) -> None:
    """`records` as JSON (`--json`), as a table of one `row` each, or the `none` sentence."""
    if as_json:
        print_json(records)
        return
    out = console()
    if not records:
        out.print(none)
        return
    shown = table(columns, right=right, fold=fold)
    for record in records:
        shown.add_row(*row(record))
    out.print(shown)
