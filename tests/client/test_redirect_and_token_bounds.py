"""Bounds on what the proxy's upstream client (and the companion client) reads beside a response's own body, found
by a review: a redirect's body (httpx read it whole and decoded, whatever its size), a token server's answer (one at a
time for concurrent 401s, at most 1 MiB, within a deadline)."""

from __future__ import annotations

import asyncio
import functools
import gzip
import hashlib
import time
import tracemalloc
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import httpx
import pytest

from registry.client.bodies import IDENTITY
from registry.client.transport import Transport
from registry.digests import Digest
from registry.proxy.settings import UpstreamSettings
from registry.proxy.upstreams import Upstream, UpstreamUnavailable
from tests.tcp_handlers import serving

DECODED = 160 * 1024 * 1024  # well past the 64 MiB bound


@functools.cache
def bomb() -> bytes:  # made when a test needs it, not when the module is collected
    return gzip.compress(b"\0" * DECODED, 9)


BLOB = b"layer bytes"
DIGEST = Digest.parse("sha256:" + hashlib.sha256(BLOB).hexdigest())


class Body(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data


def handler(request: httpx.Request) -> httpx.Response:
    if request.url.path.startswith("/v2/"):  # the registry's answer: a redirect, with a gzip bomb for a body
        return httpx.Response(
            307, headers={"Location": "https://104.16.0.1/cdn/blob", "Content-Encoding": "gzip"}, stream=Body(bomb())
        )
    return httpx.Response(200, content=BLOB)


async def peak_of(coro: Coroutine[Any, Any, Any]) -> int:
    bomb()  # made before the measure
    tracemalloc.start()
    try:
        await coro
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def test_a_redirects_body_is_not_read_whole_by_the_client() -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler), follow_redirects=True, headers=IDENTITY)
    transport = Transport("registry.example", client=client, attempts=1)
    peak = await peak_of(transport.request("GET", "/v2/team/app/manifests/latest"))
    await transport.aclose()
    assert peak < 16 * 1024 * 1024, f"a {len(bomb())}-byte redirect body took {peak} bytes"


def public_upstream(network: httpx.AsyncBaseTransport) -> Upstream:
    return Upstream(UpstreamSettings(name="hub", url="https://93.184.216.34", attempts=1), http_transport=network)


async def test_a_redirects_body_is_not_read_whole_by_the_proxy() -> None:
    upstream = public_upstream(httpx.MockTransport(handler))

    async def pull() -> None:
        async with upstream.open_blob("team/app", DIGEST) as response:
            assert response is not None
            await response.aread()

    peak = await peak_of(pull())
    await upstream.aclose()
    assert peak < 16 * 1024 * 1024, f"a {len(bomb())}-byte redirect body took {peak} bytes"


async def test_concurrent_challenges_make_one_token_request() -> None:
    """Each concurrent 401 fetched its own token (in the proxy: one per client pulling, each answer up to the
    bound); now they wait for the first one's."""
    in_flight = peak = 0

    async def token_server(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        if request.url.path == "/token":
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.05)
            in_flight -= 1
            return httpx.Response(200, json={"token": f"t{peak}-{in_flight}-{id(request)}"})
        if "Authorization" not in request.headers:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://93.184.216.34/token"'})
        return httpx.Response(200, content=BLOB)

    upstream = public_upstream(httpx.MockTransport(token_server))

    async def pull() -> None:
        async with upstream.open_blob("team/app", DIGEST) as response:
            assert response is not None

    await asyncio.gather(*(pull() for _ in range(32)))
    await upstream.aclose()
    assert peak == 1


async def test_a_dribbling_token_server_is_cut_at_the_deadline() -> None:
    async def server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        port = writer.get_extra_info("sockname")[1]
        if head.startswith("GET /token"):
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(16):  # one byte every 0.5 s (the read timeout is 1 s)
                writer.write(b"1\r\n \r\n")
                await writer.drain()
                await asyncio.sleep(0.5)
            writer.write(b'd\r\n{"token":"t"}\r\n0\r\n\r\n')
        else:
            challenge = f'Bearer realm="http://127.0.0.1:{port}/token"'
            writer.write(f"HTTP/1.1 401 x\r\nWWW-Authenticate: {challenge}\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()

    async with serving(server) as port:
        upstream = Upstream(UpstreamSettings(name="hub", url=f"http://127.0.0.1:{port}", attempts=1, timeout=1))
        started = time.monotonic()
        try:
            with pytest.raises(UpstreamUnavailable, match="no whole answer"):
                await upstream.manifest("team/app", "latest", 4 * 1024 * 1024)
        finally:
            await upstream.aclose()
    took = time.monotonic() - started
    assert took < upstream.manifest_deadline + 1
