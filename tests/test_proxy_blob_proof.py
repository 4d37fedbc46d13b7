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
from registry.proxy.cache import PROOF_MIN_BYTES, SAMPLE_BYTES, SAMPLES, ProxyCache, sample_offsets
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

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    async def read(self, digest: Digest, offset: int, length: int) -> AsyncIterator[bytes]:
        yield self.blob[offset : offset + length]


def ranges_of(data: bytes) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        first, _, last = request.headers["Range"].removeprefix("bytes=").partition("-")
        start, end = int(first), int(last)
        headers = {"Content-Range": f"bytes {start}-{end}/{len(data)}"}
        return httpx.Response(206, headers=headers, stream=Body(data[start : end + 1]))

    return httpx.MockTransport(answer)


async def proofs(transport: httpx.MockTransport, rounds: int, blob: bytes = PRIVATE) -> list[bool | str | None]:
    upstream = Upstream(UpstreamSettings(name="hub", url="https://93.184.216.34", attempts=1), http_transport=transport)
    cache = SimpleNamespace(registry=SimpleNamespace(blobs=Storage(blob)), _unproven={})
    results: list[bool | str | None] = []
    try:
        for _ in range(rounds):
            try:
                size = len(blob)
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


async def test_refusing_a_sample_gives_no_second_draw() -> None:
    """An upstream that sees an offset outside what it knows and answers 503 (or 404, or a wrong range) instead of
    wrong bytes was drawn again at the next pull, until every sample fell where it knew: now it sends the blob whole
    from the first refusal on."""
    known = len(PUBLIC_PREFIX)

    def answer(request: httpx.Request) -> httpx.Response:
        first, _, last = request.headers["Range"].removeprefix("bytes=").partition("-")
        start, end = int(first), int(last)
        if end >= known:
            return httpx.Response(503)
        headers = {"Content-Range": f"bytes {start}-{end}/{len(PRIVATE)}"}
        return httpx.Response(206, headers=headers, stream=Body(PRIVATE[start : end + 1]))

    results = await proofs(httpx.MockTransport(answer), 30)
    assert True not in results and set(results[1:]) == {None}, results


async def test_a_small_blob_is_fetched_whole_not_sampled() -> None:
    """Four samples of a config say little (its secret may be 30 bytes of it): under 4 MiB, the blob comes whole."""
    small = os.urandom(PROOF_MIN_BYTES - 1)
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return httpx.Response(500)

    assert await proofs(httpx.MockTransport(answer), 3, small) == [None, None, None]
    assert asked == []


async def test_no_sample_request_outlives_a_failed_proof() -> None:
    """One sample answered wrong: the others are cancelled, not left holding connections in the background."""
    import asyncio

    in_flight = 0

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight
        first = request.headers["Range"].removeprefix("bytes=").partition("-")[0]
        if int(first) == min(offsets_seen):
            return httpx.Response(206, headers={"Content-Range": "bytes 0-0/1"}, stream=Body(b"x"))
        in_flight += 1
        try:
            await asyncio.sleep(3)
        finally:
            in_flight -= 1
        return httpx.Response(500)

    offsets_seen: list[int] = []

    async def recording(request: httpx.Request) -> httpx.Response:
        offsets_seen.append(int(request.headers["Range"].removeprefix("bytes=").partition("-")[0]))
        await asyncio.sleep(0.05)  # every sample asked before any answers
        return await answer(request)

    results = await proofs(httpx.MockTransport(recording), 1)
    assert results == ["refused"] and in_flight == 0


def test_every_byte_is_as_likely_to_be_sampled() -> None:
    """The first and last bytes are in a sample as often as the middle one (a uniform offset almost never covered
    the first bytes of a small blob, where a config keeps its environment)."""
    size, draws = 4096, 5_000
    hits = {"first": 0, "middle": 0, "last": 0}
    for _ in range(draws):
        for offset in sample_offsets(size, SAMPLE_BYTES, 4):
            hits["first"] += offset == 0
            hits["middle"] += offset <= size // 2 < offset + SAMPLE_BYTES
            hits["last"] += offset + SAMPLE_BYTES == size
    expected = draws * 4 * SAMPLE_BYTES / (size + SAMPLE_BYTES - 1)
    assert all(0.8 * expected < n < 1.2 * expected for n in hits.values()), (hits, expected)
