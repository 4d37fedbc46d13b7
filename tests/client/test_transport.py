"""The transport and the API over httpx's MockTransport: auth challenges, retries, error lines."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from registry.client.api import RegistryClient, error_from_response
from registry.client.credentials import Credentials
from registry.client.errors import ClientError, ConnectionFailed, RegistryResponseError
from registry.client.progress import make_reporter
from registry.client.pull import pull_image
from registry.client.reference import parse_reference
from registry.client.transport import Transport, backoff_delay, parse_challenge

Handler = Callable[[httpx.Request], httpx.Response]


def make_registry(handler: Handler, credentials: Credentials | None = None, host: str = "r.example") -> RegistryClient:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return RegistryClient(Transport(host, credentials=credentials, client=client, backoff=0.001))


def test_parse_challenge() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})


async def test_https_by_default_plain_http_for_localhost() -> None:
    assert Transport("r.example").base_url == "https://r.example"
    assert Transport("r.example:5000", insecure=True).base_url == "http://r.example:5000"
    assert Transport("localhost:5000").base_url == "http://localhost:5000"
    assert Transport("docker.io").base_url == "https://registry-1.docker.io"


async def test_bearer_token_flow() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/token":
            assert request.headers["Authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
            assert request.url.params.get_list("scope") == ["repository:team/app:pull", "repository:team/app:pull,push"]
            assert request.url.params["service"] == "reg"
            return httpx.Response(200, json={"access_token": "T"})
        if request.headers.get("Authorization") != "Bearer T":
            challenge = 'Bearer realm="https://auth.example/token",service="reg",scope="repository:team/app:pull"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return httpx.Response(200, json={"name": "team/app", "tags": ["1"]})

    async with make_registry(handler, Credentials("u", "p")) as registry:
        registry.allow("team/app", "pull,push")
        assert await registry.tags("team/app") == ["1"]
        assert await registry.tags("team/app") == ["1"]  # the token is reused
    tags_path = "/v2/team/app/tags/list"
    assert [r.url.path for r in seen] == [tags_path, "/token", tags_path, tags_path]


@pytest.mark.parametrize(
    ("host", "realm", "sent"),
    [
        ("r.example", "http://auth.example/token", False),  # a TLS registry naming a plain-text token server
        ("r.example", "ftp://auth.example/token", False),
        ("r.example", "https://auth.example/token", True),  # another host, over TLS: as Docker Hub's
        ("r.example", "/token", True),  # the registry's own, relative
        ("localhost:5000", "http://localhost:5000/token", True),  # a plain-text registry: nothing to downgrade
    ],
)
async def test_credentials_never_go_to_a_token_server_in_the_clear(host: str, realm: str, sent: bool) -> None:
    tokens: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            tokens.append(request)
            return httpx.Response(200, json={"token": "T"})
        if request.headers.get("Authorization") != "Bearer T":
            return httpx.Response(401, headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="reg"'})
        return httpx.Response(200, json={"name": "team/app", "tags": ["1"]})

    async with make_registry(handler, Credentials("u", "p"), host=host) as registry:
        if sent:
            assert await registry.tags("team/app") == ["1"]
        else:
            with pytest.raises(ClientError, match="credentials are not sent there"):
                await registry.tags("team/app")
    assert len(tokens) == (1 if sent else 0)


@pytest.mark.parametrize(
    "link",
    [
        "</v2/team/app/tags/list?last=a>",  # the same page again, for ever
        "<http://evil.example/v2/team/app/tags/list?last=a>",  # another host: the credentials would go there
        "<http://r.example/v2/team/app/tags/list?last=a>",  # the registry, but in plain text
    ],
)
async def test_paging_follows_next_links_on_the_registry_only_and_each_once(link: str) -> None:
    """A hostile registry's Link: a page linking to itself was followed for ever (every page kept in memory), and a
    link to another host got the registry's credentials."""
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if len(requests) >= 50:  # the test's own brake
            return httpx.Response(200, json={"name": "team/app", "tags": []})
        if "Authorization" not in request.headers:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        return httpx.Response(200, json={"name": "team/app", "tags": ["a"]}, headers={"Link": f'{link}; rel="next"'})

    async with make_registry(handler, Credentials("alice", "s3cret")) as registry:
        with pytest.raises(ClientError, match="next-page link that loops or leaves it"):
            await registry.tags("team/app")
    assert [r.url.host for r in requests] == ["r.example"] * len(requests) and len(requests) <= 3


