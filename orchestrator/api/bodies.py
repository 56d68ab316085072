"""Reading a request body whole, with a bound, for the routes that need its raw bytes."""

from __future__ import annotations

from fastapi import Request

from orchestrator.errors import PayloadTooLarge


async def read_bounded(request: Request, limit: int, too_large: PayloadTooLarge) -> bytes:
    """The body's bytes; `too_large` as soon as it is declared or read past `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)
