"""The HTTP client notifications are posted with: it connects only to addresses it checked.

A host name checked when a subscription was made may resolve elsewhere later (DNS
rebinding), so the check is made at connection time: the client's network backend resolves
the host itself, refuses the connection when any address is not allowed
(`domain.destinations`), and connects to an address it checked. TLS still verifies the
certificate against the URL's host name, which httpcore takes from the URL, not from the
address connected to. Redirects are not followed.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterable

import httpcore
import httpx

from orchestrator.domain.destinations import AllowList, IPAddress, address_refusal, literal_address

RESOLVE_TIMEOUT_S = 5.0


class RefusedDestination(httpcore.ConnectError):
    """A host that resolves to an address notifications may not go to; `str()` says which."""


async def checked_addresses(host: str, port: int, allow: AllowList) -> list[str]:
    """Every address `host` resolves to, all allowed; ConnectError naming a refused one."""
    address = literal_address(host)
    if address is not None:
        found: list[IPAddress] = [address]
    else:
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_S):
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
        except (OSError, TimeoutError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        found = [a for a in (literal_address(str(info[4][0])) for info in infos) if a]
        if allow.allows_host(host):
            return [str(a) for a in found]
    for candidate in found:
        reason = address_refusal(candidate, allow)
        if reason is not None:
            raise RefusedDestination(
                f"{host} resolves to {candidate}, {reason}; the service posts only to public "
                "addresses unless OTA_NOTIFY_ALLOW_HOSTS lists the host or range"
            )
    return [str(a) for a in found]


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's backend, connecting only to addresses `checked_addresses` lets through."""

    def __init__(self, allow: AllowList) -> None:
        self._allow = allow
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend signature
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """A connection to the first checked address of `host` that answers."""
        addresses = await checked_addresses(host, port, self._allow)
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's backend signature
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Refused: notifications go over TCP only."""
        raise httpcore.ConnectError("notifications are not sent over unix sockets")

    async def sleep(self, seconds: float) -> None:
        """As httpcore's own backend sleeps."""
        await self._inner.sleep(seconds)


def checked_client(allow: AllowList, *, timeout_s: float, user_agent: str) -> httpx.AsyncClient:
    """An httpx client that connects only to allowed addresses and follows no redirect."""
    transport = httpx.AsyncHTTPTransport()
    # httpx takes no network backend of its own; its pool is httpcore's, which does.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        network_backend=CheckedBackend(allow),
    )
    return httpx.AsyncClient(
        transport=transport,
        timeout=timeout_s,
        follow_redirects=False,
        trust_env=False,  # a proxy from the environment would connect on the service's behalf
        headers={"User-Agent": user_agent},
    )
