"""Ways around the proxy's address guard (registry/proxy/address_guard.py) a review of it found, each refused now:
an upstream's own DNS naming 127.x beside its public address (or answering 127.0.0.1 to a later lookup), the
unspecified addresses that connect to this machine, names the resolver's codec refuses, redirect loops; and an
upstream reached through a forward proxy from the environment, whose redirects must still be followed."""

from __future__ import annotations

import asyncio
import hashlib
import socket
from typing import Any

import httpx
import pytest

from registry.digests import Digest
from registry.proxy.address_guard import AddressGuard, AddressRefused, Reach, reach_of
from registry.proxy.settings import UpstreamSettings
from registry.proxy.upstreams import Upstream, UpstreamUnavailable
from tests.tcp_handlers import serving
from tests.test_proxy_address_guard import fetch_blob

BLOB = b"layer bytes"
DIGEST = Digest.parse("sha256:" + hashlib.sha256(BLOB).hexdigest())


class Redirecting(httpx.AsyncBaseTransport):
    """The upstream host (scripted) redirects to `target`; any other host goes to the real network stack."""

    def __init__(self, upstream_host: str, target: str) -> None:
        self.upstream_host, self.target = upstream_host, target
        self.real = httpx.AsyncHTTPTransport()
        self.sent: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(str(request.url))
        if request.url.host == self.upstream_host:
            return httpx.Response(307, headers={"Location": self.target})
        return await self.real.handle_async_request(request)

    async def aclose(self) -> None:
        await self.real.aclose()


async def test_a_private_upstream_cannot_reach_this_machine_through_the_unspecified_address() -> None:
    host = "0.0.0.0"
    hits: list[bytes] = []

    async def admin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hits.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecret")
        await writer.drain()

    async with serving(admin) as port:
        network = Redirecting("10.1.2.3", f"http://{host}:{port}/admin/delete-everything")
        with pytest.raises(UpstreamUnavailable) as refused:
            await fetch_blob(network, "http://10.1.2.3:5000")
    assert "sent the cache to 0.0.0.0" in str(refused.value)
    assert not hits, "the request to this machine was sent (the pre-check let it through)"


# Python 3.11.7's tables take 192.0.0.192 (a cloud's legacy metadata address) for a global one.
def test_a_cloud_metadata_address_the_stdlib_calls_global_is_not_public() -> None:
    assert reach_of("192.0.0.192") is not Reach.PUBLIC


# A redirect to a name the resolver's codec refuses: UnicodeError escaped (a 500), not UpstreamUnavailable.
@pytest.mark.parametrize("target", ["https://" + "a" * 64 + ".example/blob", "https://a..example/blob"])
async def test_a_name_the_resolver_refuses_is_an_unavailable_upstream(target: str) -> None:
    network = Redirecting("93.184.216.34", target)
    with pytest.raises(UpstreamUnavailable):
        await fetch_blob(network, "https://93.184.216.34")


# A redirect loop: httpx.TooManyRedirects (not a TransportError) escaped the upstream's error handling.
async def test_a_redirect_loop_is_an_unavailable_upstream() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(307, headers={"Location": f"https://104.16.0.1/hop{len(request.url.path)}"})

    with pytest.raises(UpstreamUnavailable):
        await fetch_blob(httpx.MockTransport(handler), "https://93.184.216.34")


async def test_an_upstream_naming_loopback_beside_its_public_address_gains_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def resolver(host: str, port: Any, **kwargs: Any) -> Any:
        if host == "registry.evil.example":  # its real (public) address, and one nothing listens on
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in ("93.184.216.34", "127.254.0.1")]
        return await real(host, port, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", resolver)
    guard = AddressGuard("https://registry.evil.example")
    metadata = httpx.Request("GET", "http://169.254.169.254/latest/meta-data/iam/security-credentials/")
    with pytest.raises(AddressRefused):
        await guard.check_request(metadata)


class Stream:
    def __init__(self, peer: str) -> None:
        self.peer = peer

    def get_extra_info(self, name: str) -> Any:
        return (self.peer, 443) if name == "server_addr" else None


async def test_an_upstream_name_rebound_to_loopback_after_it_answered_gains_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection went to its public address; the guard's own later lookup of the name answers 127.0.0.1."""
    loop = asyncio.get_running_loop()

    async def resolver(host: str, port: Any, **kwargs: Any) -> Any:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(loop, "getaddrinfo", resolver)
    guard = AddressGuard("https://registry.evil.example")
    own = httpx.Request("GET", "https://registry.evil.example/v2/team/app/blobs/sha256:00")
    await guard.check_response(httpx.Response(307, request=own, extensions={"network_stream": Stream("93.184.216.34")}))
    with pytest.raises(AddressRefused):
        await guard.check_request(httpx.Request("GET", "http://169.254.169.254/latest/meta-data/"))


async def test_a_public_upstream_behind_a_forward_proxy_still_redirects(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
            except asyncio.IncompleteReadError:
                break
            target = head.split(" ", 2)[1]
            seen.append(target)
            if target.startswith("http://93.184.216.34/"):  # the upstream: its blobs are on a CDN
                writer.write(b"HTTP/1.1 307 x\r\nLocation: http://104.16.0.1/cdn/blob\r\nContent-Length: 0\r\n\r\n")
            else:  # the CDN
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BLOB) + BLOB)
            await writer.drain()

    async with serving(proxy) as port:
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        upstream = Upstream(UpstreamSettings(name="hub", url="http://93.184.216.34", attempts=1))
        try:
            async with upstream.open_blob("library/alpine", DIGEST) as response:
                assert response is not None
                assert await response.aread() == BLOB
        finally:
            await upstream.aclose()
    assert seen == [f"http://93.184.216.34/v2/library/alpine/blobs/{DIGEST}", "http://104.16.0.1/cdn/blob"]
