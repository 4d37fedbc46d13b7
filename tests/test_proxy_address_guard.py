"""Where an upstream may send the pull-through cache: redirects and token realms no further inward than the
upstream itself (registry/proxy/address_guard.py). The upstream here is scripted (an httpx transport standing in
for the network) at a public address, so that what it names - this machine, a private network, a cloud's metadata
service - is refused without anything listening there; a real upstream on 127.0.0.1 (the proxy's other tests,
redirects to moto included) may send the cache anywhere."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest

from registry.digests import Digest
from registry.proxy.address_guard import AddressGuard, AddressRefused, Reach, reach_of
from registry.proxy.settings import UpstreamSettings
from registry.proxy.upstreams import Upstream, UpstreamUnavailable

PUBLIC_UPSTREAM = "https://93.184.216.34"  # a public address: nothing is sent to it, the transport is scripted
BLOB = b"layer bytes"
DIGEST = Digest.parse("sha256:" + hashlib.sha256(BLOB).hexdigest())
BLOB_PATH = f"/v2/team/app/blobs/{DIGEST}"


class ScriptedNetwork(httpx.AsyncBaseTransport):
    """Answers the upstream's blob with a redirect to `target`, and `target` with the blob; records every URL."""

    def __init__(self, target: str, challenge: str | None = None) -> None:
        self.target = target
        self.challenge = challenge
        self.sent: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(str(request.url))
        if request.url.host == "93.184.216.34":
            if self.challenge is not None and "Authorization" not in request.headers:
                return httpx.Response(401, headers={"WWW-Authenticate": self.challenge})
            return httpx.Response(307, headers={"Location": self.target})
        if request.url.path == "/token":
            return httpx.Response(200, json={"token": "t"})
        return httpx.Response(200, content=BLOB)


async def fetch_blob(network: httpx.AsyncBaseTransport, url: str = PUBLIC_UPSTREAM) -> bytes:
    """The blob through an Upstream whose requests `network` carries."""
    upstream = Upstream(UpstreamSettings(name="hub", url=url, attempts=1), http_transport=network)
    try:
        async with upstream.open_blob("team/app", DIGEST) as response:
            assert response is not None
            return await response.aread()
    finally:
        await upstream.aclose()


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:8080/admin",
        "http://[::1]:8080/admin",
        "http://[::ffff:127.0.0.1]:8080/admin",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/internal",
        "http://192.168.1.1/",
        "http://0.0.0.0:5000/",
        "http://localhost:5000/v2/",
    ],
)
async def test_a_public_upstream_cannot_redirect_the_cache_inward(target: str) -> None:
    network = ScriptedNetwork(target)
    with pytest.raises(UpstreamUnavailable, match="sent the cache to"):
        await fetch_blob(network)
    assert network.sent == [PUBLIC_UPSTREAM + BLOB_PATH], "the inward request must never be sent"


async def test_a_public_upstream_redirects_to_public_storage() -> None:
    """Docker Hub and GHCR send blobs to a CDN on another host: followed, without the upstream's credentials."""
    network = ScriptedNetwork("https://104.16.0.1/presigned/blob?sig=x")
    assert await fetch_blob(network) == BLOB
    assert network.sent == [PUBLIC_UPSTREAM + BLOB_PATH, "https://104.16.0.1/presigned/blob?sig=x"]


async def test_a_public_upstreams_token_realm_cannot_point_inward() -> None:
    realm = 'Bearer realm="https://127.0.0.1:9000/token",service="hub"'
    network = ScriptedNetwork("https://104.16.0.1/blob", challenge=realm)
    with pytest.raises(UpstreamUnavailable, match=r"sent the cache to 127\.0\.0\.1"):
        await fetch_blob(network)
    assert all("127.0.0.1" not in url for url in network.sent)


async def test_a_private_upstream_may_send_the_cache_to_its_network_not_to_this_machine() -> None:
    """A registry on the company network with its storage beside it (MinIO on another private address)."""
    upstream = "http://10.1.2.3:5000"
    guard = AddressGuard(upstream)
    await guard.check_request(httpx.Request("GET", "http://10.9.9.9:9000/bucket/blob"))
    await guard.check_request(httpx.Request("GET", "https://104.16.0.1/blob"))
    with pytest.raises(AddressRefused):
        await guard.check_request(httpx.Request("GET", "http://127.0.0.1:9000/bucket/blob"))


async def test_an_upstream_on_this_machine_may_send_the_cache_anywhere() -> None:
    guard = AddressGuard("http://127.0.0.1:5001")
    for target in ("http://127.0.0.1:9000/b", "http://10.0.0.1/b", "https://104.16.0.1/b"):
        await guard.check_request(httpx.Request("GET", target))


class Stream:
    def __init__(self, peer: str) -> None:
        self.peer = peer

    def get_extra_info(self, name: str) -> Any:
        return (self.peer, 443) if name == "server_addr" else None


async def test_a_name_that_resolved_outward_but_connected_inward_is_not_read() -> None:
    """DNS rebinding: the name passed the check, the connection reached 127.0.0.1; its answer is refused."""
    guard = AddressGuard(PUBLIC_UPSTREAM)
    request = httpx.Request("GET", "https://104.16.0.1/blob")
    await guard.check_request(request)
    inward = httpx.Response(200, request=request, extensions={"network_stream": Stream("127.0.0.1")})
    with pytest.raises(AddressRefused, match=r"reached 127\.0\.0\.1"):
        await guard.check_response(inward)
    outward = httpx.Response(200, request=request, extensions={"network_stream": Stream("104.16.0.1")})
    await guard.check_response(outward)
    own = httpx.Request("GET", PUBLIC_UPSTREAM + BLOB_PATH)  # the upstream's own answers are not looked at
    await guard.check_response(httpx.Response(200, request=own, extensions={"network_stream": Stream("127.0.0.1")}))


@pytest.mark.parametrize(
    ("address", "reach"),
    [
        ("127.0.0.1", Reach.LOOPBACK),
        ("127.5.5.5", Reach.LOOPBACK),
        ("::1", Reach.LOOPBACK),
        ("::ffff:127.0.0.1", Reach.LOOPBACK),
        ("10.0.0.1", Reach.PRIVATE),
        ("172.16.0.1", Reach.PRIVATE),
        ("100.64.0.1", Reach.PRIVATE),
        ("169.254.169.254", Reach.PRIVATE),
        ("fe80::1%eth0", Reach.PRIVATE),
        ("fd00::1", Reach.PRIVATE),
        ("0.0.0.0", Reach.LOOPBACK),
        ("::", Reach.LOOPBACK),
        ("::127.0.0.1", Reach.LOOPBACK),
        ("2002:a9fe:a9fe::1", Reach.PRIVATE),
        ("192.0.0.192", Reach.PRIVATE),
        ("224.0.0.1", Reach.PRIVATE),
        ("8.8.8.8", Reach.PUBLIC),
        ("2606:4700::1", Reach.PUBLIC),
    ],
)
def test_reach_of_addresses(address: str, reach: Reach) -> None:
    assert reach_of(address) is reach
