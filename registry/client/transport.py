"""HTTP to one registry: httpx with plain-HTTP/TLS selection, basic and bearer-token auth, retries with backoff.

Auth follows the Docker token flow: a request answered 401 with `WWW-Authenticate: Bearer realm=...,service=...,
scope=...` fetches a token from the realm for every scope this transport was asked for plus the challenge's, and
the request is sent again. `Basic` challenges are answered with the credentials. One token serves all requests.
"""

from __future__ import annotations

import asyncio
import base64
import random
import re
import socket
import ssl
import urllib.request
from collections import OrderedDict
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from typing import Any

import httpx

from registry.client.bodies import IDENTITY, read_whole
from registry.client.credentials import Credentials
from registry.client.errors import ClientError, ConnectionFailed, RegistryResponseError
from registry.client.reference import api_host, is_local

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
DEFAULT_ATTEMPTS = 5
CLIENT_ID = "moorage"
DEFAULT_BACKOFF = 0.25
MAX_BACKOFF = 10.0
CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 120.0
# The kernel's send buffer per connection (it doubles this). httpx hands a request body over one chunk (1 MiB) at a
# time and waits for the connection's buffer to drain before the next: with the kernel's default buffer the socket
# ran dry between chunks, and a 1 GiB push on 127.0.0.1 took 2.5-2.9 s; with room for a chunk queued behind the one
# being sent, 1.9-2.1 s (and 0.5 CPU s less on the server, which received fewer, larger reads). Through a proxy from
# the environment the client is httpx's own, with the default buffer.
SEND_BUFFER = 1024 * 1024
# A key starts where no key character precedes it and is taken whole (possessive): linear in the header, where
# `([A-Za-z_]+)\s*=` retried every suffix of a long run of letters with no `=` (30,000 of them: 13 s of CPU).
_CHALLENGE_PARAM = re.compile(r'(?<![A-Za-z_])([A-Za-z_]++)\s*+=\s*+(?:"((?:[^"\\]|\\.)*+)"|([^\s,]++))')
MAX_CHALLENGE = 16 * 1024  # far more than any registry's challenge
MAX_REDIRECTS = 10
RECENT_AUTHORIZATIONS = 64
MAX_AUTH_TRIES = 3  # challenges a request answers: its own, and once more if another request's answer did not do
MAX_REDIRECT_BODY = 64 * 1024
MAX_TOKEN_RESPONSE = 1024 * 1024  # a token server's answer: a few KiB (in the proxy, one per concurrent 401)

