"""`GET /v2/device/download?key=`: a device fetches its file with a one-delivery key.

`HEAD` on the same URL answers what GET would, without a body and without using the key.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import structlog
from fastapi import APIRouter, Depends, Query, Request, Security
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from orchestrator.api.auth import DEVICE_TOKEN, current_device
from orchestrator.api.context import AppContext, get_context
from orchestrator.api.delivery_headers import etag, file_headers
from orchestrator.api.errors import error_responses
from orchestrator.api.offload import accel_response, offloading
from orchestrator.api.ranges import requested_range
from orchestrator.blobs import BlobStore
from orchestrator.domain.downloads import TransferCheck, check_transfer, delivery_budget_bytes
from orchestrator.errors import (
    Conflict,
    Forbidden,
    NotFound,
    OrchestratorError,
    RangeNotSatisfiable,
    StoreRefused,
    StoreUnavailable,
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
from orchestrator.supervisor import spawn

log = structlog.get_logger(__name__)
router = APIRouter(tags=["device"])

RENEW_EVERY_S = 10.0  # at most; also at most a sixth of the claim lease
RELEASE_RETRY_S = (0.05, 1.0)  # first and largest pause between releases while Redis is away
_RELEASES: set[asyncio.Task[None]] = set()  # releases waiting for Redis (held: not collected)
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
        "ETag": "The whole file's sha256, hex, quoted: a strong entity tag (If-Range takes it)",
        "Content-Range": "`bytes {first}-{last}/{size}`",
    }
    names = [
        "Content-Disposition",
        "Content-Length",
        "Accept-Ranges",
        "X-Content-SHA256",
        "ETag",
        *extra,
    ]
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
        },
        {
            "name": "If-Range",
            "in": "header",
            "schema": {"type": "string"},
            "description": (
                "The ETag of the file the device holds part of: Range is honoured only when "
                "it is this file's; otherwise the whole file is sent (200)"
            ),
        },
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
        device_id: str,
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
        self._device_id = device_id
        self._claim = claim
        self._stored = stored
        self._first = first
        self._end = end
        self._partial = partial
        self._metrics = metrics

    def _response_headers(self) -> list[tuple[bytes, bytes]]:
        headers = file_headers(self._stored, self._first, self._end, partial=self._partial)
        return [(name.lower().encode(), value.encode()) for name, value in headers.items()]

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
                        # the lease) is ended then, so one stalled connection never holds
                        # the key for long and never outlives its claim.
                        nonlocal outcome
                        renewed_at = time.monotonic()  # the claim was taken just before
                        renew_due = renewed_at + renew_every_s
                        while True:
                            now = time.monotonic()
                            check, look_at = check_transfer(
                                now_s=now,
                                last_progress_s=last_progress,
                                renew_due_s=renew_due,
                                stall_limit_s=stall_limit_s,
                            )
                            if check is TransferCheck.WAIT:
                                await anyio.sleep(look_at - now)
                                continue
                            if check is TransferCheck.STALLED:
                                outcome = "stalled"
                                group.cancel_scope.cancel()
                                return
                            try:
                                held = await self._keys.renew(self._key, self._claim)
                            except StoreRefused:
                                raise
                            except StoreUnavailable:
                                # Redis away (a restart): the claim holds until its lease
                                # ends, so stream on and renew at the next turn; end the
                                # transfer only once half the lease has gone unrenewed.
                                held = time.monotonic() - renewed_at < lease_s / 2
                            else:
                                renewed_at = time.monotonic()
                            if not held:
                                outcome = "claim lost"
                                group.cancel_scope.cancel()
                                return
                            renew_due = time.monotonic() + renew_every_s

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
                try:
                    state = await self._release(sent)
                except StoreRefused:
                    raise
                except StoreUnavailable as exc:
                    # Redis away as the transfer ends: release once it answers, so the
                    # device's resume is not refused as busy until the lease lapses.
                    state = "release pending"
                    self._release_later(sent, exc.message)
            log.info(
                "download ended",
                key_state=state,
                # After a complete response uvicorn also answers receive() with a disconnect.
                outcome="disconnected" if disconnected and outcome == "aborted" else outcome,
                file_name=self._stored.name,
                device_id=self._device_id,
                first_byte=self._first,
                bytes_sent=sent - self._first,
            )
        # An unfinished response (claim lost, stalled, time limit) makes uvicorn close the
        # connection, which is how the device learns to come back with Range.

    async def _release(self, end: int) -> str:
        """Free the claim with bytes [first, end) counted; the key's state after it."""
        state = await self._keys.release(
            self._key, self._claim.claim_id, first=self._first, end=end
        )
        if state == "spent":  # exactly one release spends a key
            self._metrics.download_keys_used.inc()
        return state

    def _release_later(self, end: int, error: str) -> None:
        """Release in the background, retrying while Redis is away, until the claim's lease
        would have freed the key anyway."""
        give_up_at = time.monotonic() + self._keys.claim_lease_ms / 1000

        async def release_when_back() -> None:
            pause_s = RELEASE_RETRY_S[0]
            while True:
                await anyio.sleep(pause_s)
                try:
                    state = await self._release(end)
                except StoreRefused:
                    raise
                except StoreUnavailable as exc:
                    if time.monotonic() + pause_s < give_up_at:
                        pause_s = min(pause_s * 2, RELEASE_RETRY_S[1])
                        continue
                    log.warning(
                        "download claim left to lapse: Redis stayed away",
                        device_id=self._device_id,
                        error=exc.message,
                    )
                    return
                log.info(
                    "download claim released after Redis came back",
                    device_id=self._device_id,
                    key_state=state,
                )
                return

        log.warning(
            "download claim release waits for Redis", device_id=self._device_id, error=error
        )
        task = spawn(release_when_back, name="download-release", restart=False)
        _RELEASES.add(task)
        task.add_done_callback(_RELEASES.discard)


