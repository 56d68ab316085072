"""Request and response bodies (pydantic at the edge): what the API answers and the client reads.

Every answer is an `Envelope[T]`: `{success, status, action, message, data}`, `data` the
thing asked for (a list for a listing, with its paging fields such as `next_cursor` beside
it). The seed's own shapes are the exceptions: the file listing (`FileList`), the command's
answer (`CommandResponse`) and the answer to a delete (`Done`); and so are the probes
(`Health`). This module imports only pydantic and the domain, so the client and the CLI
read the same models without loading the service.
"""

from __future__ import annotations

from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    WithJsonSchema,
    computed_field,
    field_validator,
)

from orchestrator.domain.commands import (
    ALLOWED_COMMANDS,
    COMMAND_NAME,
    FILE_COMMANDS,
    SEED_COMMANDS,
)
from orchestrator.domain.devices import (
    ALLOWED_COMMANDS_KEY,
    DEFAULT_BRAND,
    DEFAULT_MODEL,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_VALUE_CHARS,
    METADATA_KEY,
    RESERVED_METADATA_KEYS,
    TAG,
)
from orchestrator.domain.files import FileType
from orchestrator.domain.hooks import MAX_SECRET
from orchestrator.domain.notices import Notice
from orchestrator.domain.projects import MAX_DESCRIPTION, MAX_NAME, MAX_TAGS


class Strict(BaseModel):
    """A request body that refuses unknown fields, naming them."""

    model_config = ConfigDict(extra="forbid")


# Checked by validate_tags, which names the bad tag; documented here.
Tag = Annotated[str, WithJsonSchema({"type": "string", "pattern": TAG.pattern})]
TAGS_TEXT = "Tags: 1 to 64 characters each, without spaces, ':', ';' or ','"


class Reply(BaseModel):
    """A response body: every field is always there, defaults included."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


T = TypeVar("T")


class Envelope(Reply, Generic[T]):
    """Every answer (seed 003's): the action in words, a sentence about it, and `data`."""

    success: Literal[True] = True
    status: int = Field(default=200, description="The HTTP status, repeated")
    action: str = Field(description="What was done, in words: the route's name")
    message: str
    data: T


class Paged(Envelope[list[T]], Generic[T]):
    """A listing read a page at a time: `data` and where the next page starts."""

    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null at the end"
    )


class ProjectCreate(Strict):
    """The body of docs.qubitro.com's "Create a new project" (`description` optional here)."""

    name: str = Field(min_length=1, max_length=MAX_NAME)
    description: str = Field(
        default="", max_length=MAX_DESCRIPTION, description="What the project is for"
    )
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS, description=TAGS_TEXT)


class ProjectPatch(Strict):
    """What to change; a field left out or null stays as it is."""

    name: str | None = Field(default=None, min_length=1, max_length=MAX_NAME)
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION)
    tags: list[Tag] | None = Field(default=None, max_length=MAX_TAGS, description=TAGS_TEXT)


class ProjectOut(Reply):
    id: str
    name: str
    description: str
    tags: list[str]
    created_at: str
    created: str = Field(
        description="The same as created_at (the name early versions of the Node.js SDK read)"
    )
    deleting: bool = Field(
        description="True while the project's deletion has begun and not finished; "
        "DELETE it again to finish"
    )


ProjectEnvelope = Envelope[ProjectOut]
ProjectListEnvelope = Envelope[list[ProjectOut]]


MAX_ALLOWED_COMMANDS_CHARS = 4000
_ALLOWED_COMMANDS_JSON = {
    "type": "string",
    "maxLength": MAX_ALLOWED_COMMANDS_CHARS,
    "pattern": ALLOWED_COMMANDS.pattern,
    "description": 'Semicolon-separated command names, e.g. "configuration;reboot"; "" allows all',
}
_VALUE_JSON = {"type": "string", "maxLength": MAX_METADATA_VALUE_CHARS}
METADATA_TEXT = (
    f"allowed_commands, and custom keys: at most {MAX_METADATA_ENTRIES}, each of 1 to 64 "
    f"characters without spaces or ':', with a text value of at most "
    f"{MAX_METADATA_VALUE_CHARS} characters (checked in that order; the 400 names the key)"
)


