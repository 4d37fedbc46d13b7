"""The proof a proxy upstream gives before the cache links a blob stored here already (registry/proxy/cache.py
`_proven`): four pieces of 256 bytes at offsets it cannot foresee, anywhere in the blob. An upstream that knows the
digest and a public beginning of a private blob (an uncompressed layer whose first files are public) fails it, and
gets no second draw; one that answers oddly (short, another range, no Range support far into the blob) never passes
it. The upstream is scripted (an httpx transport), the storage a stand-in holding the private blob."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from types import SimpleNamespace

import httpx
import pytest

from registry.digests import Digest
from registry.proxy.cache import SAMPLE_BYTES, SAMPLES, ProxyCache
from registry.proxy.settings import UpstreamSettings
from registry.proxy.upstreams import Upstream, UpstreamUnavailable

MIB = 1024 * 1024
PUBLIC_PREFIX = os.urandom(MIB // 4)
SECRET_TAIL = os.urandom(8 * MIB)
PRIVATE = PUBLIC_PREFIX + SECRET_TAIL
DIGEST = Digest.parse("sha256:" + hashlib.sha256(PRIVATE).hexdigest())
FORGED = PUBLIC_PREFIX + b"\0" * len(SECRET_TAIL)  # what a hostile upstream holds: the public part only


class Body(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data


class Storage:
    """registry.blobs, holding the private blob."""

    async def read(self, digest: Digest, offset: int, length: int) -> AsyncIterator[bytes]:
        yield PRIVATE[offset : offset + length]


def ranges_of(data: bytes) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        first, _, last = request.headers["Range"].removeprefix("bytes=").partition("-")
        start, end = int(first), int(last)
        headers = {"Content-Range": f"bytes {start}-{end}/{len(data)}"}
        return httpx.Response(206, headers=headers, stream=Body(data[start : end + 1]))

    return httpx.MockTransport(answer)


async def proofs(transport: httpx.MockTransport, rounds: int) -> list[bool | str | None]:
    upstream = Upstream(UpstreamSettings(name="hub", url="https://93.184.216.34", attempts=1), http_transport=transport)
    cache = SimpleNamespace(registry=SimpleNamespace(blobs=Storage()), _unproven={})
    results: list[bool | str | None] = []
    try:
        for _ in range(rounds):
            try:
                size = len(PRIVATE)
                results.append(await ProxyCache._proven(cache, upstream, "x", DIGEST, size, size))  # type: ignore[arg-type]
            except UpstreamUnavailable:
                results.append("refused")
    finally:
        await upstream.aclose()
    return results


async def test_a_known_beginning_does_not_prove_the_blob() -> None:
    """One sample in the first MiB: an upstream knowing only that MiB passed 200 times out of 200. Now every sample
    must match (a chance of (1/33)^4 for a known 33rd), and after a mismatch the blob is fetched whole (None)."""
    results = await proofs(ranges_of(FORGED), 50)
    assert results[0] == "refused" and set(results[1:]) == {None}, results


async def test_the_upstream_holding_the_blob_proves_it() -> None:
    assert set(await proofs(ranges_of(PRIVATE), 20)) == {True}


@pytest.mark.parametrize("mode", ["200-whole", "206-short", "200-short", "206-wrong-range", "206-longer"])
async def test_odd_answers_never_prove_a_forged_blob(mode: str) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        first, _, last = request.headers["Range"].removeprefix("bytes=").partition("-")
        start, end = int(first), int(last)
        if mode == "200-whole":  # no Range support: read off the body within its first MiB, else not provable here
            return httpx.Response(200, stream=Body(PRIVATE))
        if mode == "200-short":
            return httpx.Response(200, stream=Body(PRIVATE[: start + 10]))
        if mode == "206-wrong-range":
            return httpx.Response(
                206, headers={"Content-Range": f"bytes 0-255/{len(PRIVATE)}"}, stream=Body(PRIVATE[:256])
            )
        body = PRIVATE[start : start + 100] if mode == "206-short" else PRIVATE[start : end + 1 + 50]
        return httpx.Response(206, headers={"Content-Range": f"bytes {start}-{end}/{len(PRIVATE)}"}, stream=Body(body))

    results = await proofs(httpx.MockTransport(answer), 20)
    if mode == "200-whole":
        assert set(results) <= {True, None} and None in results  # None: the cache fetches it whole instead
    elif mode == "206-longer":
        assert set(results) == {True}  # the range asked for, then more: the sample is what was asked
    else:
        assert True not in results or (mode == "206-wrong-range" and results.count(True) <= 1), results


def test_the_proof_is_small() -> None:
    assert SAMPLES * SAMPLE_BYTES == 1024