async def test_a_pull_of_an_index_of_indexes_is_refused_not_left_incomplete(tmp_path: Path) -> None:
    """The grandchildren were never fetched, yet the pull reported success with a layout naming manifests it does
    not hold. Refused, as `cp` and `mirror` do."""
    index_type = "application/vnd.oci.image.index.v1+json"
    grandchild = {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + "1" * 64, "size": 2}
    inner = json.dumps({"schemaVersion": 2, "mediaType": index_type, "manifests": [grandchild]}).encode()
    inner_digest = "sha256:" + hashlib.sha256(inner).hexdigest()
    child = {"mediaType": index_type, "digest": inner_digest, "size": len(inner)}
    top = json.dumps({"schemaVersion": 2, "mediaType": index_type, "manifests": [child]}).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/manifests/v1"):
            return httpx.Response(200, headers={"Content-Type": index_type}, content=top)
        if request.url.path.endswith(inner_digest):
            return httpx.Response(200, headers={"Content-Type": index_type}, content=inner)
        return httpx.Response(404)

    dest = tmp_path / "out"
    async with make_registry(handler) as registry:
        with pytest.raises(ClientError, match="nested indexes are not supported"):
            reporter = make_reporter(quiet=True, json_output=False)
            await pull_image(parse_reference("r.example/team/app:v1"), dest, registry, reporter)
    assert not dest.exists()


def test_a_challenge_is_parsed_in_linear_time() -> None:
    started = time.monotonic()
    assert parse_challenge("Bearer " + "a" * 100_000) == ("bearer", {})
    assert parse_challenge("Bearer " + "a=" * 50_000)[0] == "bearer"
    assert time.monotonic() - started < 1.0  # quadratic: 13 s for 30,000 letters


def test_a_retry_after_that_is_no_ascii_number_is_ignored() -> None:
    assert backoff_delay(0, 0.001, "\u00b2") < 1.0  # "²": a digit to str.isdigit(), a ValueError to float()
    assert backoff_delay(0, 0.001, "7") == 7.0


async def test_basic_challenge_and_refused_credentials() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") == "Basic " + base64.b64encode(b"u:right").decode():
            return httpx.Response(200, json={})
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})

    async with make_registry(handler, Credentials("u", "right")) as registry:
        await registry.ping()
    async with make_registry(handler, Credentials("u", "wrong")) as registry:
        with pytest.raises(RegistryResponseError, match=r"^unauthorized: r\.example"):
            await registry.ping()


async def test_retries_5xx_and_429_then_succeeds() -> None:
    answers = [503, 429, 502, 200]

    def handler(request: httpx.Request) -> httpx.Response:
        status = answers.pop(0)
        return httpx.Response(status, headers={"Retry-After": "0"} if status == 429 else {}, json={})

    async with make_registry(handler) as registry:
        await registry.ping()
    assert answers == []


async def test_connection_errors_are_retried_then_reported() -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        raise httpx.ConnectError("connection refused")

    async with make_registry(handler) as registry:
        with pytest.raises(ConnectionFailed, match="cannot connect: connection refused"):
            await registry.ping()
    assert calls == 5


def test_error_lines() -> None:
    body = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown", "detail": {}}]}
    error = error_from_response(httpx.Response(404, json=body), "team/app:2.0")
    assert str(error) == "manifest unknown: team/app:2.0"
    assert str(error_from_response(httpx.Response(404), "team/app:2.0")) == "not found: team/app:2.0"
    denied = {"errors": [{"code": "DENIED", "message": "no push to this project"}]}
    assert str(error_from_response(httpx.Response(403, json=denied), "x")) == "denied: x (no push to this project)"
    assert str(error_from_response(httpx.Response(418), "x")) == "HTTP 418 I'm a teapot: x"


async def test_identity_token_uses_the_oauth2_refresh_grant() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            assert request.method == "POST"
            form = dict(httpx.QueryParams(request.content.decode()))
            assert form == {
                "grant_type": "refresh_token",
                "refresh_token": "refresh-me",
                "client_id": "moorage",
                "scope": "repository:a:pull",
                "service": "reg",
            }
            return httpx.Response(200, json={"token": "T2"})
        if request.headers.get("Authorization") == "Bearer T2":
            return httpx.Response(200, json={})
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://r.example/token",service="reg"'})

    async with make_registry(handler, Credentials("", "", identity_token="refresh-me")) as registry:
        registry.allow("a", "pull")
        await registry.ping()


async def test_concurrent_requests_challenged_together_all_go_through() -> None:
    """Requests sent before one of them answered a Basic challenge retry with what it found (they used to fail)."""
    import asyncio

    good = "Basic " + base64.b64encode(b"u:p").decode()
    arrived = 0
    all_arrived = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal arrived
        if request.headers.get("Authorization") != good:
            arrived += 1
            if arrived >= 4:
                all_arrived.set()
            await all_arrived.wait()  # every first attempt is answered only once all were sent unauthenticated
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        return httpx.Response(200, json={"name": "team/app", "tags": []})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    transport = Transport("r.example", credentials=Credentials("u", "p"), client=client, backoff=0.001)
    try:
        responses = await asyncio.gather(*(transport.request("GET", "/v2/team/app/tags/list") for _ in range(4)))
    finally:
        await transport.aclose()
    assert [response.status_code for response in responses] == [200] * 4


