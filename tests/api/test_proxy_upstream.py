"""The pull-through cache against an upstream that misbehaves: a scripted HTTP server on 127.0.0.1.

429s pause the upstream instead of passing a storm on; content that does not match its digest, manifests over the
size limit and blobs of unannounced size are refused and leave nothing cached; what the upstream refuses is unknown
to clients, and its credentials never reach them; mirror mode keeps new names local.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from asgi_lifespan import LifespanManager

from registry.app import create_app
from registry.digests import Digest
from registry.gc.collector import GarbageCollector, GcOptions
from registry.proxy import fills, spools
from registry.proxy.fills import FillFailed
from registry.store.registry import Registry
from tests.api.conftest import ClientFactory, make_settings
from tests.api.helpers import push_blob
from tests.api.test_route_access import PASSWORD, basic
from tests.auth.test_htpasswd import bcrypt_entry
from tests.webhook_receiver import Receiver

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SECRET = "upstream-secret-pw"


class FakeUpstream:
    """Answers each (method, path) with what `routes` says (status, headers, body); records every request."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], tuple[int, dict[str, str], bytes]] = {}
        self.default: tuple[int, dict[str, str], bytes] = (404, {}, b"")
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.blob_get: Callable[[BaseHTTPRequestHandler], None] | None = None  # answers blob GETs itself
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def answer(self, method: str) -> None:
                upstream.requests.append((method, self.path, dict(self.headers)))
                status, headers, body = upstream.routes.get((method, self.path), upstream.default)
                self.send_response(status)
                chunked = headers.get("Transfer-Encoding") == "chunked"
                for key, value in headers.items():
                    self.send_header(key, value)
                if not chunked and "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if method == "HEAD":
                    return
                if chunked:
                    self.wfile.write(f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
                else:
                    self.wfile.write(body)

            def do_GET(self) -> None:
                if "/blobs/" in self.path and upstream.blob_get is not None:
                    upstream.requests.append(("GET", self.path, dict(self.headers)))
                    upstream.blob_get(self)
                    return
                self.answer("GET")

            def do_HEAD(self) -> None:
                self.answer("HEAD")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def manifest(self, repository: str, tag: str, body: bytes, digest: str | None = None) -> str:
        digest = digest or "sha256:" + hashlib.sha256(body).hexdigest()
        headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": digest}
        for reference in (tag, digest):
            for method in ("HEAD", "GET"):
                self.routes[(method, f"/v2/{repository}/manifests/{reference}")] = (200, headers, body)
        return digest

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def oci_manifest(seed: str) -> bytes:
    config = "sha256:" + hashlib.sha256(seed.encode()).hexdigest()
    layer = "sha256:" + hashlib.sha256((seed + "layer").encode()).hexdigest()
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 10},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 20}],
        }
    ).encode()


@pytest.fixture
def storage_config(tmp_path: Path) -> dict[str, Any]:
    return {"filesystem": {"root": str(tmp_path / "data"), "fsync": False}}


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    yield fake
    fake.close()


def proxied(upstream: FakeUpstream, **options: Any) -> dict[str, Any]:
    return {"proxy": {"upstreams": [{"name": "up", "url": upstream.url, "prefix": "up", "attempts": 1, **options}]}}


async def test_a_429_pauses_the_upstream_instead_of_passing_a_storm_on(
    client_factory: ClientFactory, upstream: FakeUpstream
) -> None:
    upstream.default = (429, {"Retry-After": "120"}, b"")
    client = await client_factory(proxied(upstream))
    for _ in range(5):
        response = await client.get("/v2/up/team/app/manifests/v1")
        assert response.status_code == 503, response.text
        assert response.json()["errors"][0]["code"] == "UNAVAILABLE"
        assert 100 <= int(response.headers["Retry-After"]) <= 120
    assert len(upstream.requests) == 1  # the pause: the other four never left the registry


async def test_content_that_does_not_match_its_digest_is_refused_and_not_cached(
    client_factory: ClientFactory, upstream: FakeUpstream
) -> None:
    body = oci_manifest("a")
    claimed = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    upstream.manifest("team/app", "v1", body, digest=claimed)
    client = await client_factory(proxied(upstream))
    for reference in ("v1", claimed):
        response = await client.get(f"/v2/up/team/app/manifests/{reference}")
        assert response.status_code == 503, response.text
    assert (await client.get("/v2/_catalog")).json()["repositories"] == []


