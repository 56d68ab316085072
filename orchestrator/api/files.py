"""Firmware and logo files: upload (streamed), list (seed 000), delete.

The listing answers seed 000's `{"files": [...]}` and a delete the seed's delete body; an upload
answers in the envelope.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from orchestrator.api.auth import InProject, in_project, require
from orchestrator.api.context import AppContext, get_context
from orchestrator.api.errors import IN_PROJECT, SCOPED, error_responses
from orchestrator.api.listing import one_page, streamed
from orchestrator.api.schemas import Done, Envelope, FileList, FileListItem, FileOut
from orchestrator.api.uploads import MAX_FIELD_BYTES, read_upload
from orchestrator.domain.auth import Principal, Scope
from orchestrator.domain.files import (
    EXTENSIONS,
    FILE_NAME,
    FileType,
    parse_file_type,
    validate_file_name,
)
from orchestrator.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    ProjectDeleting,
)
from orchestrator.numerals import whole_number
from orchestrator.store.files import StoredFile
from orchestrator.timeutil import isoformat_z, utc_now

router = APIRouter(tags=["files"])

MULTIPART_OVERHEAD = 1024 * 1024  # room for boundaries and text fields beside the file

FILE_TYPES = [file_type.value for file_type in FileType]
_NAMES = "; ".join(
    f"{file_type}: {', '.join(extensions)}" for file_type, extensions in EXTENSIONS.items()
)
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "type"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": (
                                f"The image; its file name must match `{FILE_NAME.pattern}` and "
                                f"end in an extension of its type ({_NAMES}), and be new in the "
                                "project (409 otherwise). At most OTA_MAX_FILE_SIZE bytes (413)."
                            ),
                        },
                        "type": {"type": "string", "enum": FILE_TYPES},
                        "description": {
                            "type": "string",
                            "description": f"Up to {MAX_FIELD_BYTES} bytes of UTF-8",
                        },
                    },
                }
            }
        },
    }
}


def _conflict(name: str) -> Conflict:
    return Conflict(
        f"a file named {name!r} exists in this project; firmware is immutable, "
        "so upload the new image under a new name (e.g. with its version in it)"
    )


@router.post(
    "/v2/projects/{project_id}/files",
    status_code=201,
    openapi_extra=UPLOAD_BODY,
    responses=error_responses(400, 409, 413, *IN_PROJECT),
)
async def upload_file(
    request: Request, at: InProject = Depends(in_project(Scope.FILES_WRITE))
) -> Envelope[FileOut]:
    """Upload a firmware or logo file (multipart: file, type, description)."""
    context, project_id = at.context, at.record.id
    limit = context.settings.max_file_size_bytes
    declared = whole_number(request.headers.get("content-length", ""))
    if declared is not None and declared > limit + MULTIPART_OVERHEAD:
        raise PayloadTooLarge(
            f"the upload is {declared} bytes, over the limit of {limit} bytes "
            "(OTA_MAX_FILE_SIZE); raise the limit or upload a smaller image"
        )

    async def check_name(name: str) -> None:
        if "/" in name or "\\" in name:
            validate_file_name(name, FileType.FIRMWARE)  # raises the path error
        if await context.stores.files.exists(project_id, name):
            raise _conflict(name)

    writer = context.blobs.writer(project_id)
    committed = False
    try:
        form = await read_upload(
            request.headers.get("content-type", ""),
            request.stream(),
            writer,
            max_file_size_bytes=limit,
            on_file_name=check_name,
        )
        if form.file_name is None:
            raise InvalidInput(
                "the form has no 'file' part; send the image as -F file=@firmware.bin",
                errors=[{"loc": "file", "msg": "field required"}],
            )
        file_type = parse_file_type(form.fields.get("type"))
        name = validate_file_name(form.file_name, file_type)
        try:
            relative = await writer.commit()
        except FileNotFoundError as exc:  # only a project's deletion removes its directory
            raise ProjectDeleting(project_id) from exc
        committed = True
        stored = StoredFile(
            project_id=project_id,
            name=name,
            type=file_type,
            description=form.fields.get("description", ""),
            size=writer.size,
            sha256=writer.sha256,
            time=isoformat_z(utc_now()),
            path=relative,
        )
        try:
            created = await context.stores.files.create(stored)
        except ProjectDeleting:
            await context.blobs.remove(relative)
            raise
        if not created:
            await context.blobs.remove(relative)
            raise _conflict(name)
    finally:
        if not committed:
            await writer.discard()
    return Envelope(
        status=201,
        action="upload file",
        message="File uploaded.",
        data=FileOut.model_validate(stored, from_attributes=True),
    )


async def _listed(files: list[StoredFile]) -> Response:
    """Seed 000's listing of `files`."""
    items = [FileListItem.model_validate(f, from_attributes=True) for f in files]
    return await streamed(FileList(files=[]), "files", one_page(items))


