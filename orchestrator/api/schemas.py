"""Request and response bodies (pydantic at the edge)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.domain.devices import DEFAULT_BRAND, DEFAULT_MODEL


class Strict(BaseModel):
    """A request body that refuses unknown fields, naming them."""

    model_config = ConfigDict(extra="forbid")


class Envelope(BaseModel):
    """The seed's success wrapper."""

    success: bool = True
    status: int
    action: str
    message: str


class ProjectCreate(Strict):
    name: str = Field(min_length=1, max_length=200)


class ProjectOut(BaseModel):
    id: str
    name: str
    created_at: str


class ProjectEnvelope(Envelope):
    data: ProjectOut


class ProjectListEnvelope(Envelope):
    data: list[ProjectOut]


class DeviceCreate(Strict):
    """Seed 003's body."""

    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)
    source: Literal["http", "mqtt"]
    tags: list[str] = Field(default_factory=list, max_length=100)
    brand: str | None = Field(default=DEFAULT_BRAND, max_length=200)
    model: str | None = Field(default=DEFAULT_MODEL, max_length=200)

    @field_validator("brand", "model")
    @classmethod
    def _default_custom(cls, value: str | None) -> str:
        return value or "Custom"


class DeviceMetadataPatch(Strict):
    allowed_commands: str = Field(
        description='Semicolon-separated command names, e.g. "configuration;reboot"; "" allows all',
        max_length=4000,
    )


class DevicePatch(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    tags: list[str] | None = Field(default=None, max_length=100)
    metadata: DeviceMetadataPatch | None = None


class DeviceMetadata(BaseModel):
    device_id: str
    device_token: str | None = Field(
        default=None, description="Only in the creation response; stored as a hash"
    )
    allowed_commands: str = ""


class DeviceOut(BaseModel):
    id: str
    name: str
    description: str
    brand: str
    model: str
    avatar: str
    last_seen: str
    tags: list[str]
    source: str
    created_at: str
    metadata: DeviceMetadata


class DeviceEnvelope(Envelope):
    data: DeviceOut


class DeviceListEnvelope(Envelope):
    data: list[DeviceOut]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null at the end"
    )


class Done(BaseModel):
    """The seed's reply to a delete."""

    action: str
    message: str = "Operation completed successfully"
    success: bool = True


class FileOut(BaseModel):
    name: str
    description: str
    size: int
    time: str
    sha256: str
    type: str


class FileListItem(BaseModel):
    description: str
    name: str
    size: int
    time: str
    sha256: str
    type: str
    project_id: str


class FileList(BaseModel):
    files: list[FileListItem]


class CommandRequest(Strict):
    """Seed 000's body: a command name and its data."""

    command: str = Field(min_length=1, examples=["configuration", "download_firmware"])
    data: dict[str, Any] = Field(default_factory=dict)


class CommandSent(BaseModel):
    command_id: str
    topic: str


class CommandResponse(BaseModel):
    success: bool = True
    message: str = "Command sent successfully"
    action: str = "send command"
    data: CommandSent


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    redis: bool | None = None
    mqtt: bool | None = None
