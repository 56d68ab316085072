"""`GET /v2/device/download?key=`: a device fetches its file with a one-delivery key."""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.lowlevel
import structlog
from fastapi import APIRouter, Depends, Query, Request, Security
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from orchestrator.api.auth import DEVICE_TOKEN, current_device
from orchestrator.api.context import AppContext, get_context
from orchestrator.api.errors import error_responses
from orchestrator.api.ranges import parse_range
from orchestrator.blobs import BlobStore
from orchestrator.errors import (
    Conflict,
    Forbidden,
    NotFound,
    OrchestratorError,
    RangeNotSatisfiable,
    Unauthorized,
)
from orchestrator.metrics import Metrics
from orchestrator.store.download_keys import (
    DOWNLOAD_KEY_PREFIX,
    Claim,
    ClaimVerdict,
    DownloadKeyStore,
)
from orchestrator.store.files import StoredFile

log = structlog.get_logger(__name__)
router = APIRouter(tags=["device"])

RENEW_EVERY_S = 10.0  # well inside the claim lease, so a live transfer never loses it
TRANSFER_LIMIT_S = 15 * 60  # a slow cellular device gets 15 minutes per request, then resumes

_DEAD_KEY = (
    "the download key is unknown, expired or already used; "
    "ask for a new one by sending the download command again"
)
_OTHER_DEVICE = "this download key was issued to another device"
KEY_PATTERN = f"^{DOWNLOAD_KEY_PREFIX}[A-Za-z0-9_-]{{32}}$"


def _file_headers(*extra: str) -> dict[str, Any]:
    described = {
        "Content-Disposition": "`attachment; filename={name}`",
        "Content-Length": "Bytes in this response",
        "Accept-Ranges": "`bytes`: a broken transfer resumes with Range",
        "X-Content-SHA256": "The whole file's sha256, hex",
        "Content-Range": "`bytes {first}-{last}/{size}`",
    }
    names = ["Content-Disposition", "Content-Length", "Accept-Ranges", "X-Content-SHA256", *extra]
    return {
        name: {"description": described[name], "required": True, "schema": {"type": "string"}}
        for name in names
    }


_FILE = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
DOWNLOAD = {
    "parameters": [
        {
            "name": "Range",
            "in": "header",
            "schema": {"type": "string"},
            "description": (
                "`bytes={first}-[{last}]` or `bytes=-{suffix}` to resume (206); a range past "
                "the end is 416; other forms are ignored"
            ),
        }
    ]
}


class KeyedFileResponse(Response):
    """Streams bytes [first, end) of a file while holding the key's claim.

    The claim is renewed as chunks go out and released in every outcome with the bytes sent,
    so a broken transfer can be resumed with Range and a complete one spends the key.
    "Sent" means handed to the server with the connection still up afterwards; bytes still in
    socket buffers when the device drops are counted too, which is why a resume may start
    anywhere inside the covered prefix (see dk_release.lua).
    """

    def __init__(
        self,
        *,
        keys: DownloadKeyStore,
        blobs: BlobStore,
        key: str,
        claim: Claim,
        stored: StoredFile,
        first: int,
        end: int,
        partial: bool,
        metrics: Metrics,
    ) -> None:
        super().__init__(status_code=206 if partial else 200, media_type="application/octet-stream")
        self._keys = keys
        self._blobs = blobs
        self._key = key
        self._claim = claim
        self._stored = stored
        self._first = first
        self._end = end
        self._partial = partial
        self._metrics = metrics

    def _response_headers(self) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"content-type", b"application/octet-stream"),
            # Seed 000's form, unquoted: file names are RFC 9110 tokens ([A-Za-z0-9._-]).
            (b"content-disposition", f"attachment; filename={self._stored.name}".encode()),
            (b"content-length", str(self._end - self._first).encode()),
            (b"accept-ranges", b"bytes"),
            (b"cache-control", b"no-store"),
            (b"x-content-sha256", self._stored.sha256.encode()),
        ]
        if self._partial:
            span = f"bytes {self._first}-{self._end - 1}/{self._stored.size}"
            headers.append((b"content-range", span.encode()))
        return headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent = self._first
        disconnected = False
        outcome = "aborted"
        started = time.monotonic()
        try:
            async with anyio.create_task_group() as group:

                async def watch_disconnect() -> None:
                    nonlocal disconnected
                    while True:
                        message: Message = await receive()
                        if message["type"] == "http.disconnect":
                            disconnected = True
                            group.cancel_scope.cancel()
                            return

                group.start_soon(watch_disconnect)
                await send(
                    {
                        "type": "http.response.start",
                        "status": 206 if self._partial else 200,
                        "headers": self._response_headers(),
                    }
                )
                renewed = time.monotonic()
                # Uvicorn's send returns silently once the connection is gone, and the watcher
                # hears of it only at a later await; so a chunk counts as sent only when the
                # next await (reading the next chunk, a thread hop) finds the connection up.
                unconfirmed = 0
                async for chunk in self._blobs.read(self._stored.path, self._first, self._end):
                    sent += unconfirmed
                    unconfirmed = 0
                    now = time.monotonic()
                    if now - started > TRANSFER_LIMIT_S:
                        outcome = "time limit"
                        break
                    if now - renewed > RENEW_EVERY_S:
                        if not await self._keys.renew(self._key, self._claim):
                            outcome = "claim lost"
                            break
                        renewed = now
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    if disconnected:
                        break
                    unconfirmed = len(chunk)
                else:
                    await anyio.lowlevel.checkpoint()  # a disconnect cancels us here
                    if not disconnected:
                        sent += unconfirmed
                        await send({"type": "http.response.body", "body": b"", "more_body": False})
                        outcome = "complete"
                group.cancel_scope.cancel()
        finally:
            self._metrics.download_bytes.inc(sent - self._first)
            with anyio.CancelScope(shield=True):
                state = await self._keys.release(
                    self._key, self._claim, first=self._first, end=sent
                )
            if state == "spent":  # exactly one release spends a key
                self._metrics.download_keys_used.inc()
            log.info(
                "download ended",
                key_state=state,
                # After a complete response uvicorn also answers receive() with a disconnect.
                outcome="disconnected" if disconnected and outcome != "complete" else outcome,
                file_name=self._stored.name,
                bytes_sent=sent - self._first,
            )
        # An unfinished response (claim lost, time limit) makes uvicorn close the connection,
        # which is how the device learns to come back with Range.


