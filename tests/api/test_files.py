"""Firmware and logo files: streamed upload, seed 000's listings, delete, and the limits."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator.settings import Settings
from tests.conftest import Service

SEED_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def files_url(service: Service) -> str:
    return f"/v2/projects/{service.project_id}/files"


def files_on_disk(settings: Settings) -> list[Path]:
    """Every regular file under the files directory, partial uploads included."""
    root = settings.files_dir
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def stray_files(root: Path, word: str) -> list[Path]:
    """Files under `root`, or right in /tmp, whose name holds `word`."""
    found = [p for p in root.rglob("*") if p.is_file() and word in p.name]
    return found + [p for p in Path("/tmp").glob(f"*{word}*") if p.is_file()]


def multipart(boundary: str, file_name: str, content: bytes, file_type: str) -> bytes:
    """A multipart/form-data body built by hand, so the file name goes out exactly as given."""
    return (
        (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="type"\r\n\r\n{file_type}\r\n'
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )


async def test_upload_firmware_is_201_with_its_sha256(service: Service) -> None:
    content = bytes(range(256)) * 1000 + b"tail"
    response = await service.upload("firmware_v2.1.0.bin", content, "firmware", "Production")
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"name", "description", "size", "time", "sha256", "type"}
    assert body["name"] == "firmware_v2.1.0.bin"
    assert body["description"] == "Production"
    assert body["size"] == len(content)
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert body["type"] == "firmware"
    assert SEED_TIME.fullmatch(body["time"])
    [blob] = files_on_disk(service.settings)
    assert blob.read_bytes() == content


@pytest.mark.parametrize("name", ["logo.png", "splash.jpg", "eink.bmp"])
async def test_each_logo_type_uploads(service: Service, name: str) -> None:
    response = await service.upload(name, b"\x89PNG fake", "logo")
    assert response.status_code == 201, response.text
    assert response.json()["type"] == "logo"


async def test_lists_are_seed_000s_shape_per_project_and_org_wide(service: Service) -> None:
    assert (await service.upload("b.hex", b"bb", "firmware", "second")).status_code == 201
    assert (await service.upload("a.bin", b"a", "firmware", "first")).status_code == 201
    assert (await service.upload("logo.png", b"p", "logo")).status_code == 201
    other = await service.stores.projects.create("other")
    elsewhere = await service.client.post(
        f"/v2/projects/{other.id}/files",
        files={"file": ("c.elf", b"ccc")},
        data={"type": "firmware"},
    )
    assert elsewhere.status_code == 201, elsewhere.text

    listed = await service.client.get(files_url(service), params={"type": "firmware"})
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert set(body) == {"files"}
    assert [f["name"] for f in body["files"]] == ["a.bin", "b.hex"]
    for item in body["files"]:
        assert {"description", "name", "size", "time"} <= set(item)
        assert SEED_TIME.fullmatch(item["time"])
    assert [(f["description"], f["size"]) for f in body["files"]] == [("first", 1), ("second", 2)]

    logos = await service.client.get(files_url(service), params={"type": "logo"})
    assert [f["name"] for f in logos.json()["files"]] == ["logo.png"]

    org_wide = await service.client.get("/v2/files", params={"type": "firmware"})
    assert org_wide.status_code == 200, org_wide.text
    assert set(org_wide.json()) == {"files"}
    assert sorted((f["name"], f["size"]) for f in org_wide.json()["files"]) == [
        ("a.bin", 1),
        ("b.hex", 2),
        ("c.elf", 3),
    ]


@pytest.mark.parametrize("query", ["?type=", "?type=image", "?type=FIRMWARE"])
@pytest.mark.parametrize("route", ["project", "org"])
async def test_a_bad_type_is_400_saying_firmware_or_logo(
    service: Service, query: str, route: str
) -> None:
    url = files_url(service) if route == "project" else "/v2/files"
    response = await service.client.get(url + query)
    assert response.status_code == 400, response.text
    assert "type must be 'firmware' or 'logo'" in response.json()["message"]
    assert response.json()["errors"] == [{"loc": "type", "msg": "must be 'firmware' or 'logo'"}]


@pytest.mark.parametrize("route", ["project", "org"])
async def test_a_missing_type_is_400_naming_the_required_parameter(
    service: Service, route: str
) -> None:
    """The seed marks `type` required; leaving it out is 400 (not 422) naming query.type."""
    url = files_url(service) if route == "project" else "/v2/files"
    response = await service.client.get(url)
    assert response.status_code == 400, response.text
    assert response.json()["errors"] == [{"loc": "query.type", "msg": "Field required"}]


async def test_the_same_name_again_is_409_and_keeps_the_original(service: Service) -> None:
    original = await service.upload("fw.bin", b"original")
    assert original.status_code == 201
    again = await service.upload("fw.bin", b"replacement!")
    assert again.status_code == 409, again.text
    assert "'fw.bin'" in again.json()["message"]
    [item] = (await service.client.get(f"{files_url(service)}?type=firmware")).json()["files"]
    assert item["sha256"] == hashlib.sha256(b"original").hexdigest()
    assert item["size"] == len(b"original")
    [blob] = files_on_disk(service.settings)
    assert blob.read_bytes() == b"original"


@pytest.mark.parametrize("name", ["../evil.bin", "a/b.bin", "..\\evil.bin", "/tmp/evil.bin"])
async def test_a_name_with_a_path_is_400_and_writes_nothing(
    service: Service, name: str, tmp_path: Path
) -> None:
    boundary = uuid.uuid4().hex
    response = await service.client.post(
        files_url(service),
        content=multipart(boundary, name, b"payload", "firmware"),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 400, response.text
    assert "path" in response.json()["message"]
    assert files_on_disk(service.settings) == []
    assert stray_files(tmp_path, "evil") == []


async def test_httpx_built_path_names_are_refused_too(service: Service) -> None:
    for name in ("../evil.bin", "a/b.bin"):
        response = await service.upload(name, b"payload")
        assert response.status_code == 400, response.text
        assert "path" in response.json()["message"]
    assert files_on_disk(service.settings) == []


@pytest.mark.parametrize(
    ("name", "file_type"), [("logo.png", "firmware"), ("fw.bin", "logo"), ("notes.txt", "firmware")]
)
async def test_the_wrong_extension_for_the_type_is_400(
    service: Service, name: str, file_type: str
) -> None:
    response = await service.upload(name, b"x", file_type)
    assert response.status_code == 400, response.text
    assert "must end in" in response.json()["message"]
    assert files_on_disk(service.settings) == []


async def test_an_upload_without_type_is_400(service: Service) -> None:
    response = await service.client.post(files_url(service), files={"file": ("fw.bin", b"x")})
    assert response.status_code == 400, response.text
    assert "type must be 'firmware' or 'logo'" in response.json()["message"]
    assert files_on_disk(service.settings) == []


async def test_a_form_without_a_file_part_is_400(service: Service) -> None:
    response = await service.client.post(
        files_url(service), files={"type": (None, "firmware"), "description": (None, "d")}
    )
    assert response.status_code == 400, response.text
    assert response.json()["errors"] == [{"loc": "file", "msg": "field required"}]


@pytest.mark.parametrize(
    ("content_type", "content"),
    [("application/json", b'{"type": "firmware"}'), ("application/octet-stream", b"\x00" * 10)],
)
async def test_a_body_that_is_not_multipart_is_400(
    service: Service, content_type: str, content: bytes
) -> None:
    response = await service.client.post(
        files_url(service), content=content, headers={"Content-Type": content_type}
    )
    assert response.status_code == 400, response.text
    assert "multipart/form-data" in response.json()["message"]


@pytest.mark.parametrize("cut", ["inside the file", "before the final dashes"])
async def test_a_body_cut_off_before_its_closing_boundary_is_400_and_stores_nothing(
    service: Service, cut: str
) -> None:
    """A truncated upload must never become a (truncated) firmware image."""
    boundary = uuid.uuid4().hex
    whole = multipart(boundary, "fw.bin", b"x" * 5000, "firmware")
    body = whole[:-1000] if cut == "inside the file" else whole[: -len(b"--\r\n")]
    response = await service.client.post(
        files_url(service),
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 400, response.text
    assert "closing boundary" in response.json()["message"]
    assert files_on_disk(service.settings) == []
    listed = await service.client.get(files_url(service), params={"type": "firmware"})
    assert listed.json()["files"] == []
    assert (await service.upload("fw.bin", b"whole")).status_code == 201


async def test_an_upload_to_an_unknown_project_is_404_and_writes_nothing(
    service: Service,
) -> None:
    response = await service.client.post(
        "/v2/projects/no-such-project/files",
        files={"file": ("fw.bin", b"x")},
        data={"type": "firmware"},
    )
    assert response.status_code == 404, response.text
    assert "no-such-project" in response.json()["message"]
    assert files_on_disk(service.settings) == []


async def test_delete_then_the_listing_no_longer_has_it_and_again_is_404(
    service: Service,
) -> None:
    assert (await service.upload("fw.bin", b"x")).status_code == 201
    assert (await service.upload("keep.bin", b"y")).status_code == 201
    assert len(files_on_disk(service.settings)) == 2
    response = await service.client.delete(f"{files_url(service)}/fw.bin")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "action": "delete file",
        "message": "Operation completed successfully",
        "success": True,
    }
    listed = await service.client.get(files_url(service), params={"type": "firmware"})
    assert [f["name"] for f in listed.json()["files"]] == ["keep.bin"]
    org_wide = await service.client.get("/v2/files", params={"type": "firmware"})
    assert [f["name"] for f in org_wide.json()["files"]] == ["keep.bin"]
    [blob] = files_on_disk(service.settings)
    assert blob.read_bytes() == b"y"
    again = await service.client.delete(f"{files_url(service)}/fw.bin")
    assert again.status_code == 404
    assert again.json()["action"] == "delete file"
    reused = await service.upload("fw.bin", b"new")
    assert reused.status_code == 201, reused.text


class TestSizeLimit:
    """OTA_MAX_FILE_SIZE: an upload over it is 413 and leaves nothing behind."""

    LIMIT = 1000

    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"max_file_size_bytes": self.LIMIT})

    async def test_a_file_at_the_limit_is_accepted(self, service: Service) -> None:
        response = await service.upload("fw.bin", b"x" * self.LIMIT)
        assert response.status_code == 201, response.text
        assert response.json()["size"] == self.LIMIT

    async def test_a_file_over_the_limit_is_413_and_no_partial_file_stays(
        self, service: Service
    ) -> None:
        response = await service.upload("fw.bin", b"x" * (self.LIMIT + 1))
        assert response.status_code == 413, response.text
        body = response.json()
        assert body["action"] == "upload file"
        assert str(self.LIMIT) in body["message"]
        assert files_on_disk(service.settings) == []
        listed = await service.client.get(files_url(service), params={"type": "firmware"})
        assert listed.json()["files"] == []
        retry = await service.upload("fw.bin", b"small")
        assert retry.status_code == 201, retry.text

    async def test_a_declared_length_far_over_the_limit_is_413_before_reading(
        self, service: Service
    ) -> None:
        boundary = uuid.uuid4().hex
        content = multipart(boundary, "fw.bin", b"x" * (2 * 1024 * 1024), "firmware")
        response = await service.client.post(
            files_url(service),
            content=content,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert response.status_code == 413, response.text
        assert "OTA_MAX_FILE_SIZE" in response.json()["message"]
        assert files_on_disk(service.settings) == []


def rss_bytes() -> int:
    """This process's resident set size (the server runs in the test process)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def test_a_64_mib_streamed_upload_does_not_grow_the_servers_memory(
    service: Service,
) -> None:
    """The upload goes to disk as it arrives: RSS grows by far less than the file's size."""
    size = 64 * 1024 * 1024
    chunk = bytes(range(256)) * 256  # 64 KiB
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="type"\r\n\r\nfirmware\r\n'
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="big.bin"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    expected = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        yield head
        for _ in range(size // len(chunk)):
            expected.update(chunk)
            yield chunk
        yield tail

    before = rss_bytes()
    response = await service.client.post(
        files_url(service),
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    growth = rss_bytes() - before
    assert response.status_code == 201, response.text
    assert response.json()["size"] == size
    assert response.json()["sha256"] == expected.hexdigest()
    assert growth < 32 * 1024 * 1024, f"RSS grew by {growth} bytes for a {size}-byte upload"
