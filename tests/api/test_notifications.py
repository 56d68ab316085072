"""`/v2/projects/{pid}/notifications`: a subscription's URL is one the service can post to.

A URL that urllib or httpx (the client that posts) cannot parse is refused with a 400 naming
it, never a 500, and never stored to fail at every delivery.
"""

from __future__ import annotations

import pytest

from orchestrator.domain.auth import Scope
from tests.conftest import Service


def notifications_url(service: Service) -> str:
    return f"/v2/projects/{service.project_id}/notifications"


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://[::1/", id="unclosed-ipv6"),  # urllib: ValueError
        pytest.param("http://[zz]/", id="not-an-ipv6-address"),  # urllib: ValueError
        pytest.param("http://[::1]x/", id="junk-after-ipv6"),  # urllib takes it, httpx not
        pytest.param("http://chat.example.com:99999/", id="port-out-of-range"),
        pytest.param("http://chat.example.com:abc/", id="port-not-a-number"),
        pytest.param("http://xn--/", id="bad-punycode"),  # httpx: IDNAError
        pytest.param("http://chat example.com/", id="space-in-host"),
        pytest.param("http://chat.example.com/\x00", id="nul"),
        pytest.param("https://chat.example.com/hook\n", id="newline"),
    ],
)
async def test_a_url_that_cannot_be_parsed_is_400_naming_it(service: Service, url: str) -> None:
    response = await service.client.post(notifications_url(service), json={"url": url})
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["success"] is False
    assert body["action"] == "create notification"
    assert repr(url) in body["message"]
    assert "https://" in body["message"]  # an example of one that works
    assert body["errors"][0]["loc"] == "body.url"
    listed = await service.client.get(notifications_url(service))
    assert listed.json()["data"] == []


@pytest.mark.parametrize(
    "url", ["ftp://chat.example.com/x", "https:///path", "chat.example.com/hook", "http://"]
)
async def test_a_url_without_http_or_a_host_is_400_naming_it(service: Service, url: str) -> None:
    response = await service.client.post(notifications_url(service), json={"url": url})
    assert response.status_code == 400, response.text
    assert repr(url) in response.json()["message"]


@pytest.mark.parametrize(
    "url",
    [
        "https://chat.example.com/hooks/ota",
        "http://93.184.215.14:8080/hook?y=1",
        "http://[2606:4700:4700::1111]:8080/hook",
        "https://bücher.example/hook",
    ],
)
async def test_a_good_url_is_subscribed(service: Service, url: str) -> None:
    response = await service.client.post(notifications_url(service), json={"url": url})
    assert response.status_code == 201, response.text
    assert response.json()["data"]["url"] == url


async def test_notification_scopes_read_and_write(service: Service) -> None:
    """notifications:read lists, notifications:write subscribes; hooks:write still does both."""
    reader = {"Authorization": f"Bearer {await service.create_key(Scope.NOTIFICATIONS_READ)}"}
    writer = {"Authorization": f"Bearer {await service.create_key(Scope.NOTIFICATIONS_WRITE)}"}
    legacy = {"Authorization": f"Bearer {await service.create_key(Scope.HOOKS_WRITE)}"}
    body = {"url": "https://chat.example.com/hooks/ota"}
    refused = await service.client.post(notifications_url(service), json=body, headers=reader)
    assert refused.status_code == 403
    assert "notifications:write" in refused.json()["message"]
    for headers in (writer, legacy):
        made = await service.client.post(notifications_url(service), json=body, headers=headers)
        assert made.status_code == 201, made.text
    for headers in (reader, writer, legacy):
        listed = await service.client.get(notifications_url(service), headers=headers)
        assert listed.status_code == 200, listed.text
        assert len(listed.json()["data"]) == 2
    rollouts = {"Authorization": f"Bearer {await service.create_key(Scope.ROLLOUTS_WRITE)}"}
    assert (
        await service.client.get(notifications_url(service), headers=rollouts)
    ).status_code == 403


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:9000/internal/admin", "loopback"),
        ("http://localhost:9000/internal/admin", "loopback"),
        ("http://[::1]:8080/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://0.0.0.0:8080/hook", "unspecified"),
        ("http://[::]/hook", "unspecified"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/hook", "link-local"),
        ("http://10.1.2.3/hook", "private"),
        ("http://172.16.0.1/hook", "private"),
        ("http://192.168.1.10/hook", "private"),
        ("http://[fc00::1]/hook", "private"),
        ("http://100.64.0.1/hook", "carrier-grade NAT"),
        ("https://user:secret@chat.example.com/hook", "credentials"),
    ],
)
async def test_a_url_to_an_internal_address_or_with_credentials_is_400_naming_it(
    service: Service, url: str, why: str
) -> None:
    """The default is safe: a key holder cannot make the service post inside its network."""
    response = await service.client.post(notifications_url(service), json={"url": url})
    assert response.status_code == 400, response.text
    message = response.json()["message"]
    assert repr(url) in message
    assert why in message
    assert "OTA_NOTIFY_ALLOW_HOSTS" in message
    assert (await service.client.get(notifications_url(service))).json()["data"] == []