async def test_a_manifest_over_the_size_limit_is_refused(client_factory: ClientFactory, upstream: FakeUpstream) -> None:
    body = oci_manifest("a")[:-1] + b"," + b'"annotations":{"x":"' + b"y" * 8192 + b'"}}'
    upstream.manifest("team/app", "v1", body)
    client = await client_factory({**proxied(upstream), "storage": {"manifest_max_bytes": 4096}})
    response = await client.get("/v2/up/team/app/manifests/v1")
    assert response.status_code == 503, response.text
    assert (await client.get("/v2/_catalog")).json()["repositories"] == []


async def test_a_blob_of_unannounced_size_is_refused(client_factory: ClientFactory, upstream: FakeUpstream) -> None:
    data = b"x" * 1000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    upstream.routes[("HEAD", f"/v2/team/app/blobs/{digest}")] = (200, {"Content-Length": "1000"}, b"")
    upstream.routes[("GET", f"/v2/team/app/blobs/{digest}")] = (200, {"Transfer-Encoding": "chunked"}, data)
    client = await client_factory(proxied(upstream))
    response = await client.get(f"/v2/up/team/app/blobs/{digest}")
    assert response.status_code == 503, response.text
    assert response.json()["errors"][0]["code"] == "UNAVAILABLE"


async def test_what_the_upstream_refuses_is_unknown_and_its_credentials_stay_secret(
    client_factory: ClientFactory, upstream: FakeUpstream
) -> None:
    upstream.default = (401, {"WWW-Authenticate": 'Basic realm="upstream"'}, b"")
    client = await client_factory(proxied(upstream, username="cache", password=SECRET))
    response = await client.get("/v2/up/team/app/manifests/v1")
    assert response.status_code == 404, response.text
    assert response.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    assert "refused" in response.text
    assert SECRET not in response.text
    # The cache did answer the challenge with its credentials (and the upstream refused them).
    assert any("Authorization" in headers for _, _, headers in upstream.requests)


async def test_mirror_mode_keeps_new_names_local_and_refuses_pushes_to_cached_ones(
    client_factory: ClientFactory, upstream: FakeUpstream
) -> None:
    digest = upstream.manifest("library/alpine", "latest", oci_manifest("alpine"))
    client = await client_factory({"proxy": {"upstreams": [{"name": "hub", "url": upstream.url, "prefix": ""}]}})
    pulled = await client.get("/v2/library/alpine/manifests/latest", headers={"Accept": OCI_MANIFEST})
    assert pulled.status_code == 200, pulled.text
    assert pulled.headers["Docker-Content-Digest"] == digest
    assert pulled.headers["Moorage-Cache"] == "miss"
    refused = await client.post("/v2/library/alpine/blobs/uploads/")
    assert refused.status_code == 405, refused.text
    assert refused.json()["errors"][0]["code"] == "UNSUPPORTED"
    # A name nobody has is the registry's own once pushed, and never looked up upstream again.
    assert (await client.post("/v2/team/new/blobs/uploads/")).status_code == 202
    data = b"local"
    blob = "sha256:" + hashlib.sha256(data).hexdigest()
    assert (await client.post(f"/v2/team/new/blobs/uploads/?digest={blob}", content=data)).status_code == 201
    before = len(upstream.requests)
    assert (await client.get(f"/v2/team/new/blobs/{blob}")).content == data
    assert (await client.get("/v2/team/new/manifests/v1")).status_code == 404
    assert len(upstream.requests) == before


# -- Found by an attack-minded review -------------------------------------------------------------------------------


def with_mallory(tmp_path: Path, upstream: FakeUpstream, prefix: str) -> dict[str, Any]:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("".join(bcrypt_entry(user, PASSWORD) + "\n" for user in ("admin", "mallory")))
    return {
        "auth": {"htpasswd": {"path": str(htpasswd)}},
        "access": [
            {"repository": "**", "users": ["admin"], "actions": ["*"]},
            {"repository": "up/**", "users": ["mallory"], "actions": ["pull"]},
            {"repository": "library/**", "users": ["mallory"], "actions": ["pull"]},
        ],
        "proxy": {"upstreams": [{"name": "up", "url": upstream.url, "prefix": prefix, "attempts": 1}]},
    }


