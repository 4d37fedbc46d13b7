from __future__ import annotations

import asyncio
import hashlib

import httpx
import pytest

from storage_backends import StorageBackend
from tests.api.conftest import ClientFactory, blob_data_paths
from tests.api.helpers import at, digest_of, error_code, push_blob

DATA = b"0123456789abcdef" * 1000  # 16000 bytes


async def start(client: httpx.AsyncClient, name: str = "team/app", **params: str) -> httpx.Response:
    response = await client.post(f"/v2/{name}/blobs/uploads/", params=params)
    assert response.status_code == 202, response.text
    assert response.headers["Location"].startswith(f"/v2/{name}/blobs/uploads/")
    assert response.headers["Range"] == "0-0"
    assert response.headers["Docker-Upload-UUID"]
    return response


async def test_monolithic_single_post(client: httpx.AsyncClient) -> None:
    digest = digest_of(DATA)
    response = await client.post("/v2/team/app/blobs/uploads/", params={"digest": digest}, content=DATA)
    assert response.status_code == 201
    assert response.headers["Location"] == f"/v2/team/app/blobs/{digest}"
    assert response.headers["Docker-Content-Digest"] == digest
    assert (await client.get(f"/v2/team/app/blobs/{digest}")).content == DATA


async def test_post_then_monolithic_put(client: httpx.AsyncClient) -> None:
    location = (await start(client)).headers["Location"]
    digest = digest_of(DATA)
    response = await client.put(
        at(location, digest=digest), content=DATA, headers={"Content-Type": "application/octet-stream"}
    )
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"/v2/team/app/blobs/{digest}"
    assert (await client.get(f"/v2/team/app/blobs/{digest}")).content == DATA


async def test_chunked_upload_with_content_range(client: httpx.AsyncClient, storage: StorageBackend) -> None:
    location = (await start(client)).headers["Location"]
    offset = 0
    for size in (1000, 5000, 7000):
        chunk = DATA[offset : offset + size]
        response = await client.patch(
            location,
            content=chunk,
            headers={"Content-Range": f"{offset}-{offset + size - 1}", "Content-Type": "application/octet-stream"},
        )
        assert response.status_code == 202, response.text
        offset += size
        assert response.headers["Range"] == f"0-{offset - 1}"
        location = response.headers["Location"]
    status = await client.get(location)
    assert status.status_code == 204
    assert status.headers["Range"] == f"0-{offset - 1}"
    assert status.headers["Location"]
    digest = digest_of(DATA)
    final = await client.put(
        at(location, digest=digest),
        content=DATA[offset:],
        headers={"Content-Range": f"{offset}-{len(DATA) - 1}"},
    )
    assert final.status_code == 201, final.text
    assert final.headers["Docker-Content-Digest"] == digest
    assert (await client.get(f"/v2/team/app/blobs/{digest}")).content == DATA
    assert [i.path async for i in storage.walk("docker/registry/v2/repositories/team/app/_uploads")] == []


async def test_streamed_patches_without_content_range(client: httpx.AsyncClient) -> None:
    location = (await start(client)).headers["Location"]
    for part in (DATA[:7000], DATA[7000:]):
        response = await client.patch(location, content=part)
        assert response.status_code == 202
        location = response.headers["Location"]
    assert response.headers["Range"] == f"0-{len(DATA) - 1}"
    final = await client.put(at(location, digest=digest_of(DATA)))
    assert final.status_code == 201
    assert (await client.get(f"/v2/team/app/blobs/{digest_of(DATA)}")).content == DATA


async def test_streaming_request_body(client: httpx.AsyncClient) -> None:
    """A chunked transfer-encoded body (no Content-Length), as docker sends its layers."""
    location = (await start(client)).headers["Location"]

    async def body() -> object:
        for i in range(0, len(DATA), 999):
            yield DATA[i : i + 999]

    response = await client.patch(location, content=body())
    assert response.status_code == 202
    final = await client.put(at(response.headers["Location"], digest=digest_of(DATA)))
    assert final.status_code == 201


async def test_out_of_order_chunk(client: httpx.AsyncClient) -> None:
    location = (await start(client)).headers["Location"]
    response = await client.patch(location, content=DATA[:100], headers={"Content-Range": "0-99"})
    assert response.status_code == 202
    skipped = await client.patch(location, content=DATA[200:300], headers={"Content-Range": "200-299"})
    assert skipped.status_code == 416
    assert skipped.headers["Range"] == "0-99"
    replayed = await client.patch(location, content=DATA[:100], headers={"Content-Range": "0-99"})
    assert replayed.status_code == 416
    assert error_code(replayed) == "RANGE_INVALID"
    ok = await client.patch(location, content=DATA[100:], headers={"Content-Range": f"100-{len(DATA) - 1}"})
    assert ok.status_code == 202
    assert (await client.put(at(location, digest=digest_of(DATA)))).status_code == 201


