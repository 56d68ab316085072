"""Which notification destinations are refused, what the operator's allow list lets through."""

from __future__ import annotations

import ipaddress

import pytest

from orchestrator.domain.destinations import (
    address_refusal,
    masked_url,
    parse_allow_list,
    url_refusal,
)

NOTHING = parse_allow_list("")


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "::1",
        "0.0.0.0",
        "::",
        "169.254.169.254",
        "fe80::1",
        "10.0.0.1",
        "172.31.255.255",
        "192.168.0.1",
        "fc00::1",
        "fd12::1",
        "100.64.0.1",
        "::ffff:10.0.0.1",
    ],
)
def test_internal_addresses_are_refused_by_default(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address), NOTHING) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700:4700::1111", "172.32.0.1"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address), NOTHING) is None


def test_the_allow_list_takes_names_and_ranges() -> None:
    allow = parse_allow_list(" Chat.Corp.Example. , 10.1.0.0/16,fd00::/8, 192.168.5.5")
    assert allow.allows_host("chat.corp.example")
    assert address_refusal(ipaddress.ip_address("10.1.2.3"), allow) is None
    assert address_refusal(ipaddress.ip_address("10.2.0.1"), allow) is not None
    assert address_refusal(ipaddress.ip_address("fd00::5"), allow) is None
    assert address_refusal(ipaddress.ip_address("192.168.5.5"), allow) is None


def test_a_bad_allow_entry_is_named() -> None:
    with pytest.raises(ValueError, match="'chat_server!'"):
        parse_allow_list("chat_server!")


def test_credentials_in_a_url_are_refused() -> None:
    assert "credentials" in (url_refusal("https://u:p@chat.example.com/", NOTHING) or "")
    assert url_refusal("https://chat.example.com/", NOTHING) is None


def test_a_masked_url_has_no_credentials_query_or_fragment() -> None:
    masked = masked_url("https://u:p@chat.example.com:8443/hooks/x?token=abc#f")
    assert masked == "https://chat.example.com:8443/hooks/x"
    assert masked_url("http://[::1]/a?b") == "http://[::1]/a"
