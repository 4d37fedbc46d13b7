"""One upstream registry as the cache sees it: which local names it covers, and its API over the client's transport
(the token dance, retries with backoff, TLS with a custom CA, redirects to presigned storage).

An upstream that answers 429 is left alone until its `Retry-After` passes: the cache serves what it has and tells
clients to come back, instead of passing each of their retries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpcore._async.http11
import httpx

from registry.client.bodies import IDENTITY
from registry.client.credentials import Credentials
from registry.client.errors import ClientError, RegistryResponseError
from registry.client.manifests import ACCEPT_MANIFESTS
from registry.client.transport import RETRY_STATUSES, Transport
from registry.digests import Digest
from registry.errors import ErrorCode, RegistryError
from registry.proxy.address_guard import AddressGuard, AddressRefused
from registry.proxy.settings import UpstreamSettings
from registry.settings import ConfigError

logger = logging.getLogger("moorage")
# httpcore reads a response 64 KiB at a time, each read a trip through h11, anyio and the event loop: at a blob's
# size (1 GiB: 16,384 reads) that is most of a cold pull's CPU. Reads of up to 1 MiB (a maximum: small answers are
# unchanged) do it 16 times less often. A class attribute, so every httpx client of the process reads so.
READ_SIZE = 1024 * 1024
httpcore._async.http11.AsyncHTTP11Connection.READ_NUM_BYTES = READ_SIZE
DOCKER_HUB_HOSTS = frozenset({"registry-1.docker.io", "index.docker.io", "docker.io"})
ACCEPT = ACCEPT_MANIFESTS  # not schema 1, which the store does not take
DEFAULT_PAUSE = 60.0
MANIFEST_LIMIT = 4 * 1024 * 1024
MAX_PAUSE = 3600.0
MANIFEST_DEADLINE_TIMEOUTS = 4  # a manifest arrives whole within this many of the upstream's read timeouts


class UpstreamUnavailable(Exception):
    """The upstream could not answer (network, 5xx, 429): cached content may still serve."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RangeIgnored(Exception):
    """The upstream answered a Range request with the whole blob, where reading up to the range costs too much."""


class UpstreamDenied(UpstreamUnavailable):
    """The upstream refused access (401, 403): to this cache's clients, what it refuses does not exist (registries
    answer so for repositories that do not exist, too); what is cached may still serve."""


@dataclass(frozen=True, slots=True)
class RemoteManifest:
    """A manifest's bytes and digest. Its media type is what the bytes say (`mediaType`, else their shape): the
    store's parser decides it, as for a push, so an upstream's Content-Type that disagrees does not matter."""

    digest: Digest
    data: bytes