_KEY_QUERY = Query(
    description="The download key from the command payload; unknown, expired or spent keys are 401",
    json_schema_extra={"pattern": KEY_PATTERN},
)


@dataclass(frozen=True)
class _Asked:
    """A download request that passed every check before the key's use: who, what, which bytes."""

    device_id: str
    stored: StoredFile
    first: int
    end: int
    partial: bool


class _Refusals:
    """Counts each refusal by reason (`ota_download_keys_rejected_total`) and returns it."""

    def __init__(self, context: AppContext) -> None:
        self._rejected = context.metrics.download_keys_rejected

    def __call__(self, reason: str, error: OrchestratorError) -> OrchestratorError:
        self._rejected.labels(reason).inc()
        return error


async def _check_request(
    request: Request, key: str, context: AppContext, refuse: _Refusals
) -> _Asked:
    """The device, the key's binding, the file and the Range, checked without using the key."""
    try:
        device = await current_device(request, context)
    except Unauthorized as exc:
        raise refuse("device_auth", exc) from None
    record = await context.stores.download_keys.get(key)
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
        byte_range = requested_range(
            request.headers.get("range"), request.headers.get("if-range"), stored.size, etag(stored)
        )
    except RangeNotSatisfiable as exc:
        raise refuse("bad_range", exc) from None
    first, end = byte_range or (0, stored.size)
    return _Asked(device.id, stored, first, end, partial=byte_range is not None)


def _refusal(verdict: ClaimVerdict, asked: _Asked, budget: int, refuse: _Refusals) -> Exception:
    """The error for a key that may not be used now (any verdict but OK)."""
    if verdict is ClaimVerdict.BUSY:
        return refuse(
            "busy",
            Conflict(
                "another transfer is using this download key; when it ends, resume with a "
                "Range header"
            ),
        )
    if verdict is ClaimVerdict.EXHAUSTED:
        return refuse(
            "exhausted",
            Unauthorized(
                f"this download key may send at most {budget} bytes in all (twice the "
                f"{asked.stored.size}-byte file) and this request for {asked.end - asked.first} "
                "bytes would go past that; resume only from where the transfer broke off "
                "(Range: bytes=N-), or ask for a new key by sending the download command again"
            ),
        )
    if verdict is ClaimVerdict.WRONG_DEVICE:
        return refuse("wrong_device", Forbidden(_OTHER_DEVICE))
    return refuse("spent" if verdict is ClaimVerdict.SPENT else "unknown", Unauthorized(_DEAD_KEY))


