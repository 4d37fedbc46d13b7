"""Storage outages: moorage talks to moto through a TCP proxy that the tests take down (or make hang) and bring back.

The server runs with short store timeouts (connect 1 s, read 5 s, 2 attempts), so a dead store must give the client
a clean `503 UNAVAILABLE` in the spec's error format quickly, never a hung request, and never a visible blob that
was not completely received and verified. Once the store is back, the same push must succeed.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.s3_server import MotoServer

from .conftest import MoorageFactory, RunningServer, S3Bucket, Skopeo
from .images import OciLayout, assert_same_blobs
from .server_logs import statuses
from .tcp_proxy import TcpProxy
from .uploads import (
    OCTET_STREAM,
    client,
    describe,
    digest_of,
    error_codes,
    finish,
    on,
    patch_chunk,
    patch_ok,
    random_bytes,
    read_blob,
    start_upload,
)

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
MAX_ATTEMPTS = 2
FAULT_ENV = {
    "MOORAGE_STORAGE__S3__CONNECT_TIMEOUT": "1",
    "MOORAGE_STORAGE__S3__READ_TIMEOUT": "5",
    "MOORAGE_STORAGE__S3__MAX_ATTEMPTS": str(MAX_ATTEMPTS),
}
# However the store fails, the client has its answer within this time.
BOUND = 30.0
T = TypeVar("T")


@dataclass
class FaultyStore:
    proxy: TcpProxy
    server: RunningServer
    bucket: S3Bucket


@pytest.fixture
def store_proxy(s3_server: MotoServer) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", s3_server.port) as proxy:
        yield proxy


@pytest.fixture
def faulty(store_proxy: TcpProxy, moorage_factory: MoorageFactory, s3_bucket: S3Bucket) -> FaultyStore:
    """A moorage server whose `storage.s3.endpoint_url` is the proxy in front of moto (up when the test starts)."""
    server = moorage_factory(storage=s3_bucket.storage(endpoint_url=store_proxy.url), env=FAULT_ENV)
    return FaultyStore(store_proxy, server, s3_bucket)


def timed(call: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    """`call(*args, **kwargs)` and how long it took."""
    started = time.monotonic()
    result = call(*args, **kwargs)
    return result, time.monotonic() - started


def assert_unavailable(response: httpx.Response, elapsed: float) -> None:
    """A clean storage-outage answer: 503, the spec's JSON error body with code UNAVAILABLE, and soon."""
    assert elapsed < BOUND, f"{elapsed:.1f}s to answer (bound {BOUND:.0f}s): {describe(response)}"
    assert response.status_code == 503, describe(response)
    assert response.headers["retry-after"].isdigit(), describe(response)
    if response.request.method != "HEAD":
        assert response.headers["content-type"].startswith("application/json"), describe(response)
        assert error_codes(response) == ["UNAVAILABLE"], describe(response)


def assert_no_blob(faulty: FaultyStore, http: httpx.Client, repo: str, digest: str) -> None:
    """Nothing of the blob is visible: not through the API, and no `data` object in the bucket (store must be up)."""
    server, bucket = faulty.server, faulty.bucket
    head = http.head(f"{server.url}/v2/{repo}/blobs/{digest}")
    assert head.status_code == 404, describe(head)
    get = http.get(f"{server.url}/v2/{repo}/blobs/{digest}")
    assert get.status_code == 404, describe(get)
    assert error_codes(get) == ["BLOB_UNKNOWN"]
    assert digest not in bucket.blob_data_keys(), f"a data object for {digest} is in the bucket"


def session_objects(bucket: S3Bucket, repo: str, location: str) -> list[str]:
    upload_id = location.split("?")[0].rstrip("/").rsplit("/", 1)[1]
    return bucket.keys(f"docker/registry/v2/repositories/{repo}/_uploads/{upload_id}/")


def assert_status(http: httpx.Client, server: RunningServer, location: str, offset: int) -> None:
    """The upload session survived the outage, holding exactly `offset` bytes."""
    status = http.get(on(server, location))
    assert status.status_code == 204, describe(status)
    assert status.headers["range"] == f"0-{max(offset - 1, 0)}", describe(status)


