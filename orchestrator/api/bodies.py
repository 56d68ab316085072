"""Reading request bodies: JSON bodies as standard JSON, raw bodies whole with a bound."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from orchestrator.errors import InvalidInput, PayloadTooLarge
from orchestrator.jsonutil import loads
from orchestrator.numerals import whole_number


class JSONRequest(Request):
    """A request whose JSON body is read by `jsonutil.loads`: standard JSON or InvalidInput."""

    async def json(self) -> Any:
        """The body's JSON value (read once); InvalidInput naming a NaN, Infinity and the like."""
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class JSONRoute(APIRoute):
    """A route whose JSON body (the one FastAPI validates against its model) is standard JSON.

    FastAPI reads a JSON body with `Request.json()`, so this route hands it a JSONRequest.
    FastAPI turns any error from that read but a JSONDecodeError into a bare 400 ("There was
    an error parsing the body") raised from the error; the InvalidInput under it, which names
    the field and the fix, is answered instead, and so is a PayloadTooLarge (a body cut off at
    its limit by api/body_guard.py). Every router whose routes take a JSON body
    uses this class (tests/api/test_bodies.py checks that none is left out).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """FastAPI's handler, given a JSONRequest and answering its InvalidInput as is."""
        handler = super().get_route_handler()

        async def strict_json(request: Request) -> Response:
            try:
                return await handler(JSONRequest(request.scope, request.receive))
            except HTTPException as exc:
                if isinstance(exc.__cause__, InvalidInput | PayloadTooLarge):
                    raise exc.__cause__ from None
                raise

        return strict_json


async def read_bounded(request: Request, limit: int, too_large: PayloadTooLarge) -> bytes:
    """The body's bytes; `too_large` as soon as it is declared or read past `limit` bytes."""
    declared = whole_number(request.headers.get("content-length", ""))
    if declared is not None and declared > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)
