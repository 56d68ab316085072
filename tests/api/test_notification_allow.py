"""OTA_NOTIFY_ALLOW_HOSTS: listed host names and ranges may be notified although not public."""

from __future__ import annotations

import pytest

from orchestrator.settings import Settings
from tests.conftest import Service


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """An operator allows an on-premises chat server by name and a private range."""
    return settings.model_copy(update={"notify_allow_hosts": "localhost, 10.20.0.0/16"})


@pytest.mark.parametrize(
    "url", ["http://localhost:9000/hook", "http://10.20.3.4/hook", "https://chat.example.com/x"]
)
async def test_an_allowed_host_or_range_is_subscribed(service: Service, url: str) -> None:
    path = f"/v2/projects/{service.project_id}/notifications"
    response = await service.client.post(path, json={"url": url})
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("url", ["http://10.21.0.1/hook", "http://127.0.0.1:9000/hook"])
async def test_what_is_not_listed_is_still_refused(service: Service, url: str) -> None:
    path = f"/v2/projects/{service.project_id}/notifications"
    response = await service.client.post(path, json={"url": url})
    assert response.status_code == 400, response.text
