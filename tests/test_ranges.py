"""`parse_range`: the single `bytes=` range a resuming device sends, and nothing else."""

from __future__ import annotations

import pytest

from orchestrator.api.ranges import delivered_span, parse_range
from orchestrator.errors import RangeNotSatisfiable

SIZE = 100


@pytest.mark.parametrize("header", [None, ""])
def test_no_range_header_means_the_whole_file(header: str | None) -> None:
    assert parse_range(header, SIZE) is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-", (0, 100)),
        ("bytes=5-9", (5, 10)),
        ("bytes=40-", (40, 100)),
        ("bytes=99-99", (99, 100)),
        ("bytes=-3", (97, 100)),
        ("bytes = 5 - 9", (5, 10)),
    ],
)
def test_single_range_is_bytes_first_to_end_exclusive(
    header: str, expected: tuple[int, int]
) -> None:
    assert parse_range(header, SIZE) == expected


def test_last_byte_beyond_the_file_is_clipped_to_its_end() -> None:
    assert parse_range("bytes=90-500", SIZE) == (90, 100)


def test_suffix_longer_than_the_file_is_the_whole_file() -> None:
    assert parse_range("bytes=-500", SIZE) == (0, 100)


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=150-", "bytes=250-300", "bytes=-0"])
def test_range_past_the_end_is_not_satisfiable(header: str) -> None:
    """`bytes={size}-` (a device that has every byte) must not restart the whole file."""
    with pytest.raises(RangeNotSatisfiable) as caught:
        parse_range(header, SIZE)
    assert caught.value.size == SIZE


@pytest.mark.parametrize(
    "header",
    [
        "bytes=0-9,20-29",  # several ranges: ignored, the whole file is sent
        "bytes=9-5",  # last before first
        "bytes=150-120",  # last before first, even past the end
        "bytes=-",
        "items=0-9",
        "bytes=a-b",
        "garbage",
    ],
)
def test_ranges_this_server_does_not_serve_are_ignored(header: str) -> None:
    assert parse_range(header, SIZE) is None


def test_any_range_of_an_empty_file_is_not_satisfiable() -> None:
    for header in ("bytes=0-", "bytes=-5"):
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, 0)


@pytest.mark.parametrize(
    "header",
    [
        "bytes=" + "1" * 5000 + "-",  # int() refuses over 4,300 digits
        "bytes=0-" + "9" * 5000,
        "bytes=-" + "9" * 5000,
        "bytes=" + "0" * 40 + "5-9",  # more digits than any file size has
        "bytes=\u0663-",  # an Arabic-Indic 3: \d and int() take it, HTTP does not
    ],
)
def test_ranges_with_numbers_no_file_has_are_ignored_not_an_error(header: str) -> None:
    assert parse_range(header, SIZE) is None


@pytest.mark.parametrize(
    ("status", "content_range", "body_bytes", "expected"),
    [
        (200, "", 100, (0, 100)),  # the whole file
        (200, "", 40, (0, 40)),  # broken off after 40 bytes
        (206, "bytes 30-99/100", 70, (30, 100)),  # a resume, complete
        (206, "bytes 30-99/100", 10, (30, 40)),  # a resume, broken off
        (206, "bytes 30-49/100", 500, (30, 50)),  # never past the range's end
        (206, "", 70, (0, 0)),  # a 206 without a range carried nothing we can place
        (206, "bytes */100", 70, (0, 0)),
        (416, "bytes */100", 197, (0, 0)),  # nginx's own error page is not the file
        (502, "", 150, (0, 0)),
        (200, "", 0, (0, 0)),
    ],
)
def test_delivered_span_is_what_the_proxy_sent_of_the_file(
    status: int, content_range: str, body_bytes: int, expected: tuple[int, int]
) -> None:
    assert delivered_span(status, content_range, body_bytes) == expected