async def test_a_private_layer_is_not_served_through_a_cached_name(
    client_factory: ClientFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    client = await client_factory(with_mallory(tmp_path, upstream, "up"))
    client.auth = httpx.BasicAuth("admin", PASSWORD)
    secret = await push_blob(client, "secret/app", b"a private layer of secret/app")
    client.auth = None
    assert (await client.get(f"/v2/secret/app/blobs/{secret}", headers=basic("mallory"))).status_code == 403
    # The upstream has no such blob: the registry's copy is not linked into the cached name, HEAD or GET.
    for method in ("HEAD", "GET", "HEAD"):
        response = await client.request(method, f"/v2/up/anything/blobs/{secret}", headers=basic("mallory"))
        assert response.status_code == 404, (method, response.text)
    assert ("HEAD", f"/v2/anything/blobs/{secret}") in [(m, p) for m, p, _ in upstream.requests]
    # An upstream that claims it (a HEAD says 200, with the right size) without sending its bytes: still not linked.
    upstream.routes[("HEAD", f"/v2/other/blobs/{secret}")] = (200, {"Content-Length": "29"}, b"")
    claimed = await client.get(f"/v2/up/other/blobs/{secret}", headers=basic("mallory"))
    assert claimed.status_code == 404, claimed.text
    # One that sends other bytes under the digest (it learned the digest, not the content): a blob this small comes
    # whole, checked against its digest, and the stream is cut before its end (as for any corrupt upstream blob).
    upstream.routes[("GET", f"/v2/other/blobs/{secret}")] = (200, {}, b"x" * 29)
    received = b""
    with contextlib.suppress(FillFailed, httpx.HTTPError):
        async with client.stream("GET", f"/v2/up/other/blobs/{secret}", headers=basic("mallory")) as forged:
            async for chunk in forged.aiter_bytes():
                received += chunk
    assert b"private" not in received
    # One that holds the bytes: served, and linked.
    upstream.routes[("GET", f"/v2/other/blobs/{secret}")] = (200, {}, b"a private layer of secret/app")
    served = await client.get(f"/v2/up/other/blobs/{secret}", headers=basic("mallory"))
    assert served.status_code == 200 and served.content == b"a private layer of secret/app"
    gets = [h.get("Range") for m, p, h in upstream.requests if m == "GET" and "/blobs/" in p]
    assert gets == [None, None, None]  # a blob under 4 MiB is never sampled: it comes whole


async def test_mirror_mode_a_blob_request_keeps_the_name_a_cache(
    client_factory: ClientFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    digest = upstream.manifest("library/alpine", "latest", oci_manifest("alpine"))
    data = b"a layer of alpine"
    blob = "sha256:" + hashlib.sha256(data).hexdigest()
    upstream.routes[("HEAD", f"/v2/library/alpine/blobs/{blob}")] = (200, {"Content-Length": str(len(data))}, b"")
    upstream.routes[("GET", f"/v2/library/alpine/blobs/{blob}")] = (200, {}, data)
    client = await client_factory(with_mallory(tmp_path, upstream, ""))
    assert (await client.get(f"/v2/library/alpine/blobs/{blob}", headers=basic("mallory"))).content == data
    manifest = await client.get(
        "/v2/library/alpine/manifests/latest", headers={**basic("mallory"), "Accept": OCI_MANIFEST}
    )
    assert manifest.status_code == 200, manifest.text
    assert manifest.headers["Docker-Content-Digest"] == digest


class GatedUpstream(FakeUpstream):
    """Answers blob GETs with headers and half the body, then waits for `gate` before the rest."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data
        self.gate = threading.Event()

        def blob_get(request: BaseHTTPRequestHandler) -> None:
            request.send_response(200)
            request.send_header("Content-Length", str(len(data)))
            request.end_headers()
            request.wfile.write(data[: len(data) // 2])
            request.wfile.flush()
            self.gate.wait(10)
            request.wfile.write(data[len(data) // 2 :])

        self.blob_get = blob_get

    def close(self) -> None:
        self.gate.set()
        super().close()


async def test_a_fill_answers_only_for_its_own_upstream(client_factory: ClientFactory, upstream: FakeUpstream) -> None:
    data = b"p" * 300_000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    private = GatedUpstream(data)
    private.routes[("HEAD", f"/v2/corp/app/blobs/{digest}")] = (200, {"Content-Length": str(len(data))}, b"")
    try:
        client = await client_factory(
            {
                "proxy": {
                    "upstreams": [
                        {"name": "private", "url": private.url, "prefix": "private", "attempts": 1},
                        {"name": "public", "url": upstream.url, "prefix": "public", "attempts": 1},
                    ]
                }
            }
        )
        owner = asyncio.create_task(client.get(f"/v2/private/corp/app/blobs/{digest}"))
        for _ in range(500):  # until the private upstream is sending the blob
            if any(m == "GET" for m, _, _ in private.requests):
                break
            await asyncio.sleep(0.02)
        # The same digest under another upstream, while the private one's fill is under way: that upstream decides.
        other = await client.get(f"/v2/public/any/thing/blobs/{digest}")
        assert other.status_code == 404, other.text
        private.gate.set()
        assert (await owner).content == data
        assert (await client.get(f"/v2/public/any/thing/blobs/{digest}")).status_code == 404
    finally:
        private.close()


async def test_fills_spool_in_memory_within_the_budget_and_on_disk_beyond_it(storage_config: dict[str, Any]) -> None:
    first, second = b"m" * 300_000, b"d" * 300_000  # the budget holds one of them, not both
    gated = {name: GatedUpstream(data) for name, data in (("first", first), ("second", second))}
    digests = {name: "sha256:" + hashlib.sha256(up.data).hexdigest() for name, up in gated.items()}
    for name, up in gated.items():
        up.routes[("HEAD", f"/v2/corp/app/blobs/{digests[name]}")] = (200, {"Content-Length": "300000"}, b"")
    upstreams = [{"name": name, "url": up.url, "prefix": name, "attempts": 1} for name, up in gated.items()]
    app = create_app(make_settings(storage_config, {"proxy": {"upstreams": upstreams, "spool_memory": 400_000}}))
    cache_fills = app.state.registry.read_through.fills
    memory = cache_fills.memory
    try:
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://registry.test") as c,
        ):

            async def pull(name: str) -> bytes:
                return (await c.get(f"/v2/{name}/corp/app/blobs/{digests[name]}")).content

            async def spooling(name: str) -> fills.Fill:
                for _ in range(500):  # until the upstream announced the blob's size: its spool is chosen then
                    for fill in cache_fills.under_way():
                        if str(fill.digest) == digests[name] and fill.size is not None:
                            return fill
                    await asyncio.sleep(0.02)
                raise AssertionError(f"no fill of {name}'s blob started")

            pulls = {"first": asyncio.create_task(pull("first"))}
            assert (await spooling("first")).spooled_in_memory
            assert memory.in_use == len(first)  # the whole announced size is reserved
            pulls["second"] = asyncio.create_task(pull("second"))
            assert not (await spooling("second")).spooled_in_memory
            assert memory.in_use == len(first)  # on disk: nothing more reserved
            for up in gated.values():
                up.gate.set()
            assert await pulls["first"] == first and await pulls["second"] == second
            assert memory.in_use == 0  # released with the spools, once the fills and their readers are done
            # Cached: served from storage now, the same bytes.
            assert await pull("first") == first and await pull("second") == second
    finally:
        for up in gated.values():
            up.close()


def test_the_default_spool_budget_is_shared_by_the_workers(storage_config: dict[str, Any]) -> None:
    proxy = {"upstreams": [{"name": "up", "url": "http://127.0.0.1:9", "prefix": "up"}]}
    for workers in (1, 4):
        app = create_app(make_settings(storage_config, {"proxy": proxy, "http": {"workers": workers}}))
        assert app.state.registry.read_through.fills.memory.limit == spools.default_budget(workers)
    assert spools.default_budget(4) < spools.default_budget(1)


@pytest.mark.parametrize("spool_memory", [None, 0], ids=["memory", "disk"])
async def test_readers_joining_a_fill_get_the_exact_bytes_of_their_ranges(
    storage_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch, spool_memory: int | None
) -> None:
    data = os.urandom(5 * 1024 * 1024 + 12345)  # several spool buffers; the upstream stops halfway until the gate
    monkeypatch.setattr(spools, "RECENT_BUFFERS", 1)  # a disk spool reads lagging readers back from its file
    up = GatedUpstream(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    up.routes[("HEAD", f"/v2/corp/app/blobs/{digest}")] = (200, {"Content-Length": str(len(data))}, b"")
    proxy: dict[str, Any] = {"upstreams": [{"name": "up", "url": up.url, "prefix": "up", "attempts": 1}]}
    if spool_memory is not None:
        proxy["spool_memory"] = spool_memory
    app = create_app(make_settings(storage_config, {"proxy": proxy}))
    cache_fills = app.state.registry.read_through.fills
    url = f"/v2/up/corp/app/blobs/{digest}"
    try:
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://registry.test") as c,
        ):
            first = asyncio.create_task(c.get(url))
            for _ in range(500):  # until the fill has spooled what the upstream sent before the gate
                fill = next(iter(cache_fills.under_way()), None)
                if fill is not None and fill.written >= 2 * 1024 * 1024:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the fill did not start")
            assert fill.spooled_in_memory is (spool_memory is None)
            ranges = [(100, 1_500_000), (1_048_576, 2_097_151), (2_000_000, 3_500_000), (len(data) - 7, len(data) - 1)]
            joined = [
                asyncio.create_task(c.get(url, headers={"Range": f"bytes={start}-{end}"})) for start, end in ranges
            ]
            late = asyncio.create_task(c.get(url))
            await asyncio.sleep(0.1)
            up.gate.set()
            assert (await first).content == data and (await late).content == data
            for (start, end), task in zip(ranges, joined, strict=True):
                response = await task
                assert response.status_code == 206, response.text
                assert response.content == data[start : end + 1], (start, end)
            assert cache_fills.memory.in_use == 0
    finally:
        up.close()


async def test_a_reader_slower_than_the_fill_does_not_hold_its_memory(storage_config: dict[str, Any]) -> None:
    data = os.urandom(3 * 1024 * 1024 + 99)
    up = GatedUpstream(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    up.routes[("HEAD", f"/v2/corp/app/blobs/{digest}")] = (200, {"Content-Length": str(len(data))}, b"")
    upstreams = [{"name": "up", "url": up.url, "prefix": "up", "attempts": 1}]
    app = create_app(make_settings(storage_config, {"proxy": {"upstreams": upstreams}}))
    cache_fills = app.state.registry.read_through.fills
    try:
        async with (
            LifespanManager(app) as manager,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=manager.app), base_url="http://registry.test") as c,
        ):
            first = asyncio.create_task(c.get(f"/v2/up/corp/app/blobs/{digest}"))
            for _ in range(500):
                if any(f.written for f in cache_fills.under_way()):
                    break
                await asyncio.sleep(0.02)
            slow = cache_fills.spooled(Digest.parse(digest), 0, None)  # a client that reads one buffer, then stalls
            assert slow is not None and cache_fills.memory.in_use == len(data)
            received = [await anext(slow)]
            up.gate.set()
            assert (await first).content == data
            # Stored: the memory is back in the budget although the slow reader has not finished.
            assert cache_fills.under_way() == [] and cache_fills.memory.in_use == 0
            received += [chunk async for chunk in slow]  # the rest from storage
            assert b"".join(received) == data
    finally:
        up.close()


async def test_search_and_repository_summaries_say_what_is_cached(
    client_factory: ClientFactory, upstream: FakeUpstream
) -> None:
    upstream.manifest("team/app", "v1", oci_manifest("app"))
    client = await client_factory(proxied(upstream))
    assert (await client.get("/v2/up/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST})).status_code == 200
    data = b"own"
    blob = "sha256:" + hashlib.sha256(data).hexdigest()
    assert (await client.post(f"/v2/team/app/blobs/uploads/?digest={blob}", content=data)).status_code == 201
    found: dict[str, Any] = {}
    for _ in range(100):  # the index applies the writes' events in the background
        results = (await client.get("/api/v1/search", params={"q": "app"})).json()["results"]
        found = {r["name"]: r["cachedFrom"] for r in results}
        if len(found) == 2:
            break
        await asyncio.sleep(0.05)
    assert found == {"up/team/app": "up", "team/app": None}
    summary = (await client.get("/api/v1/repositories/up/team/app")).json()
    assert summary["cachedFrom"] == "up"
    # And the UI's list and repository page.
    listing = (await client.get("/ui/")).text
    assert listing.count("cached from up") == 1, listing
    assert 'id="cached-from"' in (await client.get("/ui/r/up/team/app")).text
    assert 'id="cached-from"' not in (await client.get("/ui/r/team/app")).text


class DroppingUpstream(FakeUpstream):
    """Sends the first GET of a blob half-way and drops the connection; answers Range requests as a registry does."""

    def __init__(self, data: bytes, *, ranges: bool = True) -> None:
        super().__init__()
        self.dropped = 0

        def blob_get(request: BaseHTTPRequestHandler) -> None:
            wanted = request.headers.get("Range")
            if wanted and ranges:
                start = int(wanted.removeprefix("bytes=").removesuffix("-"))
                request.send_response(206)
                request.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                request.send_header("Content-Length", str(len(data) - start))
                request.end_headers()
                request.wfile.write(data[start:])
                return
            request.send_response(200)
            request.send_header("Content-Length", str(len(data)))
            request.end_headers()
            if self.dropped < 1:
                self.dropped += 1
                request.wfile.write(data[: len(data) // 3])
                request.wfile.flush()
                request.close_connection = True
                request.connection.shutdown(2)
                return
            request.wfile.write(data)

        self.blob_get = blob_get


@pytest.mark.parametrize("ranges", [True, False])
async def test_a_dropped_upstream_connection_is_resumed_with_a_range(
    client_factory: ClientFactory, ranges: bool
) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    upstream = DroppingUpstream(data, ranges=ranges)
    upstream.routes[("HEAD", f"/v2/team/app/blobs/{digest}")] = (200, {"Content-Length": str(len(data))}, b"")
    try:
        client = await client_factory(proxied(upstream, attempts=2))
        if ranges:  # picked up where the connection dropped, and all of it served
            response = await client.get(f"/v2/up/team/app/blobs/{digest}")
            assert response.content == data
            gets = [headers.get("Range") for method, _, headers in upstream.requests if method == "GET"]
            assert gets == [None, f"bytes={len(data) // 3}-"], gets
            encodings = {headers.get("Accept-Encoding") for method, _, headers in upstream.requests if method == "GET"}
            assert encodings == {"identity"}  # the bytes as stored: a digest covers those
        else:  # an upstream that ignores Range cannot resume: the stream is cut, nothing cached; the next pull fetches
            with pytest.raises(FillFailed):  # in process, the cut stream is the app's exception
                await client.get(f"/v2/up/team/app/blobs/{digest}")
            again = await client.get(f"/v2/up/team/app/blobs/{digest}")
            assert again.content == data
    finally:
        upstream.close()


async def test_a_layer_two_repositories_share_upstream_is_fetched_once(
    client_factory: ClientFactory, upstream: FakeUpstream
) -> None:
    data = b"b" * 300_000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    for repository in ("team/one", "team/two"):
        upstream.routes[("HEAD", f"/v2/{repository}/blobs/{digest}")] = (200, {"Content-Length": str(len(data))}, b"")
    gate = threading.Event()

    def blob_get(request: BaseHTTPRequestHandler) -> None:
        request.send_response(200)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data[:1000])
        request.wfile.flush()
        gate.wait(10)
        request.wfile.write(data[1000:])

    upstream.blob_get = blob_get
    client = await client_factory(proxied(upstream))
    first = asyncio.create_task(client.get(f"/v2/up/team/one/blobs/{digest}"))
    second = asyncio.create_task(client.get(f"/v2/up/team/two/blobs/{digest}"))
    await asyncio.sleep(0.3)
    gate.set()
    assert (await first).content == data
    assert (await second).content == data
    assert len([p for m, p, _ in upstream.requests if m == "GET"]) == 1
    # HEAD of a blob not linked in a repository says nothing of what storage holds.
    upstream.routes[("HEAD", f"/v2/team/three/blobs/{digest}")] = (200, {"Content-Length": str(len(data))}, b"")
    head = await client.head(f"/v2/up/team/three/blobs/{digest}")
    assert head.status_code == 200
    assert head.headers["Moorage-Cache"] == "miss"


async def test_an_upstream_trickling_a_blob_is_cut(
    client_factory: ClientFactory, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fills, "RATE_WINDOW", 0.3)
    data = b"t" * 20_000
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    upstream.routes[("HEAD", f"/v2/team/app/blobs/{digest}")] = (200, {"Content-Length": str(len(data))}, b"")

    def blob_get(request: BaseHTTPRequestHandler) -> None:
        request.send_response(200)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        for start in range(0, len(data), 1000):  # 10 kB/s
            request.wfile.write(data[start : start + 1000])
            request.wfile.flush()
            time.sleep(0.1)

    upstream.blob_get = blob_get
    client = await client_factory({**proxied(upstream), "proxy": {**proxied(upstream)["proxy"], "min_rate": 1_000_000}})
    started = time.monotonic()
    with pytest.raises(FillFailed):  # in process, the cut stream is the app's exception
        await client.get(f"/v2/up/team/app/blobs/{digest}")
    assert time.monotonic() - started < 1.5


async def test_gc_evicts_cached_repositories_unused_for_evict_after(
    client_factory: ClientFactory, upstream: FakeUpstream, storage_config: dict[str, Any]
) -> None:
    data = b"layer of app"
    blob = "sha256:" + hashlib.sha256(data).hexdigest()
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob, "size": len(data)},
            "layers": [],
        }
    ).encode()
    for repository in ("team/old", "team/fresh"):
        upstream.manifest(repository, "v1", body)
        upstream.routes[("HEAD", f"/v2/{repository}/blobs/{blob}")] = (200, {"Content-Length": str(len(data))}, b"")
        upstream.routes[("GET", f"/v2/{repository}/blobs/{blob}")] = (200, {}, data)
    sections = proxied(upstream, evict_after="1s")
    client = await client_factory(sections)
    for repository in ("team/old", "team/fresh"):
        assert (await client.get(f"/v2/up/{repository}/manifests/v1")).status_code == 200
        assert (await client.get(f"/v2/up/{repository}/blobs/{blob}")).content == data
    await asyncio.sleep(1.5)
    assert (await client.get("/v2/up/team/fresh/manifests/v1")).status_code == 200  # used again: kept

    settings = make_settings(storage_config, sections)
    options = GcOptions.of(settings, grace=0.0, settle=0.0)
    assert options.evictions == (("up", 1.0),)
    registry = Registry.from_settings(settings)
    await registry.start()
    try:
        dry = await GarbageCollector(registry, GcOptions.of(settings, dry_run=True)).run()
        assert dry.evicted == ["up/team/old"]
        assert await registry.repositories.exists("up/team/old")
        report = await GarbageCollector(registry, options).run()
        assert report.evicted == ["up/team/old"]
        assert not await registry.repositories.exists("up/team/old")
        assert await registry.repositories.exists("up/team/fresh")
        assert not report.blobs_removed  # the fresh one still references the layer
    finally:
        await registry.aclose()
    # Pulled again after eviction: fetched again from the upstream.
    before = len(upstream.requests)
    assert (await client.get("/v2/up/team/old/manifests/v1")).status_code == 200
    assert len(upstream.requests) > before


async def test_cache_fills_are_pushes_by_the_cache_and_allow_push_lets_clients_push(
    client_factory: ClientFactory, upstream: FakeUpstream, receiver: Receiver, tmp_path: Path
) -> None:
    digest = upstream.manifest("team/app", "v1", oci_manifest("app"))
    hooks = {"endpoints": [{"name": "hooks", "url": receiver.url}], "queue_path": str(tmp_path / "events.sqlite3")}
    sections = {**proxied(upstream, allow_push=True), "notifications": hooks}
    client = await client_factory(sections)
    assert (await client.get("/v2/up/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST})).status_code == 200
    (pushed,) = await receiver.wait_for("push", "manifests")
    assert pushed["actor"]["name"] == "moorage:proxy:up"
    assert pushed["target"]["digest"] == digest
    # allow_push: the prefix takes the clients' pushes too.
    assert (await client.post("/v2/up/team/own/blobs/uploads/")).status_code == 202


async def test_a_push_into_a_cached_prefix_is_authorized_before_it_is_refused(
    client_factory: ClientFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    client = await client_factory(with_mallory(tmp_path, upstream, "up"))
    assert (await client.post("/v2/up/team/x/blobs/uploads/")).status_code == 401  # nothing said of the cache
    assert (await client.post("/v2/up/team/x/blobs/uploads/", headers=basic("mallory"))).status_code == 403
    refused = await client.post("/v2/up/team/x/blobs/uploads/", headers=basic("admin"))
    assert refused.status_code == 405
    assert refused.json()["errors"][0]["code"] == "UNSUPPORTED"


async def test_a_stored_blob_is_proven_with_a_sample_not_fetched_again(
    client_factory: ClientFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Deduplication stays cheap: an upstream that holds a blob already stored here shows four pieces of 256 bytes,
    at offsets anywhere in the blob it cannot foresee (Range requests), and the stored copy serves."""
    data = os.urandom(6 * 1024 * 1024)
    sent: list[tuple[str, int]] = []

    def ranged(request: BaseHTTPRequestHandler) -> None:
        first, _, last = request.headers["Range"].removeprefix("bytes=").partition("-")
        start, end = int(first), int(last)
        request.send_response(206)
        request.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        request.send_header("Content-Length", str(end - start + 1))
        request.end_headers()
        request.wfile.write(data[start : end + 1])
        sent.append((request.headers["Range"], end - start + 1))

    upstream.blob_get = ranged
    client = await client_factory(with_mallory(tmp_path, upstream, "up"))
    client.auth = httpx.BasicAuth("admin", PASSWORD)
    digest = await push_blob(client, "team/base", data)
    client.auth = None
    upstream.routes[("HEAD", f"/v2/library/base/blobs/{digest}")] = (200, {"Content-Length": str(len(data))}, b"")
    served = await client.get(f"/v2/up/library/base/blobs/{digest}", headers=basic("mallory"))
    assert served.status_code == 200 and served.content == data
    assert 1 <= len(sent) <= 4 and all(length == 256 for _, length in sent), sent
    starts = [int(asked.removeprefix("bytes=").partition("-")[0]) for asked, _ in sent]
    assert all(0 <= start <= len(data) - 256 for start in starts)


def image_with_config(config: bytes, layer: bytes) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": "sha256:" + hashlib.sha256(layer).hexdigest(),
                    "size": len(layer),
                }
            ],
        }
    ).encode()


