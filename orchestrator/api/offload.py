"""Download offload to nginx (`OTA_DOWNLOAD_OFFLOAD=x-accel`): the service checks, nginx sends.

The download route authenticates the device and claims the key as always, then answers with
`X-Accel-Redirect` to the internal nginx location that serves the stored file
(`OTA_DOWNLOAD_OFFLOAD_PREFIX`) instead of streaming it. nginx sends the bytes (sendfile,
Range) and, once the response has ended, complete or broken off, reports through
`post_action` to `POST /v2/internal/downloads/report` what it sent: its status, Content-Range
and body bytes. The report releases the claim with those bytes, as the service's own stream
does when it ends: a complete delivery spends the key, a broken one leaves it for a resume.

nginx vouches for the downloads it forwards, and signs its reports, with the installation's
secret (`OTA_DOWNLOAD_OFFLOAD_SECRET`, header `X-OTA-Offload-Secret`). A download request
without it (a device that reaches the service directly) is streamed by the service itself.
deploy/nginx/ota-offload.conf.template is the nginx side; docs/download-offload.md explains it.
"""

from __future__ import annotations

import hmac
from urllib.parse import quote, urlencode

import structlog
from fastapi import APIRouter, Depends, Header, Query, Request
from starlette.responses import Response

from orchestrator.api.context import AppContext, get_context
from orchestrator.api.delivery_headers import identity_headers
from orchestrator.api.errors import error_responses
from orchestrator.api.ranges import delivered_span
from orchestrator.api.schemas import DownloadReported, Envelope
from orchestrator.errors import NotFound, Unauthorized
from orchestrator.settings import Settings
from orchestrator.store.download_keys import Claim
from orchestrator.store.files import StoredFile

log = structlog.get_logger(__name__)
router = APIRouter(tags=["internal"])

SECRET_HEADER = "X-OTA-Offload-Secret"  # noqa: S105 - a header name, not a secret
REPORT_PATH = "/v2/internal/downloads/report"


def offloading(request: Request, settings: Settings) -> bool:
    """True when offload is on and nginx forwarded this request (it carries the secret)."""
    if settings.download_offload != "x-accel":
        return False
    return _secret_matches(request.headers.get(SECRET_HEADER, ""), settings)


def _secret_matches(given: str, settings: Settings) -> bool:
    expected = settings.download_offload_secret
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


def accel_response(settings: Settings, stored: StoredFile, key: str, claim: Claim) -> Response:
    """The answer that hands the transfer to nginx: no body, the internal location to serve.

    The key and the claim ride in the redirect's query, so nginx's report names them; the
    headers are the ones the service would send itself (nginx adds Content-Length, Range).
    """
    query = urlencode({"key": key, "claim": claim.claim_id})
    target = f"{settings.download_offload_prefix}{quote(stored.path)}?{query}"
    return Response(
        status_code=200,
        media_type="application/octet-stream",
        headers={"X-Accel-Redirect": target, **identity_headers(stored)},
    )


@router.post(
    REPORT_PATH,
    responses=error_responses(400, 401, 404, 503),
    summary="nginx reports an offloaded download (internal)",
)
async def report_download(
    key: str = Query(description="The download key the transfer used"),
    claim: str = Query(description="The claim the service took for it"),
    secret: str = Header("", alias=SECRET_HEADER, description="OTA_DOWNLOAD_OFFLOAD_SECRET"),
    status: int = Header(alias="X-OTA-Status", ge=0, description="nginx's `$status`"),
    content_range: str = Header(
        "", alias="X-OTA-Content-Range", description="nginx's `$sent_http_content_range`"
    ),
    bytes_sent: int = Header(alias="X-OTA-Bytes-Sent", ge=0, description="`$body_bytes_sent`"),
    completion: str = Header(
        "", alias="X-OTA-Completion", description="`$request_completion`: OK when complete"
    ),
    context: AppContext = Depends(get_context),
) -> Envelope[DownloadReported]:
    """End an offloaded transfer with the bytes nginx sent: spend the key or leave it resumable.

    Only nginx calls this (its `post_action`), with the installation's secret.
    """
    settings = context.settings
    if settings.download_offload != "x-accel":
        raise NotFound(
            "download offload is off (OTA_DOWNLOAD_OFFLOAD is empty), so there is nothing to "
            "report; set OTA_DOWNLOAD_OFFLOAD=x-accel on the service behind nginx"
        )
    if not _secret_matches(secret, settings):
        raise Unauthorized(
            f"{SECRET_HEADER} is missing or wrong; nginx must send OTA_DOWNLOAD_OFFLOAD_SECRET",
            challenge=f'{SECRET_HEADER} realm="ota-offload"',
        )
    first, end = delivered_span(status, content_range, bytes_sent)
    state = await context.stores.download_keys.release(key, claim, first=first, end=end)
    context.metrics.download_bytes.inc(end - first)
    if state == "spent":  # exactly one release spends a key
        context.metrics.download_keys_used.inc()
    log.info(
        "download ended",
        sent_by="nginx",
        key_state=state,
        outcome="complete" if completion == "OK" else "disconnected",
        nginx_status=status,
        bytes_sent=end - first,
    )
    return Envelope(
        action="report download",
        message=f"Download reported; the key is {state}.",
        data=DownloadReported(key_state=state, bytes_delivered=end - first),
    )