@pytest.mark.parametrize("content_range", ["abc", "5-2", "bytes=x-1"])
async def test_malformed_content_range(client: httpx.AsyncClient, content_range: str) -> None:
    location = (await start(client)).headers["Location"]
    response = await client.patch(location, content=b"abc", headers={"Content-Range": content_range})
    assert response.status_code == 416
    assert error_code(response) == "RANGE_INVALID"


async def test_content_range_and_length_must_agree(client: httpx.AsyncClient) -> None:
    location = (await start(client)).headers["Location"]
    response = await client.patch(location, content=b"abcd", headers={"Content-Range": "0-9"})
    assert response.status_code == 400
    assert error_code(response) == "SIZE_INVALID"
    assert (await client.get(location)).headers["Range"] == "0-0"


async def test_two_patches_at_the_same_offset(client: httpx.AsyncClient) -> None:
    location = (await start(client)).headers["Location"]
    first, second = DATA[:8000], DATA[8000:]
    responses = await asyncio.gather(
        client.patch(location, content=first, headers={"Content-Range": "0-7999"}),
        client.patch(location, content=second, headers={"Content-Range": "0-7999"}),
    )
    assert sorted(r.status_code for r in responses) == [202, 416]
    winner = first if responses[0].status_code == 202 else second
    final = await client.put(at(location, digest=digest_of(winner)))
    assert final.status_code == 201
    assert (await client.get(f"/v2/team/app/blobs/{digest_of(winner)}")).content == winner


async def test_two_identical_blobs_pushed_at_once(client: httpx.AsyncClient, storage: StorageBackend) -> None:
    digest = digest_of(DATA)
    responses = await asyncio.gather(
        *(client.post(f"/v2/team/app{i}/blobs/uploads/", params={"digest": digest}, content=DATA) for i in range(4))
    )
    assert [r.status_code for r in responses] == [201] * 4
    assert len(await blob_data_paths(storage)) == 1
    for i in range(4):
        assert (await client.get(f"/v2/team/app{i}/blobs/{digest}")).content == DATA


async def test_digest_mismatch_leaves_nothing_visible(client: httpx.AsyncClient, storage: StorageBackend) -> None:
    location = (await start(client)).headers["Location"]
    claimed = digest_of(b"something else")
    response = await client.put(at(location, digest=claimed), content=DATA)
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"
    assert (await client.head(f"/v2/team/app/blobs/{claimed}")).status_code == 404
    assert (await client.head(f"/v2/team/app/blobs/{digest_of(DATA)}")).status_code == 404
    assert await blob_data_paths(storage) == []
    assert (await client.get(location)).status_code == 404


async def test_monolithic_post_digest_mismatch(client: httpx.AsyncClient, storage: StorageBackend) -> None:
    claimed = digest_of(b"other")
    response = await client.post("/v2/team/app/blobs/uploads/", params={"digest": claimed}, content=DATA)
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"
    assert await blob_data_paths(storage) == []


async def test_put_without_digest(client: httpx.AsyncClient) -> None:
    location = (await start(client)).headers["Location"]
    response = await client.put(location, content=DATA)
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"


@pytest.mark.parametrize("bad", ["sha256:short", "nonsense", "sha1:" + "a" * 40, digest_of(DATA) + "\n"])
async def test_put_with_malformed_digest(client: httpx.AsyncClient, bad: str) -> None:
    location = (await start(client)).headers["Location"]
    response = await client.put(at(location, digest=bad), content=DATA)
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"


async def test_a_monolithic_post_with_a_newline_after_its_digest_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/v2/team/app/blobs/uploads/", params={"digest": digest_of(DATA) + "\n"}, content=DATA)
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"


async def test_unknown_upload(client: httpx.AsyncClient) -> None:
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        response = await client.request(
            method,
            "/v2/team/app/blobs/uploads/00000000-0000-4000-8000-000000000000",
            params={"digest": digest_of(b"")} if method == "PUT" else None,
        )
        assert response.status_code == 404, method
        assert error_code(response) == "BLOB_UPLOAD_UNKNOWN"
    response = await client.get("/v2/team/app/blobs/uploads/../../etc")
    assert response.status_code in (400, 404)


