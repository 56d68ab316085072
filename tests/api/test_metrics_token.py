"""OTA_METRICS_TOKEN: when set, /metrics answers only a scraper that sends it as a Bearer token."""

from __future__ import annotations

import httpx
import pytest

from orchestrator.settings import Settings
from tests.conftest import Service

TOKEN = "scrape-token-0123456789abcdef"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"metrics_token": TOKEN})


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}", "Bearer"])
async def test_metrics_without_the_token_is_401(
    service: Service, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    async with httpx.AsyncClient(base_url=service.base_url) as anonymous:
        response = await anonymous.get("/metrics", headers=headers)
    assert response.status_code == 401, response.text
    assert "OTA_METRICS_TOKEN" in response.json()["message"]
    assert service.project_id not in response.text


async def test_metrics_with_the_token_is_served(service: Service) -> None:
    async with httpx.AsyncClient(base_url=service.base_url) as scraper:
        response = await scraper.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert "ota_redis_up" in response.text