class Upstream:
    def __init__(self, settings: UpstreamSettings, http_transport: httpx.AsyncBaseTransport | None = None) -> None:
        """`http_transport`: what carries the requests (httpx's own by default; tests stand a scripted one in)."""
        self.settings = settings
        self.name = settings.name
        self.prefix = settings.prefix
        self.url = settings.url
        host = urlsplit(settings.url).netloc
        self.docker_hub = host.split(":")[0] in DOCKER_HUB_HOSTS
        verify: ssl.SSLContext | bool = not settings.insecure
        if settings.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(settings.ca_file))
        client = httpx.AsyncClient(
            verify=verify,
            timeout=httpx.Timeout(settings.timeout),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            # Bodies as they are stored: a compressed answer is not decompressed on the way in (a gzip bomb went
            # past the manifest limit, checked after decoding), and the digests are of these bytes.
            headers=IDENTITY,
            # Redirects and token realms lead only where the upstream itself is, or further out (SSRF).
            event_hooks=AddressGuard(settings.url, None if http_transport else _env_proxied).hooks(),
            transport=http_transport,
        )
        self.transport = Transport(
            host,
            credentials=_credentials(settings),
            attempts=settings.attempts,
            client=client,
            retry_statuses=RETRY_STATUSES - {429},  # 429 pauses this upstream instead (see `_answered`)
            base_url=settings.url,
            token_deadline=MANIFEST_DEADLINE_TIMEOUTS * settings.timeout,
        )
        self._paused_until = 0.0
        self.manifest_deadline = MANIFEST_DEADLINE_TIMEOUTS * settings.timeout

    async def aclose(self) -> None:
        await self.transport.aclose()

    def covers(self, name: str) -> bool:
        return not self.prefix or name.startswith(self.prefix + "/")

    def remote(self, name: str) -> str:
        """The upstream's name for the local repository `name` (Docker Hub's official images live in `library/`)."""
        remote = name[len(self.prefix) + 1 :] if self.prefix else name
        if self.docker_hub and "/" not in remote:
            remote = f"library/{remote}"
        return remote

    async def manifest_digest(self, remote: str, reference: str) -> Digest | None:
        """What `reference` names upstream now (a HEAD), or None when the upstream has no such manifest."""
        async with self._request("HEAD", f"/v2/{remote}/manifests/{reference}", {"Accept": ACCEPT}) as response:
            if response.status_code == 404:
                return None
            self._expect(response, f"manifest {remote}:{reference}")
            header = response.headers.get("Docker-Content-Digest", "")
        if Digest.is_digest(header):
            return Digest.parse(header)
        found = await self.manifest(remote, reference, MANIFEST_LIMIT)  # no digest header: the content tells
        return None if found is None else found.digest

    async def manifest(self, remote: str, reference: str, limit: int) -> RemoteManifest | None:
        """The manifest `reference` names upstream, verified against its digest, or None when there is none. One
        larger than `limit` bytes is refused before it is all read."""
        async with self._request("GET", f"/v2/{remote}/manifests/{reference}", {"Accept": ACCEPT}) as response:
            if response.status_code == 404:
                return None
            self._expect(response, f"manifest {remote}:{reference}")
            encoding = response.headers.get("Content-Encoding", "").strip().lower()
            if encoding not in ("", "identity"):
                raise UpstreamUnavailable(f"{self.name}: manifest {remote}:{reference} came {encoding[:40]}-encoded")
            received = bytearray()
            try:
                # The whole manifest within a deadline (the timeout bounds each read only: a byte every few seconds
                # held every client waiting on the tag's check for days).
                async with asyncio.timeout(self.manifest_deadline):
                    async for chunk in response.aiter_raw():  # never decoded: see the client's Accept-Encoding
                        received += chunk
                        if len(received) > limit:
                            raise UpstreamUnavailable(
                                f"{self.name}: manifest {remote}:{reference} is over {limit} bytes"
                            )
            except TimeoutError:
                raise UpstreamUnavailable(
                    f"{self.name}: manifest {remote}:{reference} not received within {self.manifest_deadline:g} s"
                ) from None
            data = bytes(received)
            header = response.headers.get("Docker-Content-Digest", "")
        expected = Digest.parse(reference) if Digest.is_digest(reference) else None
        if expected is None and Digest.is_digest(header):
            expected = Digest.parse(header)
        digest = Digest.of(data, expected.algorithm if expected else "sha256")
        if expected is not None and digest != expected:
            raise UpstreamUnavailable(f"{self.name}: manifest {remote}:{reference} does not match its digest")
        return RemoteManifest(digest, data)

    async def blob_size(self, remote: str, digest: Digest) -> int | None:
        async with self._request("HEAD", f"/v2/{remote}/blobs/{digest}") as response:
            if response.status_code == 404:
                return None
            self._expect(response, f"blob {remote}@{digest}")
            length = response.headers.get("Content-Length", "")
        if not (length.isascii() and length.isdigit()):
            raise UpstreamUnavailable(f"{self.name}: blob {remote}@{digest}: no size in the answer to HEAD")
        return int(length)

    async def blob_sample(
        self, remote: str, digest: Digest, offset: int, length: int, max_unranged: int
    ) -> bytes | None:
        """`length` bytes of the blob from `offset` as the upstream holds them (a Range request), or None when it has
        no such blob. From an upstream that ignores Range, read off the whole body when they lie within its first
        `max_unranged` bytes; else RangeIgnored."""
        last = offset + length - 1
        headers = {**IDENTITY, "Range": f"bytes={offset}-{last}"}
        async with self._request("GET", f"/v2/{remote}/blobs/{digest}", headers) as response:
            if response.status_code == 404:
                return None
            self._expect(response, f"blob {remote}@{digest}")
            skip = offset
            if response.status_code == 206:
                if not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-{last}/"):
                    raise UpstreamUnavailable(f"{self.name}: blob {remote}@{digest}: not the range asked for")
                skip = 0
            elif offset + length > max_unranged:
                raise RangeIgnored(f"{self.name}: blob {remote}@{digest}: no Range support")
            received = bytearray()
            try:
                async with asyncio.timeout(self.manifest_deadline):
                    async for chunk in response.aiter_raw():
                        received += chunk
                        if len(received) >= skip + length:
                            break
            except TimeoutError:
                raise UpstreamUnavailable(f"{self.name}: blob {remote}@{digest}: too slow to answer") from None
        return bytes(received[skip : skip + length])

    @contextlib.asynccontextmanager
    async def open_blob(
        self, remote: str, digest: Digest, offset: int = 0, size: int | None = None
    ) -> AsyncIterator[httpx.Response | None]:
        """The blob's bytes streaming (None when the upstream has no such blob); from `offset` of its `size` bytes
        with a Range request, which the upstream must honour exactly."""
        headers = {**IDENTITY, "Range": f"bytes={offset}-"} if offset else IDENTITY
        async with self._request("GET", f"/v2/{remote}/blobs/{digest}", headers) as response:
            if response.status_code == 404:
                yield None
                return
            self._expect(response, f"blob {remote}@{digest}")
            if offset:
                expected = f"bytes {offset}-{(size or 0) - 1}/{size}"
                if response.status_code != 206 or response.headers.get("Content-Range") != expected:
                    raise UpstreamUnavailable(f"{self.name}: blob {remote}@{digest}: cannot resume at {offset}")
            yield response

    @contextlib.asynccontextmanager
    async def _request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> AsyncIterator[httpx.Response]:
        wait = self._paused_until - time.monotonic()
        if wait > 0:
            raise UpstreamUnavailable(f"{self.name} asked for a pause (429)", retry_after=wait)
        try:
            response = await self.transport.request(method, path, headers=headers, stream=True)
        except RegistryResponseError as e:  # the token server refused these credentials, or anonymous
            if e.status in (401, 403):
                raise UpstreamDenied(f"{self.name}: {e}") from e
            raise UpstreamUnavailable(f"{self.name}: {e}") from e
        except ClientError as e:  # the network, TLS
            raise UpstreamUnavailable(f"{self.name}: {e}") from e
        except AddressRefused as e:
            logger.warning("proxy: %s: %s %s refused: %s", self.name, method, path, e)
            raise UpstreamUnavailable(f"{self.name}: {e}") from e
        try:
            self._answered(response)
            yield response
        except httpx.TransportError as e:  # the connection dropped while the body streamed
            raise UpstreamUnavailable(f"{self.name}: {method} {path}: {e or type(e).__name__}") from e
        finally:
            await response.aclose()

    def _answered(self, response: httpx.Response) -> None:
        if response.status_code != 429:
            return
        retry_after = response.headers.get("Retry-After", "")
        pause = min(float(retry_after), MAX_PAUSE) if retry_after.isascii() and retry_after.isdigit() else DEFAULT_PAUSE
        self._paused_until = time.monotonic() + pause
        logger.warning("proxy: %s answered 429; not asking it again for %.0fs", self.name, pause)
        raise UpstreamUnavailable(f"{self.name} answered 429 (too many requests)", retry_after=pause)

    def _expect(self, response: httpx.Response, subject: str) -> None:
        status = response.status_code
        if status in (200, 206):
            return
        if status in (401, 403):
            logger.info("proxy: %s refused %s (HTTP %d)", self.name, subject, status)
            raise UpstreamDenied(f"{self.name} refused access to {subject} (HTTP {status})")
        raise UpstreamUnavailable(f"{self.name}: {subject}: HTTP {status}")