async def test_a_digest_the_client_cannot_check_is_never_reported() -> None:
    """A registry's Docker-Content-Digest of an unknown algorithm was reported as the manifest's digest unchecked;
    now the bytes' own sha256 is, and a reference by such a digest is refused."""
    body = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}'
    own = "sha256:" + hashlib.sha256(body).hexdigest()

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {
            "Docker-Content-Digest": "md5:0123456789abcdef",
            "Content-Type": "application/vnd.oci.image.manifest.v1+json",
        }
        return httpx.Response(200, headers=headers, content=b"" if request.method == "HEAD" else body)

    registry = make_registry(handler)
    assert (await registry.get_manifest("team/app", "v1")).digest == own
    assert await registry.manifest_digest("team/app", "v1") == own
    with pytest.raises(ClientError, match="unsupported digest algorithm"):
        await registry.get_manifest("team/app", "md5:0123456789abcdef")


def scoped_registry(
    tokens: list[str], token_answer: int = 200, token_delay: float = 0.0, refused: str = "-"
) -> httpx.MockTransport:
    """A registry whose tokens each cover the scopes asked for; every manifest needs `repository:<repo>:pull`."""

    async def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            tokens.append(" ".join(request.url.params.get_list("scope")))
            await asyncio.sleep(token_delay)
            if token_answer != 200 or f"repository:{refused}:pull" in tokens[-1]:
                return httpx.Response(token_answer if token_answer != 200 else 403)
            return httpx.Response(200, json={"token": "T:" + tokens[-1]})
        want = f"repository:{request.url.path.split('/')[2]}:pull"
        held = request.headers.get("Authorization", "").removeprefix("Bearer T:").split(" ")
        if want in held:
            await asyncio.sleep(0.01)
            return httpx.Response(200)
        challenge = f'Bearer realm="https://r.example/token",service="r",scope="{want}"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    return httpx.MockTransport(answer)


async def test_concurrent_challenges_for_several_repositories_each_get_their_own_token_once() -> None:
    """The proxy's transport to one upstream serves every repository of it: 32 requests over 4 repositories refused
    together make 4 token requests, and all succeed (waiters once retried with another repository's token)."""
    tokens: list[str] = []
    client = httpx.AsyncClient(transport=scoped_registry(tokens))
    transport = Transport("r.example", client=client, attempts=1)
    answers = await asyncio.gather(*(transport.request("GET", f"/v2/r{i % 4}/manifests/latest") for i in range(32)))
    await transport.aclose()
    assert [a.status_code for a in answers] == [200] * 32
    assert sorted(tokens) == [f"repository:r{i}:pull" for i in range(4)]


async def test_a_failing_token_server_fails_the_waiters_at_once() -> None:
    """Requests waiting on one challenge's answer take its failure, instead of asking again one after another
    (each for as long as the token server takes)."""
    tokens: list[str] = []
    client = httpx.AsyncClient(transport=scoped_registry(tokens, token_answer=401, token_delay=0.3))
    transport = Transport("r.example", client=client, attempts=1)
    started = time.monotonic()
    answers = await asyncio.gather(
        *(transport.request("GET", "/v2/r0/manifests/latest") for _ in range(8)), return_exceptions=True
    )
    await transport.aclose()
    assert all(isinstance(a, RegistryResponseError) and a.status == 401 for a in answers), answers
    assert len(tokens) == 1 and time.monotonic() - started < 1.5


async def test_a_token_refused_for_one_repository_fails_no_other() -> None:
    """In the proxy one transport serves every client of an upstream: a token server refusing one repository's
    scope must not fail the requests for other repositories waiting on the same lock (one client asking for a
    refused repository again and again denied everyone else)."""
    tokens: list[str] = []
    client = httpx.AsyncClient(transport=scoped_registry(tokens, token_delay=0.1, refused="r0"))
    transport = Transport("r.example", client=client, attempts=1)
    answers = await asyncio.gather(
        *(transport.request("GET", f"/v2/r{i % 4}/manifests/latest") for i in range(8)), return_exceptions=True
    )
    await transport.aclose()
    refused = [a for i, a in enumerate(answers) if i % 4 == 0]
    assert all(isinstance(a, RegistryResponseError) for a in refused), refused
    assert [a.status_code for i, a in enumerate(answers) if i % 4 and isinstance(a, httpx.Response)] == [200] * 6
    assert tokens.count("repository:r0:pull") == 1  # its waiters took the failure, not a token request each
    errors = [a for a in refused if isinstance(a, BaseException)]
    assert len({id(e) for e in errors}) == len(errors)  # each waiter raises its own copy (no shared traceback)