def _metadata_json(value: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of a body's `metadata`: allowed_commands and the custom keys."""
    return {
        "type": "object",
        "properties": {ALLOWED_COMMANDS_KEY: _ALLOWED_COMMANDS_JSON},
        "additionalProperties": value,
        "propertyNames": {
            "pattern": METADATA_KEY.pattern,
            "not": {"enum": list(RESERVED_METADATA_KEYS)},
        },
        "if": {"required": [ALLOWED_COMMANDS_KEY]},
        "then": {"maxProperties": MAX_METADATA_ENTRIES + 1},
        "else": {"maxProperties": MAX_METADATA_ENTRIES},
    }


class DeviceCreate(Strict):
    """Seed 003's body, and metadata (allowed_commands and custom keys)."""

    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)
    source: Literal["http", "mqtt"]
    tags: list[Tag] = Field(default_factory=list, max_length=100, description=TAGS_TEXT)
    brand: str | None = Field(default=DEFAULT_BRAND, max_length=200)
    model: str | None = Field(default=DEFAULT_MODEL, max_length=200)
    metadata: Annotated[dict[str, str], WithJsonSchema(_metadata_json(_VALUE_JSON))] = Field(
        default_factory=dict, description=METADATA_TEXT
    )

    @field_validator("brand", "model")
    @classmethod
    def _default_custom(cls, value: str | None) -> str:
        return value or "Custom"


