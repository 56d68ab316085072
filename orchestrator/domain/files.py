"""Firmware and logo files: their types, the names and extensions each accepts."""

from __future__ import annotations

import re
from enum import StrEnum

from orchestrator.errors import InvalidInput


class FileType(StrEnum):
    """What a stored file is for (seed 000)."""

    FIRMWARE = "firmware"
    LOGO = "logo"


EXTENSIONS: dict[FileType, tuple[str, ...]] = {
    FileType.FIRMWARE: (".bin", ".hex", ".elf"),
    FileType.LOGO: (".png", ".jpg", ".bmp"),
}

FILE_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def parse_file_type(value: str | None) -> FileType:
    """The file type named by `value`; InvalidInput otherwise (seed: 'firmware' or 'logo')."""
    try:
        return FileType(value or "")
    except ValueError:
        raise InvalidInput(
            f"type must be 'firmware' or 'logo', got {value!r}",
            errors=[{"loc": "type", "msg": "must be 'firmware' or 'logo'"}],
        ) from None


def validate_file_name(name: str, file_type: FileType) -> str:
    """`name` if it is a plain file name with an extension its type accepts."""
    if "/" in name or "\\" in name:
        raise InvalidInput(
            f"file name {name!r} contains a path; send the bare name, such as firmware_v2.1.0.bin",
            errors=[{"loc": "file", "msg": "must not contain a path"}],
        )
    if not FILE_NAME.fullmatch(name) or name in {".", ".."}:
        raise InvalidInput(
            f"file name {name!r} must be 1 to 128 characters of letters, digits, '.', '_' or '-'",
            errors=[{"loc": "file", "msg": "must match ^[A-Za-z0-9._-]{1,128}$"}],
        )
    allowed = EXTENSIONS[file_type]
    if not name.lower().endswith(allowed):
        raise InvalidInput(
            f"a {file_type} file must end in {', '.join(allowed)}; got {name!r}",
            errors=[{"loc": "file", "msg": f"extension must be one of {', '.join(allowed)}"}],
        )
    return name