TYPE_QUERY = Query(description="'firmware' or 'logo'", json_schema_extra={"enum": FILE_TYPES})
# Both listings are seed 000's "list files", per project and across the key's projects.
LISTING: dict[str, Any] = {"name": "list_files", "response_model": FileList}


@router.get(
    "/v2/projects/{project_id}/files", **LISTING, responses=error_responses(400, *IN_PROJECT)
)
async def list_files(
    type: str = TYPE_QUERY, at: InProject = Depends(in_project(Scope.FILES_READ))
) -> Response:
    """Files of one type in this project, by name."""
    file_type = parse_file_type(type)
    return await _listed(await at.context.stores.files.of_type([at.record.id], file_type))


@router.get("/v2/files", **LISTING, responses=error_responses(400, *SCOPED))
async def list_all_files(
    type: str = TYPE_QUERY,
    context: AppContext = Depends(get_context),
    principal: Principal = Depends(require(Scope.FILES_READ)),
) -> Response:
    """Files of one type in every project this API key may use."""
    file_type = parse_file_type(type)
    scope = sorted(principal.projects) if principal.projects else None
    return await _listed(await context.stores.files.of_type(scope, file_type))


async def _refuse_if_in_use(context: AppContext, project_id: str, name: str) -> None:
    """409 while an active rollout ships the file (or rolls back to it) or a live key may send
    it: deleting it then would let a new upload under the name change what they announced."""
    stores = context.stores
    using: list[str] = []
    for rollout_id in await stores.rollouts.active_ids():
        record = await stores.rollouts.get(rollout_id)
        if record is None or record.project_id != project_id:
            continue
        rollback = record.plan.get("rollback") or {}
        if name in (record.plan.get("firmware", {}).get("file"), rollback.get("file")):
            using.append(f"{record.id} ({record.name}, {record.state.value})")
    if using:
        raise Conflict(
            f"file {name!r} is used by active rollout(s) {', '.join(using)}; abort them or wait "
            "until they finish, then delete it"
        )
    keys = await stores.download_keys.live_for_file(project_id, name)
    if keys:
        raise Conflict(
            f"file {name!r} has {len(keys)} live download key(s) from commands sent for it; "
            "wait until they are used or expire (OTA_DOWNLOAD_KEY_TTL), then delete it"
        )


@router.delete(
    "/v2/projects/{project_id}/files/{name}",
    responses=error_responses(409, *IN_PROJECT),
)
async def delete_file(
    project_id: str,
    name: str = Path(
        description="The file's name (no other name can exist)",
        json_schema_extra={"pattern": FILE_NAME.pattern},
    ),
    at: InProject = Depends(in_project(Scope.FILES_WRITE)),
) -> Done:
    """Delete a file; download keys for it then answer 404."""
    context = at.context
    await _refuse_if_in_use(context, project_id, name)
    relative = await context.stores.files.delete(project_id, name)
    if relative is None:
        raise NotFound(f"file {name!r} not found in project {project_id}")
    await context.blobs.remove(relative)
    return Done(action="delete file")
