"""A streaming multipart/form-data reader for file uploads.

Starlette's form parser spools a whole upload before the handler runs, so it cannot refuse
an oversized or misnamed file early. This reader hands file bytes to a BlobWriter as they
arrive and stops at the first byte over the limit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header

from orchestrator.blobs import BlobWriter
from orchestrator.errors import InvalidInput, PayloadTooLarge

MAX_FIELD_BYTES = 64 * 1024
MAX_PARTS = 8  # file, type, description and room to spare; a form of thousands is refused


@dataclass
class UploadForm:
    """What the form held: its text fields and the uploaded file's name and size."""

    fields: dict[str, str] = field(default_factory=dict)
    file_name: str | None = None
    file_size: int = 0


@dataclass
class _Part:
    name: str = ""
    file_name: str | None = None
    data: bytearray = field(default_factory=bytearray)


async def read_upload(
    content_type: str,
    body: AsyncIterator[bytes],
    writer: BlobWriter,
    *,
    max_file_size_bytes: int,
    on_file_name: Callable[[str], Awaitable[None]],
) -> UploadForm:
    """Stream the form's `file` part into `writer`; other parts become text fields.

    `on_file_name` runs as soon as the file's name is known, before its bytes are read,
    so a taken or invalid name is refused without receiving the file.
    """
    media_type, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if media_type != b"multipart/form-data" or not boundary:
        raise InvalidInput(
            "the upload must be multipart/form-data with a 'file' part, "
            "for example: curl -F file=@firmware.bin -F type=firmware",
            errors=[{"loc": "body", "msg": "expected multipart/form-data"}],
        )

    form = UploadForm()
    events: list[tuple[str, bytes]] = []
    header_name = bytearray()
    header_value = bytearray()
    headers: dict[bytes, bytes] = {}
    finished = False

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])
        if len(header_value) > MAX_FIELD_BYTES:
            raise ValueError(f"a part header is longer than {MAX_FIELD_BYTES} bytes")

    def on_header_end() -> None:
        headers[bytes(header_name).lower()] = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        events.append(("headers", headers.get(b"content-disposition", b"")))
        headers.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        events.append(("data", bytes(data[start:end])))

    def on_part_end() -> None:
        events.append(("end", b""))

    def on_end() -> None:
        nonlocal finished
        finished = True

    parser = MultipartParser(
        boundary,
        callbacks={
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_end": on_end,
        },
    )
    part = _Part()
    parts = 0
    async for chunk in body:
        try:
            parser.write(chunk)
        except Exception as exc:  # python-multipart raises several types for bad framing
            raise InvalidInput(
                f"the multipart body is malformed ({exc}); let your HTTP client build it",
                errors=[{"loc": "body", "msg": "malformed multipart body"}],
            ) from exc
        for kind, data in events:
            if kind == "headers":
                parts += 1
                if parts > MAX_PARTS:
                    raise InvalidInput(
                        f"the form has more than {MAX_PARTS} parts; send file, type and "
                        "description only",
                        errors=[{"loc": "body", "msg": f"more than {MAX_PARTS} parts"}],
                    )
                _, options = parse_options_header(data.decode("latin-1"))
                part = _Part(name=options.get(b"name", b"").decode())
                if b"filename" in options:
                    part.file_name = options[b"filename"].decode("utf-8", "replace")
                if part.name == "file" and part.file_name is not None:
                    if form.file_name is not None:
                        raise InvalidInput(
                            "send one file per upload",
                            errors=[{"loc": "file", "msg": "more than one file"}],
                        )
                    form.file_name = part.file_name
                    await on_file_name(part.file_name)
            elif kind == "data":
                if part.name == "file" and part.file_name is not None:
                    if writer.size + len(data) > max_file_size_bytes:
                        raise PayloadTooLarge(
                            f"the file is larger than the limit of {max_file_size_bytes} bytes "
                            "(OTA_MAX_FILE_SIZE); raise the limit or upload a smaller image"
                        )
                    await writer.write(data)
                else:
                    if len(part.data) + len(data) > MAX_FIELD_BYTES:
                        raise InvalidInput(
                            f"form field {part.name!r} is longer than {MAX_FIELD_BYTES} bytes",
                            errors=[{"loc": part.name, "msg": "too long"}],
                        )
                    part.data.extend(data)
            elif part.name and part.file_name is None:
                form.fields[part.name] = part.data.decode("utf-8", "replace")
        events.clear()
    parser.finalize()
    if not finished:
        # python-multipart's finalize() does not check this, and a body cut off inside the
        # file part would otherwise be stored as a complete (truncated) image.
        raise InvalidInput(
            "the multipart body ends before its closing boundary, so the upload was cut off; "
            "send it again",
            errors=[{"loc": "body", "msg": "missing closing boundary"}],
        )
    form.file_size = writer.size
    return form
