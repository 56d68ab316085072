"""API key scopes: parsing their names, and what a principal may do."""

from __future__ import annotations

import pytest

from orchestrator.domain.auth import Principal, Scope, parse_scopes


def test_parse_scopes_reads_names_separated_by_spaces_or_commas() -> None:
    assert parse_scopes(["devices:read,files:read", "send-commands"]) == {
        Scope.DEVICES_READ,
        Scope.FILES_READ,
        Scope.SEND_COMMANDS,
    }


def test_an_unknown_scope_is_named_and_every_valid_one_listed() -> None:
    with pytest.raises(ValueError, match="unknown scope 'devices:delete'") as caught:
        parse_scopes(["devices:read", "devices:delete"])
    for scope in Scope:
        assert scope.value in str(caught.value)


@pytest.mark.parametrize("values", [[], [""], [" , "]])
def test_no_scope_at_all_is_refused(values: list[str]) -> None:
    with pytest.raises(ValueError, match="at least one scope"):
        parse_scopes(values)


def test_the_scope_names_are_the_architectures() -> None:
    assert {scope.value for scope in Scope} == {
        "admin",
        "devices:read",
        "devices:write",
        "files:read",
        "files:write",
        "send-commands",
        "rollouts:read",
        "rollouts:write",
        "hooks:read",
        "hooks:write",
        "notifications:read",
        "notifications:write",
    }


def principal(*scopes: Scope, projects: frozenset[str] = frozenset()) -> Principal:
    return Principal(key_id="k", name="test", scopes=frozenset(scopes), projects=projects)


def test_admin_allows_every_scope() -> None:
    admin = principal(Scope.ADMIN)
    assert all(admin.allows(scope) for scope in Scope)


def test_a_scope_allows_only_itself() -> None:
    reader = principal(Scope.DEVICES_READ)
    assert reader.allows(Scope.DEVICES_READ)
    assert not reader.allows(Scope.DEVICES_WRITE)
    assert not reader.allows(Scope.ADMIN)
    assert not reader.allows(Scope.SEND_COMMANDS)


def test_hooks_write_carries_hooks_read_and_the_notification_scopes() -> None:
    """Keys made before notifications had scopes of their own keep what they could do."""
    hooks = principal(Scope.HOOKS_WRITE)
    assert hooks.allows(Scope.HOOKS_READ)
    assert hooks.allows(Scope.NOTIFICATIONS_READ)
    assert hooks.allows(Scope.NOTIFICATIONS_WRITE)
    assert not hooks.allows(Scope.ROLLOUTS_WRITE)
    assert hooks.missing((Scope.HOOKS_WRITE, Scope.ROLLOUTS_WRITE)) == [Scope.ROLLOUTS_WRITE]


def test_read_scopes_do_not_carry_write_scopes() -> None:
    assert not principal(Scope.HOOKS_READ).allows(Scope.HOOKS_WRITE)
    assert not principal(Scope.NOTIFICATIONS_READ).allows(Scope.NOTIFICATIONS_WRITE)
    assert principal(Scope.NOTIFICATIONS_WRITE).allows(Scope.NOTIFICATIONS_READ)
    assert not principal(Scope.NOTIFICATIONS_WRITE).allows(Scope.HOOKS_READ)


def test_a_key_without_project_limits_can_access_every_project() -> None:
    assert principal(Scope.DEVICES_READ).can_access("any-project")


def test_a_project_limited_key_can_access_only_its_projects() -> None:
    limited = principal(Scope.ADMIN, projects=frozenset({"a", "b"}))
    assert limited.can_access("a")
    assert limited.can_access("b")
    assert not limited.can_access("c")
