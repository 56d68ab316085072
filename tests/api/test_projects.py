"""`/v2/projects`: create (admin only), list the ones a key may use, read one."""

from __future__ import annotations

import uuid

from orchestrator.domain.auth import Scope
from tests.conftest import Service


async def test_create_project_is_201_with_a_uuid_id(service: Service) -> None:
    response = await service.client.post("/v2/projects", json={"name": "fleet"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["success"] is True
    assert body["status"] == 201
    assert body["action"] == "create project"
    assert body["data"]["name"] == "fleet"
    assert str(uuid.UUID(body["data"]["id"])) == body["data"]["id"]


async def test_a_created_project_can_be_read_back(service: Service) -> None:
    created = await service.client.post("/v2/projects", json={"name": "fleet"})
    project_id = created.json()["data"]["id"]
    response = await service.client.get(f"/v2/projects/{project_id}")
    assert response.status_code == 200, response.text
    assert response.json()["data"] == created.json()["data"]
    assert response.json()["action"] == "get project"


async def test_a_non_admin_key_cannot_create_a_project(service: Service) -> None:
    key = await service.create_key(*[scope for scope in Scope if scope is not Scope.ADMIN])
    response = await service.client.post(
        "/v2/projects", json={"name": "x"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 403, response.text
    assert "'admin'" in response.json()["message"]
    assert await service.stores.projects.ids() == [service.project_id]


async def test_an_empty_project_name_is_400(service: Service) -> None:
    response = await service.client.post("/v2/projects", json={"name": ""})
    assert response.status_code == 400
    assert "body.name" in response.json()["message"]


async def test_the_list_shows_only_the_projects_a_limited_key_may_use(service: Service) -> None:
    other = await service.stores.projects.create("other")
    third = await service.stores.projects.create("third")
    admin_list = await service.client.get("/v2/projects")
    assert admin_list.status_code == 200
    assert {p["id"] for p in admin_list.json()["data"]} == {
        service.project_id,
        other.id,
        third.id,
    }

    key = await service.create_key(Scope.DEVICES_READ, projects=frozenset({other.id, third.id}))
    limited = await service.client.get("/v2/projects", headers={"Authorization": f"Bearer {key}"})
    assert limited.status_code == 200
    assert {p["id"] for p in limited.json()["data"]} == {other.id, third.id}
    assert {p["name"] for p in limited.json()["data"]} == {"other", "third"}


async def test_a_limited_key_cannot_read_another_project(service: Service) -> None:
    other = await service.stores.projects.create("other")
    key = await service.create_key(Scope.DEVICES_READ, projects=frozenset({other.id}))
    response = await service.client.get(
        f"/v2/projects/{service.project_id}", headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 403
    assert service.project_id in response.json()["message"]


async def test_an_unknown_project_is_404(service: Service) -> None:
    missing = str(uuid.uuid4())
    response = await service.client.get(f"/v2/projects/{missing}")
    assert response.status_code == 404
    body = response.json()
    assert body["action"] == "get project"
    assert missing in body["message"]


async def test_a_project_limited_admin_key_cannot_create_projects(service: Service) -> None:
    key = await service.create_key(Scope.ADMIN, projects=frozenset({service.project_id}))
    response = await service.client.post(
        "/v2/projects", json={"name": "x"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 403
    assert "limited to some projects" in response.json()["message"]