def build_image(tmp_path: Path, size: int, seed: int) -> tuple[OciLayout, str, str]:
    """A layout with a `size`-byte layer and a small one, tagged v1; returns (layout, manifest digest, big digest)."""
    src = OciLayout(tmp_path / "src")
    big, big_diff_id = src.add_large_layer(size, seed=seed)
    small = src.add_layer({"etc/motd": f"outage test {seed}\n".encode()}, compress=True)
    image = src.add_image([(big, big_diff_id), small], tag="v1")
    return src, image.manifest.digest, big.digest


def assert_pushed_completely(
    faulty: FaultyStore, skopeo: Skopeo, src: OciLayout, repo: str, manifest: str, tmp_path: Path
) -> None:
    out = tmp_path / "pulled"
    skopeo.pull(faulty.server.ref(repo, "v1"), out, "v1")
    pulled = OciLayout.open(out)
    assert pulled.ref("v1").digest == manifest
    for digest in assert_same_blobs(src, pulled, manifest):
        key = faulty.bucket.data_key(digest)
        assert faulty.bucket.blob_data_keys().get(digest) == [key]
        assert faulty.bucket.hash_object(key) == digest


def test_store_down_between_chunks(faulty: FaultyStore, skopeo: Skopeo, tmp_path: Path) -> None:
    proxy, server = faulty.proxy, faulty.server
    src, manifest, layer = build_image(tmp_path, 3 * MiB, seed=31)
    data = src.read_blob(layer)
    repo = "e2e/faults/between-chunks"
    with client() as http:
        location = start_upload(http, server, repo)
        location = patch_ok(http, server, location, data[:MiB], 0)

        proxy.down()
        # The API base does not touch storage: it keeps answering (load balancers probe it).
        response, elapsed = timed(http.get, f"{server.url}/v2/")
        assert response.status_code == 200 and elapsed < 5, describe(response)
        response, elapsed = timed(patch_chunk, http, server, location, data[MiB:], MiB)
        assert_unavailable(response, elapsed)
        response, elapsed = timed(finish, http, server, location, layer, data[MiB:])
        assert_unavailable(response, elapsed)
        response, elapsed = timed(finish, http, server, location, layer)
        assert_unavailable(response, elapsed)
        for reference in ("v1", manifest):
            response, elapsed = timed(http.get, f"{server.url}/v2/{repo}/manifests/{reference}")
            assert_unavailable(response, elapsed)
        response, elapsed = timed(http.head, f"{server.url}/v2/{repo}/blobs/{layer}")
        assert_unavailable(response, elapsed)
        response, elapsed = timed(http.get, f"{server.url}/v2/{repo}/blobs/{layer}")
        assert_unavailable(response, elapsed)
        assert server.proc.poll() is None, server.describe()

        proxy.up()
        assert_no_blob(faulty, http, repo, layer)
        assert_status(http, server, location, MiB)
    # The same push, from the start, with skopeo.
    skopeo.push(src.path, "v1", server.ref(repo, "v1"))
    assert_pushed_completely(faulty, skopeo, src, repo, manifest, tmp_path)
    assert "storage unavailable" in server.log()


def test_store_dies_while_a_chunk_streams_in(faulty: FaultyStore) -> None:
    proxy, server = faulty.proxy, faulty.server
    data = random_bytes(8 * MiB + 123, "streamed-chunk")
    digest = digest_of(data)
    repo = "e2e/faults/mid-chunk"

    def body() -> Iterator[bytes]:
        for start in range(0, len(data), 256 * 1024):
            yield data[start : start + 256 * 1024]

    with client() as http:
        location = start_upload(http, server, repo)
        # The chunk goes to the store as 5 MiB parts: the store dies in the middle of the first one.
        proxy.down_after(4 * MiB)
        response, elapsed = timed(http.patch, on(server, location), content=body(), headers=OCTET_STREAM)
        assert proxy.went_down.is_set(), "the store did not go down during the PATCH"
        assert_unavailable(response, elapsed)

        proxy.up()
        assert_no_blob(faulty, http, repo, digest)
        # Nothing of the failed chunk was kept: the session is where it was, and the chunk can be sent again.
        assert_status(http, server, location, 0)
        stored = session_objects(faulty.bucket, repo, location)
        assert not [key for key in stored if "/chunks/" in key], f"a partial chunk is visible: {stored}"
        location = patch_ok(http, server, location, data, 0)
        response = finish(http, server, location, digest)
        assert response.status_code == 201, describe(response)
        assert read_blob(http, server, repo, digest) == data
    assert faulty.bucket.hash_object(faulty.bucket.data_key(digest)) == digest


