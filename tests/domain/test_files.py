"""File types and file names: the seed's extensions per type, and no paths."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from orchestrator.domain.files import EXTENSIONS, FileType, parse_file_type, validate_file_name
from orchestrator.errors import InvalidInput

SEED_EXTENSIONS = [
    (FileType.FIRMWARE, ".bin"),
    (FileType.FIRMWARE, ".hex"),
    (FileType.FIRMWARE, ".elf"),
    (FileType.LOGO, ".png"),
    (FileType.LOGO, ".jpg"),
    (FileType.LOGO, ".bmp"),
]


def test_extensions_are_exactly_the_seeds() -> None:
    assert EXTENSIONS == {
        FileType.FIRMWARE: (".bin", ".hex", ".elf"),
        FileType.LOGO: (".png", ".jpg", ".bmp"),
    }


@pytest.mark.parametrize(("file_type", "extension"), SEED_EXTENSIONS)
def test_each_seed_extension_is_accepted_for_its_type(file_type: FileType, extension: str) -> None:
    name = f"image_v2.1.0{extension}"
    assert validate_file_name(name, file_type) == name


@pytest.mark.parametrize(("file_type", "extension"), SEED_EXTENSIONS)
def test_an_extension_of_the_other_type_is_refused_naming_the_allowed_ones(
    file_type: FileType, extension: str
) -> None:
    other = FileType.LOGO if file_type is FileType.FIRMWARE else FileType.FIRMWARE
    with pytest.raises(InvalidInput) as caught:
        validate_file_name(f"image{extension}", other)
    for allowed in EXTENSIONS[other]:
        assert allowed in caught.value.message


def test_a_name_without_extension_is_refused() -> None:
    with pytest.raises(InvalidInput, match=r"\.bin, \.hex, \.elf"):
        validate_file_name("firmware", FileType.FIRMWARE)


@pytest.mark.parametrize("name", ["a/b.bin", "../evil.bin", "/etc/x.bin", "a\\b.bin", "..\\x.bin"])
def test_a_name_with_a_path_is_refused_saying_path(name: str) -> None:
    with pytest.raises(InvalidInput, match="path") as caught:
        validate_file_name(name, FileType.FIRMWARE)
    assert caught.value.errors == [{"loc": "file", "msg": "must not contain a path"}]


def test_128_characters_are_accepted_and_129_refused() -> None:
    longest = "a" * 124 + ".bin"
    assert validate_file_name(longest, FileType.FIRMWARE) == longest
    with pytest.raises(InvalidInput, match="1 to 128 characters"):
        validate_file_name("a" + longest, FileType.FIRMWARE)


@pytest.mark.parametrize("name", ["..", ".", ""])
def test_dot_names_and_the_empty_name_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput):
        validate_file_name(name, FileType.FIRMWARE)


@pytest.mark.parametrize(
    "name", ["fw v2.bin", "fw\n.bin", "fw:1.bin", "fírmware.bin", "fw\x00.bin"]
)
def test_characters_outside_the_name_alphabet_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput, match="letters, digits") as caught:
        validate_file_name(name, FileType.FIRMWARE)
    assert caught.value.errors[0]["msg"] == "must match ^[A-Za-z0-9._-]{1,128}$"


def test_the_extension_check_ignores_case() -> None:
    assert validate_file_name("FW.BIN", FileType.FIRMWARE) == "FW.BIN"


NAME_CHARS = st.sampled_from("ABCXYZabcxyz0189._-")


@hypothesis_settings(database=None, max_examples=300)
@given(stem=st.text(NAME_CHARS, min_size=0, max_size=124))
def test_any_plain_name_ending_in_bin_is_accepted_as_firmware(stem: str) -> None:
    """Every name matching ^[A-Za-z0-9._-]{1,128}$ and ending in .bin is a firmware name."""
    name = stem + ".bin"
    assert validate_file_name(name, FileType.FIRMWARE) == name


@hypothesis_settings(database=None, max_examples=300)
@given(
    head=st.text(max_size=20),
    separator=st.sampled_from("/\\"),
    tail=st.text(max_size=20),
)
def test_any_name_with_a_separator_is_refused_as_a_path(
    head: str, separator: str, tail: str
) -> None:
    with pytest.raises(InvalidInput, match="path"):
        validate_file_name(head + separator + tail + ".bin", FileType.FIRMWARE)


@hypothesis_settings(database=None, max_examples=300)
@given(name=st.text(max_size=140))
def test_validate_file_name_either_returns_the_name_or_raises_invalid_input(name: str) -> None:
    """No input crashes the validator; an accepted name is a safe single path component."""
    try:
        accepted = validate_file_name(name, FileType.LOGO)
    except InvalidInput:
        return
    assert accepted == name
    assert accepted not in {".", ".."}
    assert "/" not in accepted
    assert "\\" not in accepted
    assert 1 <= len(accepted) <= 128


@pytest.mark.parametrize(("value", "expected"), [("firmware", FileType.FIRMWARE), ("logo", "logo")])
def test_parse_file_type_accepts_firmware_and_logo(value: str, expected: str) -> None:
    assert parse_file_type(value) == expected


@pytest.mark.parametrize("value", [None, "", "Firmware", "image", "bin"])
def test_parse_file_type_refuses_anything_else_with_the_seeds_meaning(value: str | None) -> None:
    with pytest.raises(InvalidInput, match="type must be 'firmware' or 'logo'") as caught:
        parse_file_type(value)
    assert caught.value.errors == [{"loc": "type", "msg": "must be 'firmware' or 'logo'"}]
