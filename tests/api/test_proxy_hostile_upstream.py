"""A hostile upstream against the pull-through cache (found by an audit; each test failed before its fix): a
compressed manifest past the size limit, a challenge that took quadratic time on the event loop, a Retry-After the
parser choked on, and a manifest trickled in forever."""

from __future__ import annotations

import asyncio
import gzip
import resource
import socket
import threading
import time

import pytest

from registry.proxy.settings import UpstreamSettings
from registry.proxy.upstreams import Upstream, UpstreamUnavailable
from tests.api.conftest import ClientFactory
from tests.api.test_proxy_upstream import (  # noqa: F401 - the fixtures storage_config and upstream
    FakeUpstream,
    oci_manifest,
    proxied,
    storage_config,
    upstream,
)

MIB = 1024 * 1024


def rss_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


async def test_manifest_limit_holds_for_a_compressed_body(upstream: FakeUpstream) -> None:  # noqa: F811
    """Upstream.manifest's `limit` counts decoded bytes only after a whole raw chunk is decoded: gzip,gzip bomb."""
    inflated = 512 * MIB
    bomb = gzip.compress(gzip.compress(b"\0" * inflated, 9), 9)
    headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json", "Content-Encoding": "gzip, gzip"}
    upstream.routes[("GET", "/v2/team/app/manifests/v1")] = (200, headers, bomb)
    up = Upstream(UpstreamSettings(name="up", url=upstream.url, attempts=1))
    before = rss_mib()
    try:
        with pytest.raises(UpstreamUnavailable):
            await up.manifest("team/app", "v1", 4 * MIB)
    finally:
        await up.aclose()
    grew = rss_mib() - before
    assert grew < 64, f"a {len(bomb)}-byte upstream body grew the server's peak RSS by {grew} MiB (limit 4 MiB)"


async def test_a_pathological_challenge_does_not_freeze_the_server(
    client_factory: ClientFactory,
    upstream: FakeUpstream,  # noqa: F811 - the fixture imported above
) -> None:
    upstream.default = (401, {"WWW-Authenticate": "Bearer " + "a" * 30_000}, b"")
    client = await client_factory(proxied(upstream))
    started = time.monotonic()
    response = await client.get("/v2/up/team/app/manifests/v1")
    took = time.monotonic() - started
    assert took < 2, f"one upstream 401 held the event loop for {took:.1f}s (status {response.status_code})"


async def test_retry_after_non_ascii_digit_still_serves_the_cached_tag(
    client_factory: ClientFactory,
    upstream: FakeUpstream,  # noqa: F811 - the fixture imported above
) -> None:
    upstream.manifest("team/app", "v1", oci_manifest("a"))
    client = await client_factory(proxied(upstream, attempts=2, tag_ttl=0.05))
    first = await client.get("/v2/up/team/app/manifests/v1")
    assert first.status_code == 200, first.text
    upstream.routes.clear()
    await asyncio.sleep(0.1)
    upstream.default = (503, {"Retry-After": "\u00b2"}, b"")  # sent as latin-1 0xB2
    try:
        again = await client.get("/v2/up/team/app/manifests/v1")
    except ValueError as e:
        pytest.fail(f"upstream 503 + Retry-After: \\xb2 crashed the request ({e!r}) instead of serving stale")
    assert again.status_code == 200 and again.headers.get("Moorage-Cache") == "stale", (again.status_code, again.text)


class TrickleServer:
    """HEAD/GET: headers at once, then one byte every `every` seconds of a body of `length`."""

    def __init__(self, every: float, length: int = 100_000) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.every, self.length, self.stop = every, length, False
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.one, args=(conn,), daemon=True).start()

    def one(self, conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(
            f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {self.length}\r\n\r\n".encode()
        )
        try:
            for _ in range(self.length):
                if self.stop:
                    break
                time.sleep(self.every)
                conn.sendall(b" ")
        except OSError:
            pass
        conn.close()

    def close(self) -> None:
        self.stop = True
        self.sock.close()


async def test_a_trickling_manifest_is_cut() -> None:
    """timeout=1s per read; the upstream sends 1 byte per 0.2 s: the proxy's manifest GET has no overall deadline or
    minimum rate (blob fills have min_rate), so a cached tag's check holds every client pulling it."""
    server = TrickleServer(0.2)
    up = Upstream(UpstreamSettings(name="up", url=server.url, attempts=1, timeout=1))
    try:
        await asyncio.wait_for(up.manifest("team/app", "v1", 4 * MIB), 5)
    except UpstreamUnavailable:
        pass
    except TimeoutError:
        pytest.fail("the upstream manifest GET still reading after 5 s (1 s timeout): no deadline/min rate")
    finally:
        server.close()
        await up.aclose()