@router.get(
    "/v2/device/download",
    name="download_file",
    status_code=200,
    response_class=KeyedFileResponse,
    dependencies=[Security(DEVICE_TOKEN)],
    openapi_extra=DOWNLOAD,
    responses={
        200: {"description": "The file", "content": _FILE, "headers": _file_headers()},
        206: {
            "description": "The requested range of the file (resume)",
            "content": _FILE,
            "headers": _file_headers("Content-Range"),
        },
        **error_responses(400, 401, 403, 404, 409, 416, 503),
    },
)
async def download_file(
    request: Request,
    key: str = Query(
        description=(
            "The download key from the command payload; unknown, expired or spent keys are 401"
        ),
        json_schema_extra={"pattern": KEY_PATTERN},
    ),
    context: AppContext = Depends(get_context),
) -> KeyedFileResponse:
    """Stream the file bound to `key` to the device the key was issued to."""
    rejected = context.metrics.download_keys_rejected

    def refuse(reason: str, error: OrchestratorError) -> OrchestratorError:
        rejected.labels(reason).inc()
        return error

    try:
        device = await current_device(request, context)
    except Unauthorized:
        rejected.labels("device_auth").inc()
        raise
    keys = context.stores.download_keys
    record = await keys.get(key)
    if record is None:
        raise refuse("unknown", Unauthorized(_DEAD_KEY))
    if record.device_id != device.id:
        raise refuse("wrong_device", Forbidden(_OTHER_DEVICE))
    stored = await context.stores.files.get(record.project_id, record.file_name)
    if stored is None or not await context.blobs.exists(stored.path):
        raise refuse(
            "file_missing",
            NotFound(f"file {record.file_name!r} is gone; it was deleted after the command"),
        )
    try:
        byte_range = parse_range(request.headers.get("range"), stored.size)
    except RangeNotSatisfiable:
        rejected.labels("bad_range").inc()
        raise
    first, end = byte_range or (0, stored.size)
    verdict, claim = await keys.claim(key, device.id)
    if verdict is ClaimVerdict.BUSY:
        raise refuse(
            "busy",
            Conflict(
                "another transfer is using this download key; when it ends, resume with a "
                "Range header"
            ),
        )
    if verdict is ClaimVerdict.WRONG_DEVICE:
        raise refuse("wrong_device", Forbidden(_OTHER_DEVICE))
    if claim is None:
        raise refuse(
            "spent" if verdict is ClaimVerdict.SPENT else "unknown", Unauthorized(_DEAD_KEY)
        )
    return KeyedFileResponse(
        keys=keys,
        blobs=context.blobs,
        key=key,
        claim=claim,
        stored=stored,
        first=first,
        end=end,
        partial=byte_range is not None,
        metrics=context.metrics,
    )
