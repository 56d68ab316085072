"""API key scopes and what a caller holding them may do."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Scope(StrEnum):
    """What an API key may do; `admin` may do everything."""

    ADMIN = "admin"
    DEVICES_READ = "devices:read"
    DEVICES_WRITE = "devices:write"
    FILES_READ = "files:read"
    FILES_WRITE = "files:write"
    SEND_COMMANDS = "send-commands"
    ROLLOUTS_READ = "rollouts:read"
    ROLLOUTS_WRITE = "rollouts:write"
    HOOKS_WRITE = "hooks:write"


API_KEY_PREFIX = "QB_"


def parse_scopes(values: list[str]) -> frozenset[Scope]:
    """Scopes from their names; a ValueError names the unknown one and lists the valid ones."""
    known = {scope.value: scope for scope in Scope}
    scopes: set[Scope] = set()
    for value in values:
        for part in value.replace(",", " ").split():
            if part not in known:
                valid = ", ".join(sorted(known))
                raise ValueError(f"unknown scope {part!r}; use one of: {valid}")
            scopes.add(known[part])
    if not scopes:
        raise ValueError("an API key needs at least one scope, for example --scope admin")
    return frozenset(scopes)


@dataclass(frozen=True)
class Principal:
    """The caller behind an API key: its scopes and, when limited, its projects."""

    key_id: str
    name: str
    scopes: frozenset[Scope]
    projects: frozenset[str] = field(default_factory=frozenset)  # empty: every project

    def allows(self, scope: Scope) -> bool:
        """True when the key holds `scope` or `admin`."""
        return Scope.ADMIN in self.scopes or scope in self.scopes

    def can_access(self, project_id: str) -> bool:
        """True when the key is not limited to projects, or is limited to this one."""
        return not self.projects or project_id in self.projects
