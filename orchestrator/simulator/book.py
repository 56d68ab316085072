"""The device book: a JSON file of the simulated devices created so far, per project.

The service shows a device token only in the answer that creates the device, so a second run
can reuse its devices only if the first one wrote their tokens down. The file maps a project
id to a list of `{id, token, name, tags, version}`; it holds secrets and is written 0600,
atomically (a new file renamed over the old one).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from orchestrator.errors import OrchestratorError

DEFAULT_BOOK_PATH = Path(".ota/simulated-devices.json")


class BookError(OrchestratorError):
    """The device book cannot be read or written; the message names the file and the fix."""


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """Who a simulated device is: its id and token, and what the book remembers of it."""

    id: str
    token: str
    name: str = ""
    tags: tuple[str, ...] = ()
    version: str = ""  # the firmware it last installed; empty before the first install

    def has_tags(self, tags: Sequence[str]) -> bool:
        """True when the device carries every one of `tags`."""
        return set(tags) <= set(self.tags)


class _Entry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    token: str
    name: str = ""
    tags: list[str] = []
    version: str = ""


_BOOK = TypeAdapter(dict[str, list[_Entry]])


class DeviceBook:
    """Reads and writes the device book at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, project_id: str) -> list[DeviceIdentity]:
        """The devices of `project_id` in the book (none when the file does not exist)."""
        return [
            DeviceIdentity(e.id, e.token, e.name, tuple(e.tags), e.version)
            for e in self._read().get(project_id, [])
        ]

    def save(self, project_id: str, devices: Sequence[DeviceIdentity]) -> None:
        """Replace the devices of `project_id` in the book; other projects stay as they are."""
        book = self._read()
        book[project_id] = [
            _Entry(id=d.id, token=d.token, name=d.name, tags=list(d.tags), version=d.version)
            for d in devices
        ]
        data = _BOOK.dump_json(book, indent=2) + b"\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(prefix=".devices-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "wb") as stream:  # mkstemp creates it 0600
                    stream.write(data)
                os.replace(temporary, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError as exc:
            raise BookError(
                f"cannot write the device book {self.path}: {exc.strerror or exc}; "
                "pass --state with a writable path"
            ) from exc

    def _read(self) -> dict[str, list[_Entry]]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise BookError(
                f"cannot read the device book {self.path}: {exc.strerror or exc}; "
                "pass --state with a readable path"
            ) from exc
        try:
            return _BOOK.validate_json(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "the top level"
            raise BookError(
                f"the device book {self.path} is not a map of project id to devices "
                f"({where}: {first['msg']}); fix or delete it, or pass another --state"
            ) from None
