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
from orchestrator.api.offload import accel_response, offloading
from orchestrator.api.ranges import parse_range
from orchestrator.blobs import BlobStore
from orchestrator.domain.downloads import delivery_budget_bytes
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

RENEW_EVERY_S = 10.0  # at most; also at most a sixth of the claim lease
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
    "Sent" means handed to the server: a fully sent response spends the key even when the
    device hangs up at once, and bytes still in socket buffers when the device drops are
    counted too, which is why a resume may start anywhere inside the covered prefix (see
    dk_release.lua). The claim is renewed while the response is open and moving; a transfer
    that stops moving is ended before its claim could lapse.
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
        last_progress = time.monotonic()
        disconnected = False
        outcome = "aborted"
        lease_s = self._keys.claim_lease_ms / 1000
        renew_every_s = min(RENEW_EVERY_S, lease_s / 6)
        stall_limit_s = lease_s / 2
        try:
            # The time limit cuts a transfer short wherever it waits, a send included.
            with anyio.move_on_after(TRANSFER_LIMIT_S) as limit:
                async with anyio.create_task_group() as group:

                    async def watch_disconnect() -> None:
                        nonlocal disconnected
                        while True:
                            message: Message = await receive()
                            if message["type"] == "http.disconnect":
                                disconnected = True
                                group.cancel_scope.cancel()
                                return

                    async def hold_claim() -> None:
                        # Renewed on its own clock, not between chunks: a send that waits on
                        # a slow device must not let the claim lapse while the response is
                        # open. A transfer that has not moved for stall_limit_s (well inside
                        # the lease) is ended instead, so one stalled connection never holds
                        # the key for long and never outlives its claim.
                        nonlocal outcome
                        while True:
                            await anyio.sleep(renew_every_s)
                            if time.monotonic() - last_progress > stall_limit_s:
                                outcome = "stalled"
                                group.cancel_scope.cancel()
                                return
                            if not await self._keys.renew(self._key, self._claim):
                                outcome = "claim lost"
                                group.cancel_scope.cancel()
                                return

                    group.start_soon(watch_disconnect)
                    group.start_soon(hold_claim)
                    await send(
                        {
                            "type": "http.response.start",
                            "status": 206 if self._partial else 200,
                            "headers": self._response_headers(),
                        }
                    )
                    async for chunk in self._blobs.read(self._stored.path, self._first, self._end):
                        if disconnected:
                            break
                        # Counted when handed over, before the send returns: uvicorn writes to
                        # the socket at once and then waits for room, and a disconnect that
                        # cancels that wait must not un-count bytes that went out. A device
                        # that drops may so be counted a chunk it lacks; it resumes from its
                        # own offset, inside the counted prefix (see dk_release.lua).
                        sent += len(chunk)
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                        last_progress = time.monotonic()
                    else:
                        if not disconnected:
                            await send(
                                {"type": "http.response.body", "body": b"", "more_body": False}
                            )
                            outcome = "complete"
                    group.cancel_scope.cancel()
            if limit.cancelled_caught:
                outcome = "time limit"
        finally:
            self._metrics.download_bytes.inc(sent - self._first)
            with anyio.CancelScope(shield=True):
                state = await self._keys.release(
                    self._key, self._claim.claim_id, first=self._first, end=sent
                )
            if state == "spent":  # exactly one release spends a key
                self._metrics.download_keys_used.inc()
            log.info(
                "download ended",
                key_state=state,
                # After a complete response uvicorn also answers receive() with a disconnect.
                outcome="disconnected" if disconnected and outcome == "aborted" else outcome,
                file_name=self._stored.name,
                bytes_sent=sent - self._first,
            )
        # An unfinished response (claim lost, stalled, time limit) makes uvicorn close the
        # connection, which is how the device learns to come back with Range.


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
) -> Response:
    """Stream the file bound to `key` to the device the key was issued to.

    With OTA_DOWNLOAD_OFFLOAD=x-accel, a request nginx forwarded gets, after the same checks,
    an `X-Accel-Redirect` answer, and nginx sends the bytes.
    """
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
    if stored.size != record.size or (record.sha256 and stored.sha256 != record.sha256):
        raise refuse(
            "file_changed",
            NotFound(
                f"file {record.file_name!r} now holds other bytes (sha256 {stored.sha256}, "
                f"{stored.size} bytes) than the command announced (sha256 "
                f"{record.sha256 or 'unknown'}, {record.size} bytes); this key will never serve "
                "them: report the command as failed and wait for a new one"
            ),
        )
    try:
        byte_range = parse_range(request.headers.get("range"), stored.size)
    except RangeNotSatisfiable:
        rejected.labels("bad_range").inc()
        raise
    first, end = byte_range or (0, stored.size)
    offloaded = offloading(request, context.settings)
    # The service cannot renew a claim while nginx sends, so an offloaded claim is held as long
    # as one of the service's own transfers may run; nginx's report ends it (almost always)
    # sooner, and only a report that never comes (nginx killed) leaves it to lapse.
    lease_ms = TRANSFER_LIMIT_S * 1000 if offloaded else None
    budget = delivery_budget_bytes(stored.size)
    verdict, claim = await keys.claim(
        key, device.id, span_bytes=end - first, budget_bytes=budget, lease_ms=lease_ms
    )
    if verdict is ClaimVerdict.BUSY:
        raise refuse(
            "busy",
            Conflict(
                "another transfer is using this download key; when it ends, resume with a "
                "Range header"
            ),
        )
    if verdict is ClaimVerdict.EXHAUSTED:
        raise refuse(
            "exhausted",
            Unauthorized(
                f"this download key may send at most {budget} bytes in all (twice the "
                f"{stored.size}-byte file) and this request for {end - first} bytes would go "
                "past that; resume only from where the transfer broke off (Range: bytes=N-), "
                "or ask for a new key by sending the download command again"
            ),
        )
    if verdict is ClaimVerdict.WRONG_DEVICE:
        raise refuse("wrong_device", Forbidden(_OTHER_DEVICE))
    if claim is None:
        raise refuse(
            "spent" if verdict is ClaimVerdict.SPENT else "unknown", Unauthorized(_DEAD_KEY)
        )
    if offloaded:  # nginx sends the bytes and reports them (orchestrator/api/offload.py)
        return accel_response(context.settings, stored, key, claim)
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
