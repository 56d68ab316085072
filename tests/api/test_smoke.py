"""The service starts on real Redis and mosquitto and reports itself ready."""

from __future__ import annotations

from tests.conftest import Service


async def test_readyz_reports_redis_and_mqtt_reachable(service: Service) -> None:
    response = await service.client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    checks = {name: body[name] for name in ("status", "redis", "mqtt", "dynsec")}
    assert checks == {"status": "ok", "redis": True, "mqtt": True, "dynsec": None}