class DevicePatch(Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    tags: list[Tag] | None = Field(default=None, max_length=100, description=TAGS_TEXT)
    metadata: (
        Annotated[
            dict[str, str | None],
            WithJsonSchema(_metadata_json({"anyOf": [_VALUE_JSON, {"type": "null"}]})),
        ]
        | None
    ) = Field(
        default=None,
        description=METADATA_TEXT + "; merged into the device's: a key set to null is removed, "
        "keys left out are kept",
    )


class DeviceMetadata(Reply):
    """The seed's metadata: the device's id and token, allowed_commands, and custom keys."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, str] = Field(init=False)

    device_id: str
    device_token: str | None = Field(
        default=None, description="Only in the creation response; stored as a hash"
    )
    allowed_commands: str = ""


class DeviceOut(Reply):
    id: str
    name: str
    description: str
    brand: str
    model: str
    avatar: str
    last_seen: str = Field(
        description="When the service last heard from the device (a result of one of its "
        "commands, a request with its token), to the minute; 0001-01-01T00:00:00Z: never"
    )
    tags: list[str]
    source: Literal["http", "mqtt"]
    created_at: str
    metadata: DeviceMetadata
    firmware_version: str | None = Field(
        default=None,
        description="The firmware version the device last reported (a success or a health "
        "report carrying a version); null: none yet. target.versions selects on it",
    )
    firmware_version_at: str | None = Field(
        default=None, description="When the device reported firmware_version; null: never"
    )
    project_id: str = Field(
        serialization_alias="projectId",
        validation_alias=AliasChoices("projectId", "project_id"),  # the client reads it back
        description="The device's project (the Node.js SDK's Device deletes by this name)",
    )

    @computed_field(  # type: ignore[prop-decorator]
        alias="lastSeen", description="The same as last_seen (the Node.js SDK's Device's name)"
    )
    @property
    def sdk_last_seen(self) -> str:
        return self.last_seen


class DeviceCredentials(Reply):
    """What Qubitro's samples read from a creation: the id and the token (shown this once)."""

    device_id: str
    device_token: str


class DeviceCreated(DeviceOut):
    """A device with its new token, in data.metadata and in data.device_credentials."""

    device_credentials: DeviceCredentials


DeviceEnvelope = Envelope[DeviceOut]
DeviceCreatedEnvelope = Envelope[DeviceCreated]
DeviceListEnvelope = Paged[DeviceOut]


class Done(Reply):
    """The seed's reply to a delete."""

    action: str
    message: str = "Operation completed successfully"
    success: Literal[True] = True


class FileOut(Reply):
    name: str
    description: str
    size: int
    time: str
    sha256: str
    type: FileType


class FileListItem(Reply):
    description: str
    name: str
    size: int
    time: str
    sha256: str
    type: FileType
    project_id: str


class FileList(Reply):
    files: list[FileListItem]


_FILE_COMMANDS: list[JsonValue] = [name for name in sorted(FILE_COMMANDS)]


class CommandRequest(Strict):
    """Seed 000's body: a command name and its data."""

    model_config = ConfigDict(
        json_schema_extra={
            # download_firmware / download_logo name the file to send in data.file_name.
            "if": {
                "properties": {"command": {"enum": _FILE_COMMANDS}},
                "required": ["command"],
            },
            "then": {
                "properties": {
                    "data": {
                        "type": "object",
                        "properties": {"file_name": {"type": "string", "minLength": 1}},
                        "required": ["file_name"],
                    }
                },
                "required": ["data"],
            },
        }
    )

    command: str = Field(
        min_length=1,
        description=(
            "The topic level in {device_id}/control/{command}: one of the seed's commands ("
            + ", ".join(SEED_COMMANDS)
            + ") or a custom one"
        ),
        examples=["configuration", "download_firmware"],
        json_schema_extra={"pattern": COMMAND_NAME.pattern, "maxLength": 64},
    )
    data: dict[str, Any] = Field(
        default_factory=dict,
        description="Sent as the payload (with command_id); file commands need file_name",
    )


class CommandSent(Reply):
    command_id: str
    topic: str


class CommandResponse(Reply):
    success: Literal[True] = True
    message: str = "Command sent successfully"
    action: str = "send command"
    data: CommandSent


class DownloadReported(Reply):
    """What nginx's report of an offloaded download did to the key."""

    key_state: str = Field(
        description="issued (resumable), spent, or lost (the claim had lapsed or was revoked)"
    )
    bytes_delivered: int


class Health(Reply):
    status: Literal["ok", "unavailable"]
    redis: bool | None = None
    mqtt: bool | None = None
    dynsec: bool | None = Field(
        None,
        description="With per-device broker accounts (the embedded default or "
        "OTA_MQTT_PROVISION=dynsec): the broker's dynamic security answers",
    )
    mqtt_anonymous: bool | None = Field(
        None,
        description="The broker lets in a client with no credentials (probed at start); "
        "null until it has answered",
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What is unsafe without keeping the service from serving, and what to do",
    )


# Checked by check_secret (printable; base64 after a whsec_ prefix), which names the problem.
Secret = Annotated[
    str, WithJsonSchema({"type": "string", "minLength": 16, "maxLength": MAX_SECRET})
]
# Checked by check_events, which lists the valid ones.
NoticeName = Annotated[str, WithJsonSchema({"type": "string", "enum": [n.value for n in Notice]})]


class HookCreate(Strict):
    name: str = Field(min_length=1, max_length=200)
    plan: str = Field(
        min_length=1,
        max_length=1024 * 1024,
        description="A rollout plan as YAML with ${version} and ${file} placeholders",
    )
    secret: Secret | None = Field(
        None,
        description=(
            "HMAC secret of 16 or more printable characters (base64 after a whsec_ prefix); "
            "when absent a whsec_ secret is generated"
        ),
    )


class HookOut(Reply):
    id: str
    name: str
    url: str = Field(description="Where deliveries are posted (POST, signed)")
    plan: str
    created_at: str
    created_by: str
    secret: str | None = Field(None, description="Shown once, when the hook is created")


class HookDeliveryOut(Reply):
    id: str
    received_at: str
    scheme: str = Field(description="github or standard (Standard Webhooks)")
    version: str
    file: str
    rollout_id: str
    status: str = Field(description="accepted, started or failed")
    reason: str


class DeployAccepted(Reply):
    rollout_id: str | None = Field(description="The rollout the delivery starts (or started)")
    delivery_id: str
    duplicate: bool = Field(description="True when this delivery id was accepted before")


class NotificationCreate(Strict):
    url: str = Field(
        min_length=1,
        max_length=2000,
        description="An http:// or https:// URL with a host, to POST events to",
    )
    events: list[NoticeName] | None = Field(
        None, description="Events to send; null for every event"
    )
    secret: Secret | None = Field(
        None,
        description=(
            "Standard Webhooks secret of 16 or more printable characters (base64 after a "
            "whsec_ prefix); when absent a whsec_ secret is generated"
        ),
    )


class NotificationOut(Reply):
    id: str
    url: str
    events: list[str] = Field(description="Events sent; empty for every event")
    created_at: str
    created_by: str
    secret: str | None = Field(None, description="Shown once, when the subscription is made")


class NoticeAttemptOut(Reply):
    at: str
    status_code: int | None
    error: str | None
    duration_ms: int


class NoticeOut(Reply):
    id: str = Field(description="The webhook-id the receiver sees, the same on every attempt")
    type: str
    rollout_id: str
    created_at: str
    state: str = Field(description="pending, delivered or failed")
    attempts: list[NoticeAttemptOut]
    next_attempt_at: str | None
