"""Command names and a device's allowed_commands list."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from orchestrator.domain.commands import (
    FILE_COMMANDS,
    SEED_COMMANDS,
    is_allowed,
    parse_allowed_commands,
    validate_command_name,
)
from orchestrator.domain.files import FileType
from orchestrator.errors import InvalidInput


def test_parse_allowed_commands_splits_strips_and_deduplicates_in_order() -> None:
    assert parse_allowed_commands("a;b; ;a") == ["a", "b"]


def test_parse_allowed_commands_of_the_seed_example() -> None:
    assert parse_allowed_commands("configuration;reboot;reset") == [
        "configuration",
        "reboot",
        "reset",
    ]


@pytest.mark.parametrize("value", ["", ";", " ; ;; "])
def test_an_empty_allowed_commands_string_is_the_empty_list(value: str) -> None:
    assert parse_allowed_commands(value) == []


@pytest.mark.parametrize("value", ["reboot;a/b", "+", "reboot;#", "$SYS", "two words"])
def test_parse_allowed_commands_refuses_names_that_cannot_be_a_topic_level(value: str) -> None:
    with pytest.raises(InvalidInput, match="must be 1 to 64"):
        parse_allowed_commands(value)


def test_an_empty_allowed_list_accepts_every_command() -> None:
    for command in (*SEED_COMMANDS, "custom_thing"):
        assert is_allowed(command, [])


def test_a_defined_allowed_list_accepts_only_its_commands() -> None:
    allowed = ["configuration", "reboot"]
    assert is_allowed("reboot", allowed)
    assert not is_allowed("reset", allowed)
    assert not is_allowed("Reboot", allowed)


@pytest.mark.parametrize("name", ["", "a/b", "a+", "#", "dev/+/x", "x" * 65, "tab\t", "é"])
def test_invalid_command_names_are_refused_naming_the_rule(name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_command_name(name)
    assert "must be 1 to 64 letters, digits" in caught.value.message
    assert caught.value.errors[0]["loc"] == "body.command"


@pytest.mark.parametrize("name", [*SEED_COMMANDS, "custom-cmd.v2", "x" * 64])
def test_seed_and_custom_command_names_are_valid(name: str) -> None:
    assert validate_command_name(name) == name


def test_file_commands_map_to_their_file_types() -> None:
    assert FILE_COMMANDS == {
        "download_firmware": FileType.FIRMWARE,
        "download_logo": FileType.LOGO,
    }


@hypothesis_settings(database=None, max_examples=200)
@given(st.text(max_size=80))
def test_a_valid_command_name_never_holds_an_mqtt_wildcard_or_separator(name: str) -> None:
    try:
        validate_command_name(name)
    except InvalidInput:
        return
    assert not set(name) & set("/+#$ ")
    assert 1 <= len(name) <= 64
