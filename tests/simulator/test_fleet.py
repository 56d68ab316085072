"""The simulated fleet against a real service, Redis and mosquitto: what devices answer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from orchestrator.client import ApiClient
from orchestrator.embedded import EmbeddedBroker
from orchestrator.simulator import Behaviour, DeviceBook, Fleet, FleetStats, Stall
from orchestrator.store import download_keys
from tests.conftest import Service, wait_for

FINAL = {"success", "failed", "rejected"}
MiB = 1024 * 1024
# Larger than what loopback socket buffers hold, so a transfer the device drops half-way
# cannot have been delivered whole on the server side (see tests/api/test_downloads.py).
LARGE = 16 * MiB


class Watcher:
    """Everything on `+/control/#`: the commands the service sends and the devices' results."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.commands: dict[str, dict[str, Any]] = {}  # command_id → payload
        self.results: dict[str, list[dict[str, Any]]] = defaultdict(list)  # command_id → results
        self.result_devices: set[str] = set()  # devices that published any result

    async def listen(self) -> None:
        async for message in self.client.messages:
            levels = message.topic.value.split("/")
            assert isinstance(message.payload, bytes)
            try:
                payload = json.loads(message.payload)
            except ValueError:
                continue  # the malformed messages a test sends on purpose
            if not isinstance(payload, dict) or "command_id" not in payload:
                continue
            if len(levels) == 4:
                self.results[payload["command_id"]].append(payload)
                self.result_devices.add(levels[0])
            else:
                self.commands[payload["command_id"]] = payload

    async def final(self, command_id: str, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """The results of a command, once the last one is final."""

        async def done() -> bool:
            results = self.results.get(command_id, [])
            return bool(results) and results[-1]["status"] in FINAL

        await wait_for(done, timeout_s)
        return self.results[command_id]

    async def publish(self, device_id: str, command: str, payload: bytes | str) -> None:
        """Send a hand-made command to a device, as the service would (QoS 2)."""
        await self.client.publish(f"{device_id}/control/{command}", payload, qos=2)


async def key_spent(service: Service, key: str) -> None:
    """Wait for the service to spend the key (it releases the claim just after the last byte)."""

    async def spent() -> bool:
        return await service.stores.download_keys.state(key) == "spent"

    await wait_for(spent)


def statuses(results: list[dict[str, Any]]) -> list[str]:
    return [result["status"] for result in results]


@pytest.fixture
async def watcher(mqtt_broker: EmbeddedBroker) -> AsyncIterator[Watcher]:
    async with aiomqtt.Client(
        mqtt_broker.host, mqtt_broker.port, identifier=f"watch-{uuid.uuid4().hex[:8]}"
    ) as client:
        await client.subscribe("+/control/#", qos=2)
        watching = Watcher(client)
        task = asyncio.create_task(watching.listen())
        yield watching
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.fixture
async def api(service: Service) -> AsyncIterator[ApiClient]:
    async with ApiClient(service.base_url, service.admin_key, service.project_id) as client:
        yield client


StartFleet = Callable[..., Awaitable[Fleet]]


@pytest.fixture
async def start_fleet(
    api: ApiClient, mqtt_broker: EmbeddedBroker, tmp_path: Path
) -> AsyncIterator[StartFleet]:
    """`await start_fleet(n, Behaviour(...))`: a started fleet, stopped after the test."""
    fleets: list[Fleet] = []

    async def start(
        count: int = 1,
        behaviour: Behaviour | None = None,
        *,
        state_path: Path | None = None,
        tags: tuple[str, ...] = (),
    ) -> Fleet:
        fleet = Fleet(
            api,
            mqtt_broker.host,
            mqtt_broker.port,
            behaviour,
            state_path=state_path or tmp_path / "devices.json",
            mqtt_version=mqtt_broker.mqtt_version,
        )
        fleets.append(fleet)
        await fleet.start(count, tags=tags)
        return fleet

    yield start
    for fleet in fleets:
        await fleet.stop()


async def upload(service: Service, content: bytes, name: str = "") -> str:
    name = name or f"fw-{uuid.uuid4().hex[:8]}.bin"
    response = await service.upload(name, content)
    assert response.status_code == 201, response.text
    return name


async def send(api: ApiClient, device_id: str, command: str, **data: Any) -> str:
    sent = await api.send(device_id, command, data)
    return sent.command_id


# --- registration and the device book ------------------------------------------------------


async def test_devices_are_registered_then_reused_from_the_book(
    start_fleet: StartFleet, service: Service, tmp_path: Path
) -> None:
    book_path = tmp_path / "book.json"
    first = await start_fleet(3, state_path=book_path, tags=("lab",))
    first_ids = [device.id for device in first.devices]
    assert first.stats.connected == 3
    await first.stop()

    book = json.loads(book_path.read_text())
    assert list(book) == [service.project_id]
    assert [entry["id"] for entry in book[service.project_id]] == first_ids
    assert all(entry["token"] and entry["tags"] == ["lab"] for entry in book[service.project_id])
    assert os.stat(book_path).st_mode & 0o777 == 0o600  # it holds device tokens
    for device_id in first_ids:
        device = await service.stores.devices.get(service.project_id, device_id)
        assert device is not None
        assert device.tags == ["lab"]

    second = await start_fleet(5, state_path=book_path, tags=("lab",))
    second_ids = [device.id for device in second.devices]
    assert second_ids[:3] == first_ids  # reused, in order
    assert len(set(second_ids)) == 5
    assert second.stats.connected == 5  # the reused tokens still connect and download
    assert len(DeviceBook(book_path).load(service.project_id)) == 5


async def test_devices_deleted_from_the_service_are_replaced(
    start_fleet: StartFleet, service: Service, tmp_path: Path
) -> None:
    book_path = tmp_path / "book.json"
    first = await start_fleet(2, state_path=book_path)
    await first.stop()
    gone = first.devices[0].id
    response = await service.client.delete(f"/v2/projects/{service.project_id}/devices/{gone}")
    assert response.status_code == 200, response.text

    second = await start_fleet(2, state_path=book_path)
    ids = [device.id for device in second.devices]
    assert gone not in ids
    assert first.devices[1].id in ids
    assert gone not in {d.id for d in DeviceBook(book_path).load(service.project_id)}


# --- firmware downloads --------------------------------------------------------------------


async def test_download_firmware_is_verified_and_answered_step_by_step_with_the_version(
    start_fleet: StartFleet, service: Service, api: ApiClient, watcher: Watcher
) -> None:
    fleet = await start_fleet(1)
    device = fleet.devices[0]
    content = os.urandom(300_000)
    name = await upload(service, content)

    command_id = await send(api, device.id, "download_firmware", file_name=name, version="2.1.0")
    results = await watcher.final(command_id)

    assert statuses(results) == ["received", "downloading", "installing", "success"]
    assert results[-1]["version"] == "2.1.0"
    assert all(result["command_id"] == command_id for result in results)
    assert device.version == "2.1.0"
    stats = fleet.stats
    assert stats.downloads == 1
    assert stats.bytes_downloaded == len(content)
    assert stats.resumed_downloads == 0
    assert stats.checksum_failures == 0
    # The service saw every byte go out: the download key is spent.
    key = watcher.commands[command_id]["url"].rsplit("key=", 1)[1]
    await key_spent(service, key)
    await fleet.stop()
    assert fleet.book is not None
    assert fleet.book.load(service.project_id)[0].version == "2.1.0"  # kept for the next run


async def test_fail_rate_one_answers_failed_after_the_download(
    start_fleet: StartFleet, service: Service, api: ApiClient, watcher: Watcher
) -> None:
    fleet = await start_fleet(1, Behaviour(fail_rate=1.0))
    device = fleet.devices[0]
    name = await upload(service, os.urandom(10_000))

    command_id = await send(api, device.id, "download_firmware", file_name=name, version="3.0.0")
    results = await watcher.final(command_id)

    assert statuses(results) == ["received", "downloading", "installing", "failed"]
    assert "3.0.0" in results[-1]["error"]
    assert device.version == ""  # nothing installed


async def test_fail_version_fails_only_that_version(
    start_fleet: StartFleet, service: Service, api: ApiClient, watcher: Watcher
) -> None:
    fleet = await start_fleet(1, Behaviour(fail_versions={"4.0.0": 1.0}))
    device = fleet.devices[0]
    name = await upload(service, os.urandom(10_000))

    bad = await send(api, device.id, "download_firmware", file_name=name, version="4.0.0")
    assert statuses(await watcher.final(bad))[-1] == "failed"
    good = await send(api, device.id, "download_firmware", file_name=name, version="4.0.1")
    assert statuses(await watcher.final(good))[-1] == "success"
    assert device.version == "4.0.1"


async def test_reject_answers_rejected_right_after_received(
    start_fleet: StartFleet, service: Service, api: ApiClient, watcher: Watcher
) -> None:
    fleet = await start_fleet(1, Behaviour(reject_rate=1.0))
    name = await upload(service, os.urandom(1000))

    command_id = await send(api, fleet.devices[0].id, "download_firmware", file_name=name)
    results = await watcher.final(command_id)

    assert statuses(results) == ["received", "rejected"]
    assert fleet.stats.downloads == 0


async def test_wrong_version_reports_success_with_another_version(
    start_fleet: StartFleet, service: Service, api: ApiClient, watcher: Watcher
) -> None:
    fleet = await start_fleet(1, Behaviour(wrong_version_rate=1.0))
    name = await upload(service, os.urandom(1000))

    command_id = await send(
        api, fleet.devices[0].id, "download_firmware", file_name=name, version="5.0.0"
    )
    results = await watcher.final(command_id)

    assert statuses(results) == ["received", "downloading", "installing", "success"]
    assert results[-1]["version"] not in (None, "5.0.0")


async def take_large_firmware(
    start_fleet: StartFleet,
    behaviour: Behaviour,
    service: Service,
    api: ApiClient,
    watcher: Watcher,
) -> tuple[FleetStats, int]:
    """One device that behaves so takes a LARGE firmware and succeeds; the fleet's stats and
    how many transfers claimed the key, once the key is spent."""
    fleet = await start_fleet(1, behaviour)
    name = await upload(service, os.urandom(LARGE))

    command_id = await send(
        api, fleet.devices[0].id, "download_firmware", file_name=name, version="6.0.0"
    )
    results = await watcher.final(command_id, timeout_s=30)

    assert statuses(results) == ["received", "downloading", "installing", "success"]
    key = watcher.commands[command_id]["url"].rsplit("key=", 1)[1]
    await key_spent(service, key)
    claims = await service.stores.redis.hget(service.stores.keys.download_key(key), "claims")
    assert claims is not None
    return fleet.stats, int(claims)


async def test_broken_download_resumes_with_range_and_still_verifies(
    start_fleet: StartFleet, service: Service, api: ApiClient, watcher: Watcher
) -> None:
    behaviour = Behaviour(broken_download_rate=1.0)
    stats, claims = await take_large_firmware(start_fleet, behaviour, service, api, watcher)

    assert stats.resumed_downloads == 1
    assert stats.bytes_downloaded == LARGE  # half, then the other half: nothing twice
    assert stats.checksum_failures == 0
    # The service handed the key out twice (the broken transfer, then the Range request)
    # and counts one whole delivery.
    assert claims == 2


@pytest.mark.parametrize("hangup", [False, True], ids=["held-open", "hung-up"])
async def test_a_stalled_download_resumes_on_the_same_key_and_still_verifies(
    hangup: bool,
    start_fleet: StartFleet,
    service: Service,
    api: ApiClient,
    watcher: Watcher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The device stops reading a quarter of the way for 2 s; the service ends a transfer that
    sends nothing for half its claim lease (0.75 s here), so the device comes back with Range."""
    monkeypatch.setattr(download_keys, "CLAIM_LEASE_MS", 1500)
    behaviour = Behaviour(stall_rate=1.0, stall=Stall(at=0.25, for_s=2.0, hangup=hangup))
    stats, claims = await take_large_firmware(start_fleet, behaviour, service, api, watcher)

    assert stats.stalled_downloads == 1
    assert stats.resumed_downloads == 1
    assert stats.checksum_failures == stats.size_mismatches == 0
    assert claims == 2  # the stalled transfer, then the resume: one key, spent once


async def test_download_logo_is_answered_like_firmware(
    start_fleet: StartFleet, service: Service, api: ApiClient, watcher: Watcher
) -> None:
    fleet = await start_fleet(1)
    response = await service.upload("logo.png", os.urandom(2000), file_type="logo")
    assert response.status_code == 201, response.text

    command_id = await send(api, fleet.devices[0].id, "download_logo", file_name="logo.png")
    results = await watcher.final(command_id)

    assert statuses(results) == ["received", "downloading", "installing", "success"]
    assert fleet.devices[0].version == ""  # a logo is not firmware


async def test_wrong_sha256_or_size_answers_failed_naming_the_check(
    start_fleet: StartFleet, service: Service, watcher: Watcher
) -> None:
    fleet = await start_fleet(1)
    device = fleet.devices[0]
    content = os.urandom(5000)
    name = await upload(service, content)

    async def command(**overrides: Any) -> list[dict[str, Any]]:
        [key] = await service.stores.download_keys.issue(
            [(device.id, uuid.uuid4().hex)],
            project_id=service.project_id,
            file_name=name,
            size=len(content),
            ttl_s=60,
        )
        payload = {
            "url": f"{service.base_url}/v2/device/download?key={key.key}",
            "file_name": name,
            "size": len(content),
            "sha256": hashlib.sha256(content).hexdigest(),
            "command_id": uuid.uuid4().hex,
            **overrides,
        }
        await watcher.publish(device.id, "download_firmware", json.dumps(payload))
        return await watcher.final(payload["command_id"])

    bad_sha = await command(sha256="0" * 64)
    assert statuses(bad_sha) == ["received", "downloading", "failed"]
    assert bad_sha[-1]["error"].startswith("sha256 mismatch")
    bad_size = await command(size=len(content) + 1)
    assert statuses(bad_size) == ["received", "downloading", "failed"]
    assert bad_size[-1]["error"].startswith("size mismatch")
    stats = fleet.stats
    assert (stats.checksum_failures, stats.size_mismatches) == (1, 1)


async def test_a_download_the_service_refuses_answers_failed_with_its_message(
    start_fleet: StartFleet, service: Service, watcher: Watcher
) -> None:
    fleet = await start_fleet(1)
    device = fleet.devices[0]
    command_id = uuid.uuid4().hex
    payload = {
        "url": f"{service.base_url}/v2/device/download?key=dk_{'x' * 32}",
        "size": 10,
        "sha256": "0" * 64,
        "command_id": command_id,
    }
    await watcher.publish(device.id, "download_firmware", json.dumps(payload))
    results = await watcher.final(command_id)
    assert statuses(results) == ["received", "downloading", "failed"]
    assert results[-1]["error"].startswith("download refused: HTTP 401")


# --- other commands, duplicates, malformed messages -----------------------------------------


async def test_a_plain_command_is_answered_received_then_success(
    start_fleet: StartFleet, api: ApiClient, watcher: Watcher
) -> None:
    fleet = await start_fleet(1)

    command_id = await send(api, fleet.devices[0].id, "reboot", delay_s=1)
    results = await watcher.final(command_id)

    assert statuses(results) == ["received", "success"]
    assert "version" not in results[-1]
    assert fleet.stats.commands == 1


async def test_a_repeated_command_id_is_not_obeyed_again_but_its_last_result_is_published_again(
    start_fleet: StartFleet, watcher: Watcher
) -> None:
    fleet = await start_fleet(1)
    device = fleet.devices[0]
    repeated = json.dumps({"command_id": "once", "mode": "eco"})
    await watcher.publish(device.id, "configuration", repeated)
    await watcher.publish(device.id, "configuration", repeated)
    await watcher.publish(device.id, "reboot", json.dumps({"command_id": "after"}))

    await watcher.final("after")  # commands are handled in order: the repeat came before

    assert statuses(watcher.results["once"]) == ["received", "success", "success"]
    assert fleet.stats.duplicates == 1
    assert fleet.stats.commands == 2


async def test_malformed_messages_are_ignored_and_the_device_carries_on(
    start_fleet: StartFleet, watcher: Watcher
) -> None:
    fleet = await start_fleet(1)
    device = fleet.devices[0]
    for junk in (b"not json", b"\xff\xfe", b"[1, 2]", b'{"no": "id"}', b'{"command_id": 7}'):
        await watcher.publish(device.id, "reboot", junk)
    unusable = {"command_id": "no-url", "size": 10, "sha256": "0" * 64}
    await watcher.publish(device.id, "download_firmware", json.dumps(unusable))
    await watcher.publish(device.id, "reboot", json.dumps({"command_id": "fine"}))

    assert statuses(await watcher.final("fine")) == ["received", "success"]
    unusable_results = watcher.results["no-url"]
    assert statuses(unusable_results) == ["received", "failed"]
    assert "url" in unusable_results[-1]["error"]
    assert fleet.stats.malformed == 6
    assert device.connected


# --- offline devices, reproducibility -------------------------------------------------------


async def test_offline_devices_never_connect(
    start_fleet: StartFleet, api: ApiClient, watcher: Watcher, tmp_path: Path
) -> None:
    away = await start_fleet(3, Behaviour(offline_rate=1.0), state_path=tmp_path / "away.json")
    here = await start_fleet(1, state_path=tmp_path / "here.json")
    stats = away.stats
    assert (stats.devices, stats.offline, stats.connected, stats.connect_failures) == (3, 3, 0, 0)
    assert all(device.offline and not device.connected for device in away.devices)

    # Both are sent at once; once the online device has answered, the offline one would have.
    silent = await send(api, away.devices[0].id, "reboot")
    answered = await send(api, here.devices[0].id, "reboot")
    await watcher.final(answered)
    assert silent not in watcher.results
    assert away.devices[0].id not in watcher.result_devices


async def test_the_same_seed_makes_the_same_choices(
    start_fleet: StartFleet, tmp_path: Path
) -> None:
    book_path = tmp_path / "book.json"
    behaviour = Behaviour(offline_rate=0.5, seed=11)
    first = await start_fleet(8, behaviour, state_path=book_path)
    await first.stop()
    second = await start_fleet(8, behaviour, state_path=book_path)
    assert [d.offline for d in second.devices] == [d.offline for d in first.devices]
    other_seed = await start_fleet(8, Behaviour(offline_rate=0.5, seed=12), state_path=book_path)
    assert [d.id for d in other_seed.devices] == [d.id for d in first.devices]


async def test_stop_disconnects_every_device(start_fleet: StartFleet) -> None:
    fleet = await start_fleet(3)
    assert fleet.stats.connected == 3
    await fleet.stop()
    assert fleet.stats.connected == 0
    await fleet.stop()  # a second stop does nothing


async def test_an_unreachable_broker_is_one_clear_error(api: ApiClient, tmp_path: Path) -> None:
    from orchestrator.embedded import free_port
    from orchestrator.errors import TransportUnavailable

    port = free_port()
    fleet = Fleet(api, "127.0.0.1", port, state_path=tmp_path / "book.json")
    with pytest.raises(TransportUnavailable, match=f"127.0.0.1:{port}.*--mqtt-url"):
        await fleet.start(2)
    assert fleet.stats.connected == 0


# --- the health soak -------------------------------------------------------------------------

SOAK = {"soak_s": 0.6, "heartbeat_s": 0.2}


async def health_reports(watcher: Watcher, command_id: str, count: int) -> list[dict[str, Any]]:
    """Once `count` health reports followed the command's success: those reports."""

    async def reported() -> bool:
        return len(watcher.results.get(command_id, [])) >= 4 + count

    await wait_for(reported, timeout_s=10)
    return watcher.results[command_id][4:]


async def test_after_a_success_a_device_reports_its_health_through_the_soak(
    start_fleet: StartFleet, service: Service, api: ApiClient, watcher: Watcher
) -> None:
    fleet = await start_fleet(1)
    name = await upload(service, os.urandom(1000))
    device = fleet.devices[0]
    command_id = await send(
        api, device.id, "download_firmware", file_name=name, version="2.1.0", health=SOAK
    )
    reports = await health_reports(watcher, command_id, 2)
    assert statuses(watcher.results[command_id][:4]) == [
        "received",
        "downloading",
        "installing",
        "success",
    ]
    assert {(r["status"], r["version"]) for r in reports} == {("healthy", "2.1.0")}
    # one report per half heartbeat at most, and none once the soak has passed

    async def soaked() -> bool:
        return not device._soaks

    await wait_for(soaked, timeout_s=5)
    sent = len(watcher.results[command_id]) - 4
    assert 2 <= sent <= SOAK["soak_s"] / (SOAK["heartbeat_s"] / 2) + 1
    assert fleet.stats.results["healthy"] == len(watcher.results[command_id]) - 4


async def test_a_reverting_device_reports_its_old_version_and_a_dying_one_nothing(
    start_fleet: StartFleet, service: Service, api: ApiClient, watcher: Watcher
) -> None:
    reverting = await start_fleet(1, Behaviour(revert_rate=1.0))
    name = await upload(service, os.urandom(1000))
    device = reverting.devices[0]
    before = device.version
    command_id = await send(
        api, device.id, "download_firmware", file_name=name, version="2.1.0", health=SOAK
    )
    reports = await health_reports(watcher, command_id, 1)
    assert watcher.results[command_id][3] == {
        "command_id": command_id,
        "status": "success",
        "version": "2.1.0",
    }
    old = before or "2.1.0-previous"
    assert reports[0]["version"] == old != "2.1.0"
    assert device.version == old

    dying = await start_fleet(1, Behaviour(die_after_success_rate=1.0))
    silent = dying.devices[0]
    silent_command = await send(
        api, silent.id, "download_firmware", file_name=name, version="2.1.0", health=SOAK
    )
    final = await watcher.final(silent_command)
    assert statuses(final)[-1] == "success"
    assert not silent._soaks  # no health report will follow