async def test_upload_of_another_repository_is_unknown(client: httpx.AsyncClient) -> None:
    location = (await start(client)).headers["Location"]
    upload_id = location.split("/")[-1].split("?")[0]
    response = await client.get(f"/v2/team/other/blobs/uploads/{upload_id}")
    assert response.status_code == 404
    assert error_code(response) == "BLOB_UPLOAD_UNKNOWN"


async def test_tampered_state_is_rejected(client: httpx.AsyncClient) -> None:
    location = (await start(client)).headers["Location"]
    base = location.split("?")[0]
    response = await client.patch(base, params={"_state": "AAAA.BBBB"}, content=b"abc")
    assert response.status_code == 400
    assert error_code(response) == "BLOB_UPLOAD_INVALID"


async def test_cancel_upload(client: httpx.AsyncClient) -> None:
    location = (await start(client)).headers["Location"]
    await client.patch(location, content=DATA[:10])
    response = await client.delete(location)
    assert response.status_code == 204
    assert (await client.get(location)).status_code == 404
    assert (await client.delete(location)).status_code == 404


async def test_empty_blob(client: httpx.AsyncClient) -> None:
    location = (await start(client)).headers["Location"]
    digest = digest_of(b"")
    response = await client.put(at(location, digest=digest))
    assert response.status_code == 201, response.text
    get = await client.get(f"/v2/team/app/blobs/{digest}")
    assert get.status_code == 200
    assert get.content == b""


async def test_cross_repository_mount(client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "team/source", DATA)
    response = await client.post("/v2/team/target/blobs/uploads/", params={"mount": digest, "from": "team/source"})
    assert response.status_code == 201
    assert response.headers["Location"] == f"/v2/team/target/blobs/{digest}"
    assert response.headers["Docker-Content-Digest"] == digest
    assert (await client.get(f"/v2/team/target/blobs/{digest}")).content == DATA


async def test_mount_from_repository_without_the_blob_opens_a_session(client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "team/source", DATA)
    response = await client.post("/v2/team/target/blobs/uploads/", params={"mount": digest, "from": "team/empty"})
    assert response.status_code == 202
    assert "/blobs/uploads/" in response.headers["Location"]
    assert (await client.head(f"/v2/team/target/blobs/{digest}")).status_code == 404
    unknown = await client.post("/v2/team/target/blobs/uploads/", params={"mount": digest_of(b"held nowhere")})
    assert unknown.status_code == 202
    assert "/blobs/uploads/" in unknown.headers["Location"]


async def test_mount_without_from_finds_the_blob(client: httpx.AsyncClient) -> None:
    """The spec lets `from` be optional (the OCI conformance suite's automatic content discovery): without auth
    every repository may be pulled, so the registry's copy is mounted."""
    digest = await push_blob(client, "team/source", DATA)
    response = await client.post("/v2/team/target/blobs/uploads/", params={"mount": digest})
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"/v2/team/target/blobs/{digest}"
    assert (await client.get(f"/v2/team/target/blobs/{digest}")).content == DATA


@pytest.mark.parametrize(
    "query",
    [
        "mount={d}&mount={d}&from=team/source",
        "mount={d}&from=team/source&from=team/other",
        "digest={d}&digest={d}",
        "mount={d}&from=team/source&digest-algorithm=sha256&digest-algorithm=sha512",
    ],
)
async def test_repeated_upload_parameters_are_refused(client: httpx.AsyncClient, query: str) -> None:
    digest = await push_blob(client, "team/source", DATA)
    response = await client.post(f"/v2/team/target/blobs/uploads/?{query.format(d=digest)}", content=DATA)
    assert response.status_code == 400, response.text
    assert error_code(response) in ("BLOB_UPLOAD_INVALID", "DIGEST_INVALID")
    assert (await client.head(f"/v2/team/target/blobs/{digest}")).status_code == 404


async def test_patch_and_put_need_the_signed_state(client: httpx.AsyncClient) -> None:
    location = (await start(client)).headers["Location"]
    bare = location.split("?")[0]
    for method, url in (("PATCH", bare), ("PUT", f"{bare}?digest={digest_of(DATA)}"), ("GET", bare)):
        response = await client.request(method, url, content=DATA if method != "GET" else None)
        assert response.status_code == 400, method
        assert error_code(response) == "BLOB_UPLOAD_INVALID"
    assert (await client.head(f"/v2/team/app/blobs/{digest_of(DATA)}")).status_code == 404
    repeated = await client.patch(location + "&_state=x", content=DATA)
    assert repeated.status_code == 400
    assert (await client.put(at(location, digest=digest_of(DATA)), content=DATA)).status_code == 201