Body = Callable[[], AsyncIterable[bytes]]


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="..."` -> ("bearer", {"realm": ..., "service": ...})."""
    scheme, _, rest = header[:MAX_CHALLENGE].strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return scheme.lower(), params


def backoff_delay(attempt: int, base: float, retry_after: str | None = None) -> float:
    if retry_after and retry_after.isascii() and retry_after.isdigit():  # "²" is a digit to isdigit()
        return min(float(retry_after), MAX_BACKOFF * 3)
    return float(min(MAX_BACKOFF, base * 2**attempt) * (0.5 + random.random() / 2))


class Transport:
    """Requests to one registry host. `scopes` are the token scopes to ask for (`repository:team/app:pull,push`)."""

    def __init__(
        self,
        registry: str,
        *,
        credentials: Credentials | None = None,
        insecure: bool = False,
        ca_file: str | None = None,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff: float = DEFAULT_BACKOFF,
        client: httpx.AsyncClient | None = None,
        retry_statuses: frozenset[int] = RETRY_STATUSES,
        base_url: str | None = None,
        token_deadline: float | None = None,
    ) -> None:
        self.registry = registry
        # A CA file means TLS even for a local registry; else localhost and --insecure mean plain HTTP. `base_url`
        # (`https://host:port`, a configured upstream's) says it all itself.
        scheme = "https" if ca_file else "http" if insecure or is_local(registry) else "https"
        self.base_url = base_url or f"{scheme}://{api_host(registry)}"
        self.credentials = credentials
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.retry_statuses = retry_statuses
        self.scopes: set[str] = set()
        self.token_deadline = token_deadline  # a whole token answer within this (each read has its own timeout)
        self._authorization: str | None = None
        self._authenticating = asyncio.Lock()
        self._recent: OrderedDict[frozenset[str], str] = OrderedDict()  # bearer tokens found lately, by scopes
        self._auth_generation = 0  # challenges answered (or failed) so far
        # The last failure of each challenge lately (realm, service, scopes): the generation it ended, and the error.
        self._failures: dict[tuple[str, str, str, frozenset[str]], tuple[int, Exception]] = {}
        verify: ssl.SSLContext | bool = True
        if ca_file:
            verify = ssl.create_default_context()
            try:
                verify.load_verify_locations(cafile=ca_file)
            except (OSError, ssl.SSLError) as e:
                raise ClientError(f"--ca-file {ca_file}: {e}") from e
        self._client = client or _client(verify)

    async def aclose(self) -> None:
        await self._client.aclose()

    def add_scope(self, *scopes: str) -> None:
        self.scopes.update(scopes)

    def url(self, path_or_url: str) -> str:
        """An absolute URL: registry paths (`/v2/...`) and relative `Location`s resolve against the registry."""
        return str(httpx.URL(self.base_url).join(path_or_url))

    async def _send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        """`request` sent, its redirects followed without reading their bodies (httpx reads a redirect's body whole,
        decoded, before it follows it: unbounded)."""
        response = await self._client.send(request, stream=True, follow_redirects=False, **kwargs)
        for _ in range(MAX_REDIRECTS):
            following = response.next_request
            if following is None:
                return response
            try:
                response.content  # noqa: B018 (in memory already: an in-process transport's)
            except httpx.ResponseNotRead:
                async for _ in response.aiter_raw():  # a short body is read, so that the connection is reused
                    if response.num_bytes_downloaded > MAX_REDIRECT_BODY:
                        break
            await response.aclose()
            response = await self._client.send(following, stream=True, follow_redirects=False)
        await response.aclose()
        raise ClientError(f"{request.url.host}: more than {MAX_REDIRECTS} redirects")

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str | list[str]] | None = None,
        content: bytes | None = None,
        body: Body | None = None,
        stream: bool = False,
        retry: bool = True,
    ) -> httpx.Response:
        """Send a request with auth and retries; the response is read unless `stream` (then the caller closes it).

        `body` makes a fresh streaming body for each attempt. With `retry=False`, a dropped connection raises
        ConnectionFailed at once (the chunked upload resumes from the server's offset instead).
        """
        attempt = 0
        auth_tries = 0
        mine: str | None = None  # the authorization this request's own answer to a challenge got
        while True:
            request_headers = dict(headers or {})
            authorization = mine or self._authorization
            if authorization and "Authorization" not in request_headers:
                request_headers["Authorization"] = authorization
            generation = self._auth_generation
            request = self._client.build_request(
                method,
                self.url(url),
                headers=request_headers,
                params=params,
                content=body() if body is not None else content,
            )
            try:
                response = await self._send(request)
            except httpx.TransportError as e:
                if retry and attempt + 1 < self.attempts:
                    await asyncio.sleep(backoff_delay(attempt, self.backoff))
                    attempt += 1
                    continue
                raise ConnectionFailed(f"{method} {request.url}: {describe_transport_error(e)}") from e
            if response.status_code == 401 and auth_tries < MAX_AUTH_TRIES:
                challenge = response.headers.get("WWW-Authenticate", "")
                auth_tries += 1
                try:
                    mine = await self._answer(challenge, request_headers.get("Authorization"), generation)
                except BaseException:
                    await response.aclose()
                    raise
                if mine is not None:
                    await response.aclose()
                    continue
            if response.status_code in self.retry_statuses and retry and attempt + 1 < self.attempts:
                await response.aclose()
                await asyncio.sleep(backoff_delay(attempt, self.backoff, response.headers.get("Retry-After")))
                attempt += 1
                continue
            if not stream:
                try:
                    response = await read_whole(response)
                except httpx.TransportError as e:
                    if retry and attempt + 1 < self.attempts:
                        attempt += 1
                        continue
                    raise ConnectionFailed(f"{method} {request.url}: {describe_transport_error(e)}") from e
            return response

    async def _answer(self, challenge: str, sent: str | None, generation: int) -> str | None:
        """The authorization to send again after `challenge`, or None when there is nothing new to try (the request
        then fails with 401). `sent`: what the refused request carried; `generation`: `_auth_generation` then.

        One challenge is answered at a time: requests refused together (a pull's blobs; in the proxy, every client's
        request to one upstream) wait for the first one's answer instead of each asking the token server. A waiter
        whose very challenge (realm, service, scopes) failed meanwhile fails too, at once, not asking again one
        after another; a failure for another challenge (another repository's) is not its own. Any request takes a
        token found lately for its challenge's scopes; else it asks for itself."""
        key = _challenge_key(challenge)
        async with self._authenticating:
            wanted = set(key[3])
            for scopes in [scopes for scopes, held in self._recent.items() if held == sent and wanted <= scopes]:
                del self._recent[scopes]  # refused for a scope it was asked for: not offered again
            failed = self._failures.get(key)
            if failed is not None and failed[0] > generation:  # this challenge failed since the request was sent
                raise _again(failed[1])
            covering = self._covering(challenge)
            if covering is not None and covering != sent:
                return covering
            try:
                found = await self._authenticate(challenge)
            except Exception as e:  # not a cancellation: the next waiter asks then
                self._auth_generation += 1
                self._failures.pop(key, None)
                self._failures[key] = (self._auth_generation, e.with_traceback(None))
                while len(self._failures) > RECENT_AUTHORIZATIONS:
                    self._failures.pop(next(iter(self._failures)))
                raise
            self._auth_generation += 1
            self._failures.pop(key, None)
            return found if found is not None and found != sent else None

    def _covering(self, challenge: str) -> str | None:
        """The newest authorization found lately that was asked for with every scope `challenge` names (in the
        proxy, requests for several repositories of one upstream are refused together, each for its own scope)."""
        scheme, params = parse_challenge(challenge)
        if scheme != "bearer":
            return self._authorization
        wanted = set(params.get("scope", "").split())
        return next((held for scopes, held in reversed(self._recent.items()) if wanted <= scopes), None)

    async def _authenticate(self, challenge: str) -> str | None:
        """Answer a challenge: the authorization to send from now on, None when there is nothing to try."""
        scheme, params = parse_challenge(challenge)
        if scheme == "basic":
            if self.credentials is None:
                return None
            token = base64.b64encode(f"{self.credentials.username}:{self.credentials.password}".encode()).decode()
            self._authorization = f"Basic {token}"
            return self._authorization
        if scheme == "bearer" and "realm" in params:
            scopes = set(self.scopes)
            if params.get("scope"):
                scopes.update(params["scope"].split(" "))
            token = await self.fetch_token(params["realm"], params.get("service"), sorted(scopes))
            self._authorization = f"Bearer {token}"
            self._recent.pop(frozenset(scopes), None)
            self._recent[frozenset(scopes)] = self._authorization
            while len(self._recent) > RECENT_AUTHORIZATIONS:
                self._recent.popitem(last=False)
            return self._authorization
        return None

    def _token_url(self, realm: str) -> str:
        """The token server's URL (relative: the registry's). Credentials go to a token server the registry names,
        on another host or not (Docker Hub's is), but never in the clear when the registry itself is reached over
        TLS: a challenge (or whoever rewrote it) must not turn the password into plain text on the network."""
        try:
            url = httpx.URL(self.url(realm))
        except httpx.InvalidURL:
            raise ClientError(f"{self.registry}: the token server's address {realm[:200]!r} is not a URL") from None
        downgrade = url.scheme == "http" and httpx.URL(self.base_url).scheme == "https"
        if self.credentials is not None and (url.scheme not in ("http", "https") or downgrade):
            raise ClientError(
                f"{self.registry}: the token server {realm[:200]} is not https although the registry is: "
                "credentials are not sent there"
            )
        return str(url)

    async def _token_request(self, realm: str, service: str | None, scopes: list[str]) -> httpx.Response:
        """OAuth2 refresh-token grant with an identity token; else GET with basic credentials (or anonymous)."""
        realm = self._token_url(realm)
        if self.credentials is not None and self.credentials.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": self.credentials.identity_token,
                "client_id": CLIENT_ID,
                "scope": " ".join(scopes),
            }
            if service:
                form["service"] = service
            request = self._client.build_request("POST", realm, data=form)
            return await read_whole(await self._send(request), MAX_TOKEN_RESPONSE)
        params: list[tuple[str, str | int | float | bool | None]] = []
        if service:
            params.append(("service", service))
        params.extend(("scope", scope) for scope in scopes)
        auth: tuple[str, str] | None = None
        if self.credentials is not None:
            params.append(("account", self.credentials.username))
            auth = (self.credentials.username, self.credentials.password)
        request = self._client.build_request("GET", realm, params=params)
        response = await self._send(request, auth=auth or httpx.USE_CLIENT_DEFAULT)
        return await read_whole(response, MAX_TOKEN_RESPONSE)

    async def fetch_token(self, realm: str, service: str | None, scopes: Iterable[str]) -> str:
        scope_list = list(scopes)
        for attempt in range(self.attempts):
            try:
                async with asyncio.timeout(self.token_deadline):
                    response = await self._token_request(realm, service, scope_list)
            except TimeoutError:
                raise ConnectionFailed(f"token server {realm}: no whole answer in {self.token_deadline:g} s") from None
            except httpx.TransportError as e:
                if attempt + 1 < self.attempts:
                    await asyncio.sleep(backoff_delay(attempt, self.backoff))
                    continue
                raise ConnectionFailed(f"token server {realm}: {describe_transport_error(e)}") from e
            if response.status_code in self.retry_statuses and attempt + 1 < self.attempts:
                await asyncio.sleep(backoff_delay(attempt, self.backoff, response.headers.get("Retry-After")))
                continue
            break
        if response.status_code in (401, 403):
            who = f"as {self.credentials.username}" if self.credentials else "anonymously"
            raise RegistryResponseError(
                f"unauthorized: {self.registry}: the token server refused {who} (run `moorage login {self.registry}`)",
                status=response.status_code,
                code="UNAUTHORIZED",
            )
        if response.status_code != 200:
            raise RegistryResponseError(
                f"token server {realm} answered {response.status_code}", status=response.status_code
            )
        try:
            data: Any = response.json()
            token = data.get("token") or data.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise ClientError(f"token server {realm} sent no token")
        return token


