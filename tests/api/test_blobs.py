from __future__ import annotations

import hashlib

import httpx
import pytest

from storage_backends import StorageBackend
from tests.api.conftest import ClientFactory, blob_data_paths
from tests.api.helpers import digest_of, error_code, push_blob

DATA = bytes(range(256)) * 40  # 10240 bytes


async def test_get_and_head_blob(client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "team/app", DATA)
    head = await client.head(f"/v2/team/app/blobs/{digest}")
    assert head.status_code == 200
    assert head.headers["Content-Length"] == str(len(DATA))
    assert head.headers["Docker-Content-Digest"] == digest
    assert head.headers["Accept-Ranges"] == "bytes"
    assert head.content == b""
    get = await client.get(f"/v2/team/app/blobs/{digest}")
    assert get.status_code == 200
    assert get.content == DATA
    assert get.headers["Docker-Content-Digest"] == digest
    assert get.headers["Content-Type"] == "application/octet-stream"


@pytest.mark.parametrize(
    ("range_header", "start", "end"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=100-", 100, len(DATA) - 1),
        ("bytes=-10", len(DATA) - 10, len(DATA) - 1),
        ("bytes=10000-999999", 10000, len(DATA) - 1),
        ("bytes=5-5", 5, 5),
    ],
)
async def test_range_requests(client: httpx.AsyncClient, range_header: str, start: int, end: int) -> None:
    digest = await push_blob(client, "team/app", DATA)
    response = await client.get(f"/v2/team/app/blobs/{digest}", headers={"Range": range_header})
    assert response.status_code == 206
    assert response.content == DATA[start : end + 1]
    assert response.headers["Content-Range"] == f"bytes {start}-{end}/{len(DATA)}"
    assert response.headers["Content-Length"] == str(end - start + 1)


@pytest.mark.parametrize("range_header", ["bytes=10240-", "bytes=99999-100000", "bytes=-0"])
async def test_unsatisfiable_range(client: httpx.AsyncClient, range_header: str) -> None:
    digest = await push_blob(client, "team/app", DATA)
    response = await client.get(f"/v2/team/app/blobs/{digest}", headers={"Range": range_header})
    assert response.status_code == 416
    assert response.headers["Content-Range"] == f"bytes */{len(DATA)}"


@pytest.mark.parametrize("range_header", ["bytes=0-1,5-6", "items=0-5", "bytes=9-3"])
async def test_unusable_range_is_ignored(client: httpx.AsyncClient, range_header: str) -> None:
    digest = await push_blob(client, "team/app", DATA)
    response = await client.get(f"/v2/team/app/blobs/{digest}", headers={"Range": range_header})
    assert response.status_code == 200
    assert response.content == DATA


async def test_unknown_blob(client: httpx.AsyncClient) -> None:
    digest = digest_of(b"never pushed")
    for method in ("GET", "HEAD"):
        response = await client.request(method, f"/v2/team/app/blobs/{digest}")
        assert response.status_code == 404
    assert error_code(await client.get(f"/v2/team/app/blobs/{digest}")) == "BLOB_UNKNOWN"


async def test_blob_is_visible_only_in_repositories_that_link_it(client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "team/app", DATA)
    response = await client.get(f"/v2/other/app/blobs/{digest}")
    assert response.status_code == 404
    assert error_code(response) == "BLOB_UNKNOWN"