async def test_mount_with_bad_parameters(client: httpx.AsyncClient) -> None:
    bad_digest = await client.post("/v2/team/target/blobs/uploads/", params={"mount": "sha256:zz", "from": "a"})
    assert bad_digest.status_code == 400
    assert error_code(bad_digest) == "DIGEST_INVALID"
    bad_name = await client.post(
        "/v2/team/target/blobs/uploads/", params={"mount": digest_of(b"x"), "from": "Bad Name"}
    )
    assert bad_name.status_code == 400
    assert error_code(bad_name) == "NAME_INVALID"


async def test_sha512_upload_announced_by_digest_algorithm(client: httpx.AsyncClient) -> None:
    location = (await start(client, **{"digest-algorithm": "sha512"})).headers["Location"]
    response = await client.patch(location, content=DATA)
    digest = f"sha512:{hashlib.sha512(DATA).hexdigest()}"
    final = await client.put(at(response.headers["Location"], digest=digest))
    assert final.status_code == 201
    assert final.headers["Docker-Content-Digest"] == digest


async def test_unsupported_digest_algorithm(client: httpx.AsyncClient) -> None:
    response = await client.post("/v2/team/app/blobs/uploads/", params={"digest-algorithm": "md5"})
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"


async def test_upload_continues_on_another_worker(client_factory: ClientFactory) -> None:
    """POST on one process, PATCH on another, PUT back on the first: only storage is shared."""
    worker_a, worker_b = await client_factory(), await client_factory()
    location = (await start(worker_a)).headers["Location"]
    first = await worker_a.patch(location, content=DATA[:5000], headers={"Content-Range": "0-4999"})
    assert first.status_code == 202
    second = await worker_b.patch(
        first.headers["Location"], content=DATA[5000:], headers={"Content-Range": f"5000-{len(DATA) - 1}"}
    )
    assert second.status_code == 202
    final = await worker_a.put(at(second.headers["Location"], digest=digest_of(DATA)))
    assert final.status_code == 201, final.text
    assert (await worker_b.get(f"/v2/team/app/blobs/{digest_of(DATA)}")).content == DATA


async def test_single_patch_finished_by_another_worker(client_factory: ClientFactory) -> None:
    worker_a, worker_b = await client_factory(), await client_factory()
    location = (await start(worker_a)).headers["Location"]
    patched = await worker_a.patch(location, content=DATA)
    bad = await worker_b.put(at(patched.headers["Location"], digest=digest_of(b"nope")))
    assert bad.status_code == 400
    assert error_code(bad) == "DIGEST_INVALID"
    location = (await start(worker_a)).headers["Location"]
    patched = await worker_a.patch(location, content=DATA)
    final = await worker_b.put(at(patched.headers["Location"], digest=digest_of(DATA)))
    assert final.status_code == 201
    assert (await worker_a.get(f"/v2/team/app/blobs/{digest_of(DATA)}")).content == DATA


async def test_existing_blob_push_is_a_dedup_hit(client: httpx.AsyncClient, storage: StorageBackend) -> None:
    digest = await push_blob(client, "team/app", DATA)
    assert await push_blob(client, "team/app", DATA) == digest
    location = (await start(client, "team/third")).headers["Location"]
    await client.patch(location, content=DATA[:10])
    await client.patch(location, content=DATA[10:])
    assert (await client.put(at(location, digest=digest))).status_code == 201
    assert len(await blob_data_paths(storage)) == 1


@pytest.mark.parametrize("chunks", [1, 3])
async def test_completion_without_any_hash_state_rereads_the_chunks(
    client_factory: ClientFactory, storage: StorageBackend, chunks: int
) -> None:
    """A process with neither the running hash nor a digest checkpoint hashes what storage holds."""
    worker_a, worker_b = await client_factory(), await client_factory()
    for claimed, expected_status in ((digest_of(b"nope"), 400), (digest_of(DATA), 201)):
        location = (await start(worker_a)).headers["Location"]
        upload_id = location.split("?")[0].rsplit("/", 1)[1]
        size = -(-len(DATA) // chunks)
        for i in range(0, len(DATA), size):
            location = (await worker_a.patch(location, content=DATA[i : i + size])).headers["Location"]
        checkpoints = f"docker/registry/v2/repositories/team/app/_uploads/{upload_id}/digests"
        assert [info.path async for info in storage.walk(checkpoints)]
        await storage.delete(checkpoints)
        final = await worker_b.put(at(location, digest=claimed))
        assert final.status_code == expected_status, final.text
    assert (await worker_a.get(f"/v2/team/app/blobs/{digest_of(DATA)}")).content == DATA
    assert (await worker_b.head(f"/v2/team/app/blobs/{digest_of(b'nope')}")).status_code == 404