async def summary_when_indexed(client: httpx.AsyncClient, name: str, headers: dict[str, str]) -> dict[str, Any]:
    for _ in range(100):  # the index applies the fill's events in the background
        response = await client.get(f"/api/v1/repositories/{name}", headers=headers)
        if response.status_code == 200 and response.json()["tags"]:
            return cast(dict[str, Any], response.json())
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name} never indexed: {response.text}")


async def test_a_cached_images_config_comes_first_and_is_indexed(
    client_factory: ClientFactory, upstream: FakeUpstream
) -> None:
    """The config is in the cached repository before its manifest (one upstream GET, which the client's own
    request for it then does not repeat), so the index reads it: platform and description."""
    config = json.dumps(
        {"architecture": "arm64", "os": "linux", "config": {"Labels": {"description": "from the upstream"}}}
    ).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    upstream.manifest("team/app", "v1", image_with_config(config, b"layer"))
    for method in ("HEAD", "GET"):
        upstream.routes[(method, f"/v2/team/app/blobs/{config_digest}")] = (200, {}, config)
    client = await client_factory(proxied(upstream))
    assert (await client.get("/v2/up/team/app/manifests/v1", headers={"Accept": OCI_MANIFEST})).status_code == 200
    summary = await summary_when_indexed(client, "up/team/app", {})
    assert summary["description"] == "from the upstream"
    assert summary["tags"][0]["platforms"] == ["linux/arm64"]
    assert (await client.get(f"/v2/up/team/app/blobs/{config_digest}")).content == config
    config_gets = [p for m, p, _ in upstream.requests if m == "GET" and p.endswith(config_digest)]
    assert len(config_gets) == 1


