"""The headers that describe a file a device downloads, the same for GET, HEAD and nginx."""

from __future__ import annotations

from orchestrator.store.files import StoredFile


def etag(stored: StoredFile) -> str:
    """The file's strong entity tag: its sha256, quoted (firmware files never change bytes)."""
    return f'"{stored.sha256}"'


def identity_headers(stored: StoredFile) -> dict[str, str]:
    """What names the file whoever sends its bytes (the service, or nginx after X-Accel)."""
    return {
        # Seed 000's form, unquoted: file names are RFC 9110 tokens ([A-Za-z0-9._-]).
        "Content-Disposition": f"attachment; filename={stored.name}",
        "Cache-Control": "no-store",
        "X-Content-SHA256": stored.sha256,
        "ETag": etag(stored),
    }


def file_headers(stored: StoredFile, first: int, end: int, *, partial: bool) -> dict[str, str]:
    """The headers of a response carrying bytes [first, end) of the file (206 if `partial`)."""
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Length": str(end - first),
        "Accept-Ranges": "bytes",
        **identity_headers(stored),
    }
    if partial:
        headers["Content-Range"] = f"bytes {first}-{end - 1}/{stored.size}"
    return headers