def test_store_dies_during_commit(faulty: FaultyStore) -> None:
    proxy, server = faulty.proxy, faulty.server
    chunk1 = random_bytes(6 * MiB + 1, "commit-1")
    chunk2 = random_bytes(6 * MiB + 2, "commit-2")
    data = chunk1 + chunk2
    digest = digest_of(data)
    repo = "e2e/faults/commit"
    with client() as http:
        location = start_upload(http, server, repo)
        location = patch_ok(http, server, location, chunk1, 0)
        location = patch_ok(http, server, location, chunk2, len(chunk1))
        # Two chunks are concatenated into the blob's `data` object at commit: the store dies half-way through.
        proxy.down_after(6 * MiB)
        response, elapsed = timed(finish, http, server, location, digest)
        assert proxy.went_down.is_set(), "the store did not go down during the PUT"
        assert_unavailable(response, elapsed)

        proxy.up()
        assert_no_blob(faulty, http, repo, digest)
        assert_status(http, server, location, len(data))
        # The client retries the PUT: the session is intact, the blob is published whole.
        response = finish(http, server, location, digest)
        assert response.status_code == 201, describe(response)
        assert read_blob(http, server, repo, digest) == data
    assert faulty.bucket.hash_object(faulty.bucket.data_key(digest)) == digest
    assert session_objects(faulty.bucket, repo, location) == []