def _again(error: Exception) -> Exception:
    """A fresh copy of `error` for another waiter to raise (one object raised in many tasks grows one traceback)."""
    again = type(error).__new__(type(error), *error.args)
    again.__dict__.update(error.__dict__)
    return again


def _challenge_key(challenge: str) -> tuple[str, str, str, frozenset[str]]:
    """What a challenge asks for: its scheme, realm, service and scopes."""
    scheme, params = parse_challenge(challenge)
    scopes = frozenset(params.get("scope", "").split())
    return scheme, params.get("realm", ""), params.get("service", ""), scopes


def _client(verify: ssl.SSLContext | bool) -> httpx.AsyncClient:
    timeout = httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
    if any(scheme != "no" for scheme in urllib.request.getproxies()):
        # httpx reads HTTP(S)_PROXY, ALL_PROXY and NO_PROXY only for a client that builds its own transports.
        return httpx.AsyncClient(verify=verify, timeout=timeout, limits=limits, headers=IDENTITY)
    socket_options = [(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)]
    transport = httpx.AsyncHTTPTransport(verify=verify, limits=limits, socket_options=socket_options)
    # Answers as sent (see registry/client/bodies.py): nothing compressed on the way, so nothing to decode. Redirects
    # are followed by Transport._send, which never reads their bodies whole.
    return httpx.AsyncClient(timeout=timeout, transport=transport, headers=IDENTITY)


def describe_transport_error(error: httpx.TransportError) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, httpx.ConnectError):
        return f"cannot connect: {text}"
    if isinstance(error, httpx.TimeoutException):
        return f"timed out ({type(error).__name__})"
    return text
