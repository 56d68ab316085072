"""Projects: the bounds on what describes one (docs.qubitro.com's, where it gives them)."""

from __future__ import annotations

from orchestrator.domain.devices import validate_tags
from orchestrator.errors import InvalidInput

MAX_NAME = 200  # characters
MAX_DESCRIPTION = 500  # characters, Qubitro's limit
MAX_TAGS = 100


def validate_description(description: str) -> str:
    """The description; InvalidInput when it is longer than MAX_DESCRIPTION."""
    if len(description) > MAX_DESCRIPTION:
        raise InvalidInput(
            f"description must be at most {MAX_DESCRIPTION} characters, got "
            f"{len(description)}; shorten it",
            errors=[{"loc": "description", "msg": "too long"}],
        )
    return description


def validate_project_tags(tags: list[str]) -> list[str]:
    """The tags, de-duplicated in order, each as a device tag; InvalidInput names the bad one."""
    if len(tags) > MAX_TAGS:
        raise InvalidInput(
            f"a project takes at most {MAX_TAGS} tags, got {len(tags)}; drop some",
            errors=[{"loc": "tags", "msg": "too many"}],
        )
    return validate_tags(tags)