def test_skopeo_push_interrupted_then_repeated(faulty: FaultyStore, skopeo: Skopeo, tmp_path: Path) -> None:
    proxy, server = faulty.proxy, faulty.server
    src, manifest, layer = build_image(tmp_path, 32 * MiB, seed=32)
    repo = "e2e/faults/skopeo"
    proxy.down_after(8 * MiB)
    result, elapsed = timed(
        skopeo.run,
        "copy",
        "--preserve-digests",
        "--retry-times=0",
        "--dest-tls-verify=false",
        f"oci:{src.path}:v1",
        server.ref(repo, "v1"),
        check=False,
        timeout=2 * BOUND,
    )
    assert proxy.went_down.is_set(), f"the store did not go down during the push: {result.stderr}"
    assert result.returncode != 0, f"skopeo succeeded with the store down:\n{result.stderr}"
    assert elapsed < BOUND, f"skopeo took {elapsed:.1f}s to fail"
    # skopeo usually reports the registry's 503; now and then its Go HTTP client reports the connection reset that
    # follows the early 503 instead (see test_early_503_lets_the_client_finish_sending[connection-close]).
    assert "503" in result.stderr or "connection reset by peer" in result.stderr, result.stderr
    # (Other blobs of the image may have gone up before the store died: their PATCHes were accepted.)
    assert 503 in statuses(server, "PATCH", "upload", repo), statuses(server, "PATCH", "upload", repo)
    assert "storage unavailable" in server.log()

    proxy.up()
    with client() as http:
        assert_no_blob(faulty, http, repo, layer)
        response = http.get(f"{server.url}/v2/{repo}/manifests/v1")
        assert response.status_code == 404, describe(response)
    skopeo.push(src.path, "v1", server.ref(repo, "v1"))
    assert_pushed_completely(faulty, skopeo, src, repo, manifest, tmp_path)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response with a Content-Length body from a raw socket: (status, headers, body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed before a complete response head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (h.partition(":") for h in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed in the middle of the response body: {body!r}"
        body += chunk
    return int(status_line.split()[1]), headers, body[:length]


@pytest.mark.parametrize("connection", ["keep-alive", "close"], ids=["keep-alive", "connection-close"])
def test_early_503_lets_the_client_finish_sending(faulty: FaultyStore, connection: str) -> None:
    """The store dies while a big chunk streams in: moorage answers 503 before it has read the whole request.

    It must then keep reading (and dropping) the rest of the body rather than reset the connection under a client
    that is still sending (RFC 9112, section 9.6: close in stages, or the client may never see the answer). skopeo
    sends its PATCH with `Connection: close`; when the connection is reset under it, its Go HTTP client reports
    "write: connection reset by peer" instead of the registry's 503, now and then.
    """
    proxy, server = faulty.proxy, faulty.server
    repo = "e2e/faults/early-answer"
    total = 24 * MiB
    block = random_bytes(64 * 1024, "early-answer")
    with client() as http:
        location = start_upload(http, server, repo)
    proxy.down_after(4 * MiB)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=BOUND) as sock:
        sock.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: {server.host}\r\nContent-Type: application/octet-stream\r\n"
            f"Transfer-Encoding: chunked\r\nConnection: {connection}\r\n\r\n".encode()
        )
        sent = 0
        send_error: OSError | None = None
        try:
            while sent < total:
                sock.sendall(b"%x\r\n%b\r\n" % (len(block), block))
                sent += len(block)
            sock.sendall(b"0\r\n\r\n")
        except OSError as e:
            send_error = e
        status, headers, body = read_response(sock)
    elapsed = time.monotonic() - started
    assert proxy.went_down.is_set(), "the store did not go down during the PATCH"
    assert elapsed < BOUND, f"{elapsed:.1f}s to answer"
    assert status == 503, (status, headers, body)
    assert json.loads(body)["errors"][0]["code"] == "UNAVAILABLE", body
    assert send_error is None, (
        f"the server reset the connection after {sent} of {total} body bytes, while the client was still sending "
        f"({send_error}); it answered {status} {body.decode()!r} first (Connection: {connection})"
    )
    proxy.up()
    with client() as http:
        assert_status(http, server, location, 0)


def test_hung_store_gives_503_not_a_hang(faulty: FaultyStore) -> None:
    """The store accepts connections and never answers: the read timeout, not the client, ends the wait."""
    proxy, server = faulty.proxy, faulty.server
    repo = "e2e/faults/hung"
    with client() as http:
        proxy.blackhole()
        response, elapsed = timed(http.get, f"{server.url}/v2/")
        assert response.status_code == 200 and elapsed < 5, describe(response)
        response, elapsed = timed(http.get, f"{server.url}/v2/{repo}/manifests/latest")
        assert_unavailable(response, elapsed)
        proxy.up()
        response = http.get(f"{server.url}/v2/{repo}/manifests/latest")
        assert response.status_code == 404, describe(response)
        assert error_codes(response) in (["MANIFEST_UNKNOWN"], ["NAME_UNKNOWN"])


def test_store_calls_are_tried_max_attempts_times(faulty: FaultyStore) -> None:
    """`storage.s3.max_attempts` counts attempts (it must be at least 1): 2 means one try and one retry.

    While the store is down every attempt is one refused connection at the proxy.
    """
    proxy, server = faulty.proxy, faulty.server
    url = f"{server.url}/v2/e2e/faults/attempts/manifests/latest"
    with client() as http:
        proxy.down()
        # A first request drops whatever pooled connections the server had, so each attempt below connects anew.
        response, elapsed = timed(http.get, url)
        assert_unavailable(response, elapsed)
        before = proxy.connections
        response, elapsed = timed(http.get, url)
        assert_unavailable(response, elapsed)
        attempts = proxy.connections - before
        proxy.up()
    assert attempts == MAX_ATTEMPTS, (
        f"one store call was attempted {attempts} times with MOORAGE_STORAGE__S3__MAX_ATTEMPTS={MAX_ATTEMPTS}"
    )