async def test_a_cached_manifest_naming_another_repositorys_config_does_not_index_it(
    client_factory: ClientFactory, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """An upstream's manifest naming the digest of a private config stored here (the upstream cannot show its
    bytes): the cached image is indexed without it, so search never shows that config's labels."""
    client = await client_factory(with_mallory(tmp_path, upstream, "up"))
    client.auth = httpx.BasicAuth("admin", PASSWORD)
    private = json.dumps(
        {"architecture": "s390x", "os": "linux", "config": {"Labels": {"description": "secret project X"}}}
    ).encode()
    await push_blob(client, "secret/app", private)
    client.auth = None
    upstream.manifest("lure/app", "v1", image_with_config(private, b"layer"))
    private_digest = "sha256:" + hashlib.sha256(private).hexdigest()
    upstream.routes[("HEAD", f"/v2/lure/app/blobs/{private_digest}")] = (
        200,
        {"Content-Length": str(len(private))},
        b"",
    )
    mallory = basic("mallory")
    pulled = await client.get("/v2/up/lure/app/manifests/v1", headers={**mallory, "Accept": OCI_MANIFEST})
    assert pulled.status_code == 200, pulled.text
    summary = await summary_when_indexed(client, "up/lure/app", mallory)
    assert "secret project X" not in json.dumps(summary) and "s390x" not in json.dumps(summary)
    search = await client.get("/api/v1/search", params={"q": "secret project"}, headers=mallory)
    assert search.status_code == 200 and "up/lure/app" not in search.text
