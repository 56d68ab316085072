"""A key or a rollout sends exactly the bytes it announced: pinned sha256, no deletion in use."""

from __future__ import annotations

import os

from tests.api.conftest import CreateDownload, assert_error
from tests.api.test_rollouts import FIRMWARE, OLD_FIRMWARE, created, fleet, plan_yaml
from tests.api.test_rollouts import upload_firmware as upload_firmwares
from tests.conftest import Service


async def replace_file(service: Service, name: str, content: bytes) -> None:
    """Forget the file behind every check (as an older release let a delete do) and upload
    other bytes under its name."""
    relative = await service.stores.files.delete(service.project_id, name)
    assert relative is not None
    assert (await service.upload(name, content)).status_code == 201


async def test_a_key_never_serves_other_bytes_than_its_command_announced(
    create_download: CreateDownload,
) -> None:
    download = await create_download(5000)
    await replace_file(download.service, download.name, os.urandom(4000))
    response = await download.get()
    assert_error(response, 404)
    assert "other bytes" in response.json()["message"]
    same_size = await create_download(5000)
    await replace_file(same_size.service, same_size.name, os.urandom(5000))
    assert_error(await same_size.get(), 404)


async def test_a_file_with_a_live_download_key_cannot_be_deleted(
    create_download: CreateDownload,
) -> None:
    download = await create_download()
    service = download.service
    url = f"/v2/projects/{service.project_id}/files/{download.name}"
    response = await service.client.delete(url)
    assert response.status_code == 409, response.text
    assert "live download key" in response.json()["message"]
    assert (await download.get()).content == download.content
    await download.wait_state("spent")
    assert (await service.client.delete(url)).status_code == 200


async def test_a_file_an_active_rollout_uses_cannot_be_deleted(service: Service) -> None:
    await fleet(service, 2)
    await upload_firmwares(service, FIRMWARE, OLD_FIRMWARE)
    rollout = await created(service, plan_yaml(rollback=True))
    for name in (FIRMWARE, OLD_FIRMWARE):
        response = await service.client.delete(f"/v2/projects/{service.project_id}/files/{name}")
        assert response.status_code == 409, response.text
        assert rollout["id"] in response.json()["message"]
    record = await service.stores.rollouts.get(rollout["id"])
    assert record is not None
    stored = await service.stores.files.get(service.project_id, FIRMWARE)
    assert stored is not None
    assert record.pins[FIRMWARE] == (stored.sha256, stored.size)
    assert OLD_FIRMWARE in record.pins
