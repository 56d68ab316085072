"""Where the service may send notifications: public addresses, plus what the operator allows.

A notification URL is chosen by an API key holder and the service posts to it from inside the
operator's network, so by default only public addresses are posted to: loopback, link-local,
unspecified, private (RFC 1918, fc00::/7), shared (100.64.0.0/10) and other non-global
addresses are refused, both when the URL is registered and, for every address its host
resolves to, when a notice is sent. `OTA_NOTIFY_ALLOW_HOSTS` lists host names and CIDR ranges
allowed although they are not public (an on-premises chat server).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, RFC 6598
ALLOW_SETTING = "OTA_NOTIFY_ALLOW_HOSTS"


@dataclass(frozen=True)
class AllowList:
    """Host names and address ranges allowed although not public."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    def allows_host(self, host: str) -> bool:
        """True when `host` (a name, lower case without a trailing dot) is listed."""
        return host.lower().rstrip(".") in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        """True when `address` lies in a listed range."""
        return any(address in network for network in self.networks)


def parse_allow_list(text: str) -> AllowList:
    """Comma-separated host names and CIDRs (an address alone is one address); ValueError."""
    hosts: set[str] = set()
    networks: list[IPNetwork] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        name = entry.lower().rstrip(".")
        labels = name.split(".")
        if not all(label and all(c.isalnum() or c == "-" for c in label) for label in labels):
            raise ValueError(
                f"{ALLOW_SETTING} entry {entry!r} is neither a host name nor a CIDR range; "
                "write names and ranges separated by commas, like chat.corp.example,10.1.0.0/16"
            )
        hosts.add(name)
    return AllowList(frozenset(hosts), tuple(networks))


def address_refusal(address: IPAddress, allow: AllowList) -> str | None:
    """Why `address` may not be posted to (a few words), or None when it may."""
    if allow.allows_address(address):
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address_refusal(address.ipv4_mapped, allow)
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if isinstance(address, ipaddress.IPv4Address) and address in SHARED:
        return "a shared (carrier-grade NAT) address"
    if address.is_private:
        return "a private address"
    if address.is_multicast or not address.is_global:
        return "not a public address"
    return None


def literal_address(host: str) -> IPAddress | None:
    """The address when `host` is an IP literal (brackets allowed), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def url_refusal(url: str, allow: AllowList) -> str | None:
    """Why a parsed http(s) URL may not be posted to, before any name is resolved, or None."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        return (
            "it carries credentials (user:password@); put a token in the path or query, and "
            "check deliveries with the subscription's secret"
        )
    host = parts.hostname or ""
    address = literal_address(host)
    if address is None:
        return None
    reason = address_refusal(address, allow)
    return f"{host} is {reason}" if reason else None


def masked_url(url: str) -> str:
    """`scheme://host[:port]/path`: the URL without credentials, query or fragment, for logs."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        return "<unparsable URL>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"