_DOWNLOAD_ERRORS = (400, 401, 403, 404, 409, 416, 503)


@router.get(
    "/v2/device/download",
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
        **error_responses(*_DOWNLOAD_ERRORS),
    },
)
async def download_file(
    request: Request, key: str = _KEY_QUERY, context: AppContext = Depends(get_context)
) -> Response:
    """Stream the file bound to `key` to the device the key was issued to.

    With OTA_DOWNLOAD_OFFLOAD=x-accel, a request nginx forwarded gets, after the same checks,
    an `X-Accel-Redirect` answer, and nginx sends the bytes.
    """
    refuse = _Refusals(context)
    asked = await _check_request(request, key, context, refuse)
    stored, first, end = asked.stored, asked.first, asked.end
    offloaded = offloading(request, context.settings)
    # The service cannot renew a claim while nginx sends, so an offloaded claim is held as long
    # as one of the service's own transfers may run; nginx's report ends it (almost always)
    # sooner, and only a report that never comes (nginx killed) leaves it to lapse.
    lease_ms = TRANSFER_LIMIT_S * 1000 if offloaded else None
    budget = delivery_budget_bytes(stored.size)
    keys = context.stores.download_keys
    verdict, claim = await keys.claim(
        key, asked.device_id, span_bytes=end - first, budget_bytes=budget, lease_ms=lease_ms
    )
    if claim is None:
        raise _refusal(verdict, asked, budget, refuse)
    if offloaded:  # nginx sends the bytes and reports them (orchestrator/api/offload.py)
        return accel_response(context.settings, stored, key, claim)
    return KeyedFileResponse(
        keys=keys,
        blobs=context.blobs,
        key=key,
        device_id=asked.device_id,
        claim=claim,
        stored=stored,
        first=first,
        end=end,
        partial=asked.partial,
        metrics=context.metrics,
    )


def _bodiless(responses: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """The same responses, documented without their bodies (a HEAD answer carries none)."""
    return {
        code: {name: value for name, value in entry.items() if name != "content"}
        for code, entry in responses.items()
    }


@router.head(
    "/v2/device/download",
    name="download_file",  # errors name the same action as GET's, byte for byte
    status_code=200,
    response_class=Response,
    dependencies=[Security(DEVICE_TOKEN)],
    openapi_extra=DOWNLOAD,
    responses=_bodiless(
        {
            200: {"description": "What GET would send", "headers": _file_headers()},
            206: {
                "description": "What GET would send for this Range",
                "headers": _file_headers("Content-Range"),
            },
            **error_responses(*_DOWNLOAD_ERRORS),
        }
    ),
)
async def check_download(
    request: Request, key: str = _KEY_QUERY, context: AppContext = Depends(get_context)
) -> Response:
    """GET's status and headers, without a body, and without claiming or spending `key`.

    The same checks as GET and the same errors (without their bodies): a device may ask how
    big its file is, or whether its key still works, as often as it likes.
    """
    refuse = _Refusals(context)
    asked = await _check_request(request, key, context, refuse)
    stored = asked.stored
    budget = delivery_budget_bytes(stored.size)
    verdict = await context.stores.download_keys.check(
        key, asked.device_id, span_bytes=asked.end - asked.first, budget_bytes=budget
    )
    if verdict is not ClaimVerdict.OK:
        raise _refusal(verdict, asked, budget, refuse)
    return Response(
        status_code=206 if asked.partial else 200,
        headers=file_headers(stored, asked.first, asked.end, partial=asked.partial),
    )