async def test_blobs_are_stored_once_across_repositories(client: httpx.AsyncClient, storage: StorageBackend) -> None:
    digest = await push_blob(client, "team/one", DATA)
    await push_blob(client, "team/two", DATA)
    assert len(await blob_data_paths(storage)) == 1
    hex_part = digest.split(":")[1]
    for repo in ("team/one", "team/two"):
        link = f"docker/registry/v2/repositories/{repo}/_layers/sha256/{hex_part}/link"
        assert await storage.get_content(link) == digest.encode()


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v2/Team/App/blobs/sha256:" + "a" * 64, "NAME_INVALID"),
        ("/v2/team/app/blobs/sha256:abc", "DIGEST_INVALID"),
        ("/v2/team/app/blobs/md5:" + "a" * 32, "DIGEST_INVALID"),
        ("/v2/team/app/blobs/sha256:" + "A" * 64, "DIGEST_INVALID"),
        ("/v2/team/-app/blobs/sha256:" + "a" * 64, "NAME_INVALID"),
        # "$" in a pattern matches before a final newline: a digest with an encoded newline was the same blob.
        ("/v2/team/app/blobs/sha256:" + "a" * 64 + "%0A", "DIGEST_INVALID"),
        ("/v2/team/app/blobs/sha256:" + "a" * 64 + "%0a", "DIGEST_INVALID"),
    ],
)
async def test_bad_names_and_digests(client: httpx.AsyncClient, path: str, code: str) -> None:
    response = await client.get(path)
    assert response.status_code == 400
    assert error_code(response) == code


async def test_delete_blob(client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "team/app", DATA)
    await push_blob(client, "team/other", DATA)
    response = await client.delete(f"/v2/team/app/blobs/{digest}")
    assert response.status_code == 202
    assert (await client.head(f"/v2/team/app/blobs/{digest}")).status_code == 404
    assert (await client.head(f"/v2/team/other/blobs/{digest}")).status_code == 200
    again = await client.delete(f"/v2/team/app/blobs/{digest}")
    assert again.status_code == 404
    assert error_code(again) == "BLOB_UNKNOWN"


async def test_delete_disabled(client_factory: ClientFactory) -> None:
    client = await client_factory(delete=False)
    digest = await push_blob(client, "team/app", DATA)
    response = await client.delete(f"/v2/team/app/blobs/{digest}")
    assert response.status_code == 405
    assert error_code(response) == "UNSUPPORTED"
    assert (await client.head(f"/v2/team/app/blobs/{digest}")).status_code == 200


async def test_sha512_blob(client: httpx.AsyncClient) -> None:
    digest = digest_of(DATA, "sha512")
    response = await client.post("/v2/team/app/blobs/uploads/", params={"digest": digest}, content=DATA)
    assert response.status_code == 201, response.text
    assert response.headers["Docker-Content-Digest"] == digest
    get = await client.get(f"/v2/team/app/blobs/{digest}")
    assert get.status_code == 200
    assert hashlib.sha512(get.content).hexdigest() == digest.split(":")[1]


async def test_existence_memory_is_short_and_local(client_factory: ClientFactory) -> None:
    """HEAD answers from a 1 s memory of blobs seen present: a delete on this process is seen at once, one on
    another process within the memory's lifetime."""
    import asyncio

    from registry.store.blobs import EXISTENCE_TTL

    worker_a, worker_b = await client_factory(), await client_factory()
    digest = await push_blob(worker_a, "team/app", DATA)
    assert (await worker_a.head(f"/v2/team/app/blobs/{digest}")).status_code == 200
    assert (await worker_b.head(f"/v2/team/app/blobs/{digest}")).status_code == 200
    assert (await worker_b.delete(f"/v2/team/app/blobs/{digest}")).status_code == 202
    assert (await worker_b.head(f"/v2/team/app/blobs/{digest}")).status_code == 404
    await asyncio.sleep(EXISTENCE_TTL + 0.1)
    assert (await worker_a.head(f"/v2/team/app/blobs/{digest}")).status_code == 404


async def test_a_digest_with_a_newline_after_it_names_no_blob(client: httpx.AsyncClient) -> None:
    """The blob is there; the same digest followed by an encoded newline is no digest (it was served as the blob)."""
    digest = await push_blob(client, "team/app", DATA)
    for method in ("GET", "HEAD", "DELETE"):
        response = await client.request(method, f"/v2/team/app/blobs/{digest}%0A")
        assert response.status_code == 400, method
    assert (await client.get(f"/v2/team/app/blobs/{digest}")).content == DATA
