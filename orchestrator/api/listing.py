"""Listings answered as streamed JSON: the envelope's head, the items page by page, its tail.

`listed` and `listed_page` answer a listing in the envelope, its items in `data`; `streamed`
does it for any answer with a list field (the seed's file listing is `{"files": [...]}`).

A listing without `limit` holds every item (Qubitro's SDK has no paging and expects them all),
so its body is written while the store is read, a page at a time: the service holds one page,
whatever the size of the fleet. The first page is read before the answer starts, so a bad
project, a bad key or Redis being away is still an error body with its status. A store that
fails after that cannot change the status any more: the connection is cut before the body is
complete, and the client sees an unfinished body (an incomplete chunked message), never a
complete-looking one with items missing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from typing import Any, TypeVar

import structlog
from fastapi import Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from orchestrator.api.schemas import Envelope, Paged
from orchestrator.errors import OrchestratorError

log = structlog.get_logger(__name__)

T = TypeVar("T")
C = TypeVar("C")
Page = Sequence[BaseModel]

PAGE_SIZE = 100  # items read from a store per step of a listing that returns everything
# ?limit= of the device listings (a project's, a rollout's)
DEVICES_PER_PAGE: Any = Query(
    None,
    ge=1,
    le=1000,
    description="Devices per page; without it, every device (from the cursor on)",
)


async def pages(
    fetch: Callable[[C | None, int], Awaitable[tuple[Sequence[T], C | None]]],
    start: C | None = None,
) -> AsyncGenerator[Sequence[T], None]:
    """Every page a store's page function gives, from `start` until its cursor runs out.

    `fetch(cursor, size)` returns up to `size` items after `cursor` (None: from the start)
    and the cursor of the next page, None after the last one.
    """
    cursor = start
    while True:
        items, cursor = await fetch(cursor, PAGE_SIZE)
        yield items
        if cursor is None:
            return


async def paged(
    fetch: Callable[[C | None, int], Awaitable[tuple[Sequence[T], C | None]]],
    start: C | None,
    limit: int | None,
) -> tuple[AsyncGenerator[Sequence[T], None], C | None]:
    """Without `limit`, every page from `start` and no next cursor; with it, one page of
    `limit` items and the cursor of the next one."""
    if limit is None:
        return pages(fetch, start), None
    items, cursor = await fetch(start, limit)
    return one_page(items), cursor


async def loaded(
    keys: Sequence[str], load: Callable[[Sequence[str]], Awaitable[Sequence[T]]]
) -> AsyncGenerator[Sequence[T], None]:
    """The records of `keys` (ids read in one go), loaded a page of keys at a time."""

    async def fetch(offset: int | None, size: int) -> tuple[Sequence[T], int | None]:
        start = offset or 0
        end = start + size
        return await load(keys[start:end]), end if end < len(keys) else None

    async for page in pages(fetch):
        yield page


async def one_page(items: Sequence[T]) -> AsyncGenerator[Sequence[T], None]:
    """Items already read (one page, or all a store keeps of a bounded list) as one page."""
    yield items


async def streamed(
    envelope: BaseModel, field: str, items: AsyncGenerator[Page, None]
) -> StreamingResponse:
    """`envelope` as JSON with its list `field` filled from `items`, written as it is read.

    The envelope's other fields are fixed before the first item (a next cursor included);
    its `field` is left out of it and written from `items`. Items are serialized the way
    FastAPI writes a response model (by alias).
    """
    first = await anext(items, None)  # a failure here is still an error answer
    head, tail = _split(envelope, field)

    async def body() -> AsyncIterator[bytes]:
        yield head
        sent = 0
        async with aclosing(items):  # also when the client goes away mid-way
            try:
                page = first
                while page is not None:
                    if page:
                        chunk = ",".join(item.model_dump_json(by_alias=True) for item in page)
                        yield (("," if sent else "") + chunk).encode()
                        sent += len(page)
                    page = await anext(items, None)
            except OrchestratorError as exc:
                # Raised on: the server closes the connection before the body is complete.
                log.warning("listing cut off", field=field, items_sent=sent, error=exc.message)
                raise
        yield tail

    return StreamingResponse(body(), media_type="application/json")


async def listed(action: str, message: str, items: AsyncGenerator[Page, None]) -> StreamingResponse:
    """The envelope of a listing, `data` written from `items` as they are read."""
    envelope = Envelope[list[BaseModel]](action=action, message=message, data=[])
    return await streamed(envelope, "data", items)


async def listed_page(
    action: str, message: str, items: AsyncGenerator[Page, None], next_cursor: str | None
) -> StreamingResponse:
    """The envelope of a listing read a page at a time: `data`, and `next_cursor` after it."""
    envelope = Paged[BaseModel](action=action, message=message, data=[], next_cursor=next_cursor)
    return await streamed(envelope, "data", items)


def _split(envelope: BaseModel, field: str) -> tuple[bytes, bytes]:
    """The JSON of `envelope` before and after the items of its list `field`."""
    dumped = envelope.model_dump(mode="json", by_alias=True)
    names = list(dumped)
    at = names.index(field)
    before = "".join(f"{_json(name)}:{_json(dumped[name])}," for name in names[:at])
    after = "".join(f",{_json(name)}:{_json(dumped[name])}" for name in names[at + 1 :])
    return f"{{{before}{_json(field)}:[".encode(), f"]{after}}}".encode()


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
