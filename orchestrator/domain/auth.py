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
    HOOKS_READ = "hooks:read"
    HOOKS_WRITE = "hooks:write"
    NOTIFICATIONS_READ = "notifications:read"
    NOTIFICATIONS_WRITE = "notifications:write"


# Scopes a held scope carries with it. hooks:write covered notifications before they had
# scopes of their own, and keys made then keep doing what they did.
IMPLIED: dict[Scope, frozenset[Scope]] = {
    Scope.HOOKS_WRITE: frozenset(
        {Scope.HOOKS_READ, Scope.NOTIFICATIONS_READ, Scope.NOTIFICATIONS_WRITE}
    ),
    Scope.NOTIFICATIONS_WRITE: frozenset({Scope.NOTIFICATIONS_READ}),
}


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
        """True when the key holds `scope`, a scope that implies it, or `admin`."""
        return (
            Scope.ADMIN in self.scopes
            or scope in self.scopes
            or any(scope in IMPLIED.get(held, ()) for held in self.scopes)
        )

    def missing(self, scopes: tuple[Scope, ...]) -> list[Scope]:
        """Those of `scopes` the key is not allowed, in the order given."""
        return [scope for scope in scopes if not self.allows(scope)]

    def can_access(self, project_id: str) -> bool:
        """True when the key is not limited to projects, or is limited to this one."""
        return not self.projects or project_id in self.projects