def _env_proxied(url: httpx.URL) -> bool:
    """Whether httpx sends a request to `url` through a proxy from the environment (HTTP(S)_PROXY, ALL_PROXY)."""
    proxies = urllib.request.getproxies()
    return bool(proxies.get(url.scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(url.host)


def _credentials(settings: UpstreamSettings) -> Credentials | None:
    if not settings.username:
        return None
    if settings.password_file is not None:
        try:
            password = settings.password_file.read_text().strip()
        except OSError as e:
            raise ConfigError(f"proxy.upstreams {settings.name}: password_file: {e.strerror or e}") from e
    else:
        password = settings.password.get_secret_value() if settings.password else ""
    return Credentials(settings.username, password)


def unavailable(error: UpstreamUnavailable) -> RegistryError:
    """What a client hears when the upstream could not answer and nothing is cached: no upstream internals (they
    are in the log)."""
    retry_after = max(1, round(error.retry_after)) if error.retry_after else 5
    return RegistryError(
        ErrorCode.UNAVAILABLE,
        message="the upstream registry cannot be reached and nothing is cached for this request",
        headers={"Retry-After": str(retry_after)},
    )


def denied(unknown: RegistryError, error: UpstreamUnavailable) -> RegistryError:
    """What the upstream refused to this cache: unknown to its clients."""
    return RegistryError(unknown.code, detail=unknown.detail, message=f"{unknown.message} (the upstream refused it)")
