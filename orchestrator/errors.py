"""The exceptions the orchestrator raises: what went wrong, in the product's words.

They carry no protocol: the HTTP API maps each kind to its status (orchestrator/api/errors.py),
the CLI prints the message.

OrchestratorError
├── StoreUnavailable          Redis cannot be reached (adapter edge, translated from redis-py)
│   └── StoreRefused          Redis answered with an error that trying again will not cure
├── TransportUnavailable      the MQTT broker cannot be reached or refused a publish
├── NotFound (LookupError)    a project, device, file or download key does not exist
├── Conflict                  the thing exists already or is busy
│   └── ProjectDeleting       the project is being deleted: nothing new is made in it
├── Forbidden (PermissionError) authenticated but not allowed
├── Unauthorized              missing or bad credentials
├── InvalidInput (ValueError) a value the caller sent is wrong
├── PayloadTooLarge           a body or an upload over its limit
└── RangeNotSatisfiable       a download's Range asks for bytes the file does not have
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """Root of every error the orchestrator raises on purpose; `message` is for people."""

    def __init__(self, message: str, *, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or []


class StoreUnavailable(OrchestratorError):
    """Redis cannot be reached or answered with an error."""


class StoreRefused(StoreUnavailable):
    """Redis refused a command for a reason that lasts (a script error, out of memory)."""


class TransportUnavailable(OrchestratorError):
    """The MQTT broker cannot be reached or did not accept a publish."""


class NotFound(OrchestratorError, LookupError):
    """The named thing does not exist (or the caller may not know it exists)."""


class Conflict(OrchestratorError):
    """The thing exists already, or is in a state that refuses this request."""


class ProjectDeleting(Conflict):
    """The project's deletion has begun: nothing new may be made in it."""

    def __init__(self, project_id: str) -> None:
        super().__init__(
            f"project {project_id} is being deleted, so nothing can be made or changed in it; "
            f"repeat DELETE /v2/projects/{project_id} to finish deleting it"
        )
        self.project_id = project_id


class Forbidden(OrchestratorError, PermissionError):
    """The caller is known but not allowed to do this."""


class Unauthorized(OrchestratorError):
    """Credentials are missing, unknown or expired; `challenge` is the WWW-Authenticate value."""

    def __init__(self, message: str, *, challenge: str = "Bearer") -> None:
        super().__init__(message)
        self.challenge = challenge


class InvalidInput(OrchestratorError, ValueError):
    """A value the caller sent is wrong; the message names it and the fix."""


class PayloadTooLarge(OrchestratorError):
    """An upload is larger than OTA_MAX_FILE_SIZE."""


class RangeNotSatisfiable(OrchestratorError):
    """A download's Range header asks for bytes the file does not have."""

    def __init__(self, message: str, *, size: int) -> None:
        super().__init__(message)
        self.size = size
