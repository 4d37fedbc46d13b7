"""Attacks on authorization after routing that found something (and regressions for a few that did not):
names and tags that end in a newline, repeated listing parameters, other repositories' upload sessions, path
spellings of a repository the caller may not pull."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from registry.errors import RegistryError
from registry.names import is_valid_name, validate_name, validate_tag
from tests.api.conftest import ClientFactory
from tests.api.helpers import error_code, push_blob, push_image
from tests.api.test_route_access import PASSWORD, SERVICE, USERS, basic, caller_token, sections
from tests.auth.forge import claims, foreign_key, signed
from tests.auth.test_htpasswd import bcrypt_entry

SECRET = b"a layer of secret/app"


@pytest.fixture
def storage_config(tmp_path: Path) -> Iterator[dict[str, Any]]:
    yield {"filesystem": {"root": str(tmp_path / "data"), "fsync": False}}


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    """The users of tests/api/test_route_access.py: admin may do anything, mallory only under mallory/."""
    path = tmp_path / "htpasswd"
    path.write_text("".join(bcrypt_entry(user, PASSWORD) + "\n" for user in [*USERS, "admin", "mallory"]))
    return path


@pytest.mark.parametrize("text", ["team/app\n", "team\n", "a/b\n"])
def test_a_name_ending_in_a_newline_is_invalid(text: str) -> None:
    # `$` matches before a final newline: the spec's grammar has no newline anywhere.
    with pytest.raises(RegistryError):
        validate_name(text)
    assert not is_valid_name(text)


def test_a_tag_ending_in_a_newline_is_invalid() -> None:
    with pytest.raises(RegistryError):
        validate_tag("v1\n")


async def admin_pushes(client: httpx.AsyncClient, bearer: bool) -> str:
    """secret/app with a layer and an image, and mallory/base with an image; as admin."""
    if bearer:
        client.headers.update(await caller_token(client, "admin", "secret/app", "mallory/base"))
    else:
        client.auth = httpx.BasicAuth("admin", PASSWORD)
    digest = await push_blob(client, "secret/app", SECRET)
    await push_image(client, "secret/app", "v1", seed="secret")
    await push_image(client, "mallory/base", "v1", seed="base")
    client.auth = None
    client.headers.pop("Authorization", None)
    return digest


async def mallory(client: httpx.AsyncClient, bearer: bool) -> dict[str, str]:
    if bearer:
        return await caller_token(client, "mallory", "mallory/x", "secret/app")
    return basic("mallory")


@pytest.mark.parametrize("bearer", [False, True], ids=["basic", "bearer"])
async def test_newline_spellings_of_a_name_or_tag_are_refused(
    client_factory: ClientFactory, htpasswd: Path, bearer: bool
) -> None:
    client = await client_factory(sections(htpasswd, token=bearer))
    digest = await admin_pushes(client, bearer)
    headers = await mallory(client, bearer)
    response = await client.post(f"/v2/mallory/x/blobs/uploads/?mount={digest}&from=secret/app%0A", headers=headers)
    assert response.status_code == 400 and error_code(response) == "NAME_INVALID", response.text
    body = b'{"schemaVersion":2}'
    response = await client.put("/v2/mallory/x/manifests/v1%0A", content=body, headers=headers)
    assert response.status_code == 400 and error_code(response) == "TAG_INVALID", response.text


async def index_ready(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    for _ in range(100):
        if (await client.get("/api/v1/search", params={"q": ""}, headers=headers)).status_code == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the metadata index did not become ready")


@pytest.mark.parametrize(
    "query",
    [
        "/v2/_catalog?last=a&last=z",
        "/v2/_catalog?n=1&n=2",
        "/api/v1/search?q=&last=a&last=z",
        "/api/v1/search?q=&n=1&n=2",
        "/v1/search?q=&n=1&n=2",
    ],
)
async def test_repeated_listing_parameters_are_refused_with_the_index_too(
    client_factory: ClientFactory, htpasswd: Path, query: str
) -> None:
    """The catalog without the index refuses `last` twice; with it (and search) it took the last one."""
    client = await client_factory(sections(htpasswd, token=False))
    await admin_pushes(client, bearer=False)
    await index_ready(client, basic("mallory"))
    response = await client.get(query, headers=basic("mallory"))
    assert response.status_code == 400 and error_code(response) == "PAGINATION_NUMBER_INVALID", response.text


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("/api/v1/search?q=a&q=b", "REQUEST_INVALID"),
        ("/v1/search?q=a&q=b", "REQUEST_INVALID"),
        ("/v2/mallory/base/referrers/sha256:" + "0" * 64 + "?artifactType=a&artifactType=b", "REQUEST_INVALID"),
        ("/api/v1/stats?repository=mallory/base&repository=secret/app", "NAME_INVALID"),
        ("/auth/token?service=a&service=b", "UNSUPPORTED"),
        ("/auth/token?service=" + SERVICE + "&offline_token=true&offline_token=false", "UNSUPPORTED"),
        # Numbers are ASCII digits: int() also takes other scripts' digits, signs, spaces and `_`.
        ("/v2/_catalog?n=%EF%BC%91", "PAGINATION_NUMBER_INVALID"),
        ("/v2/_catalog?n=1_0", "PAGINATION_NUMBER_INVALID"),
        ("/v2/_catalog?n=%2B1", "PAGINATION_NUMBER_INVALID"),
        ("/v2/mallory/base/tags/list?n=%201", "PAGINATION_NUMBER_INVALID"),
        ("/api/v1/search?q=&n=%D9%A1", "PAGINATION_NUMBER_INVALID"),
    ],
)
async def test_repeated_or_unusual_parameters_are_refused_never_guessed(
    client_factory: ClientFactory, htpasswd: Path, query: str, code: str
) -> None:
    client = await client_factory(sections(htpasswd, token=True))
    await admin_pushes(client, bearer=False)
    await index_ready(client, basic("mallory"))
    response = await client.get(query, headers=basic("mallory"))
    assert response.status_code == 400 and error_code(response) == code, response.text


@pytest.mark.parametrize("bearer", [False, True], ids=["basic", "bearer"])
async def test_spellings_of_a_repository_the_caller_may_not_pull(
    client_factory: ClientFactory, htpasswd: Path, bearer: bool
) -> None:
    client = await client_factory(sections(htpasswd, token=bearer))
    digest = await admin_pushes(client, bearer)
    headers = await mallory(client, bearer)
    blob = f"blobs/{digest}"
    paths = [
        f"/v2/secret/app/{blob}",
        f"/v2/secret%2Fapp/{blob}",
        f"/v2/secret%2fapp/{blob}",
        f"/v2/mallory/x/%2E%2E/%2E%2E/secret/app/{blob}",
        f"/v2/mallory%2Fx%2F..%2F..%2Fsecret%2Fapp/{blob}",
        f"/v2//secret/app/{blob}",
        f"/v2/SECRET/app/{blob}",
        f"/v2/secret/app/{blob.replace(':', '%3A')}",
        "/v2/secret/app/manifests/v1",
        "/v2/secret/app/tags/list",
        "/v2/secret/app/tags/list%0A",
        f"/v2/secret/app/referrers/{digest}",
        "/api/v1/repositories/secret/app",
        "/api/v1/repositories/secret%2Fapp",
    ]
    for path in paths:
        for method in ("GET", "HEAD"):
            response = await client.request(method, path, headers=headers)
            assert response.status_code in (400, 401, 403, 404), (method, path, response.status_code)
            if response.status_code == 404 and method == "GET":
                assert error_code(response) == "NOT_FOUND", (path, response.text)  # no route, not "no such blob"
    for query in (
        "",
        "?repository=secret/app",
        "?repository=%20secret/app",
        "?repository=mallory/base&repository=secret/app",
    ):
        response = await client.get(f"/api/v1/stats{query}", headers=headers)
        assert "secret/app" not in response.text or response.status_code == 404, (query, response.text)
        assert response.status_code in (200, 400, 404), (query, response.status_code)  # 400: repeated, refused


@pytest.mark.parametrize("bearer", [False, True], ids=["basic", "bearer"])
async def test_another_repositorys_upload_session_cannot_be_used_or_cancelled(
    client_factory: ClientFactory, htpasswd: Path, bearer: bool
) -> None:
    client = await client_factory(sections(htpasswd, token=bearer))
    admin: dict[str, Any] = await caller_token(client, "admin", "secret/app") if bearer else basic("admin")
    started = await client.post("/v2/secret/app/blobs/uploads/", headers=admin)
    assert started.status_code == 202
    location, upload_id = started.headers["Location"], started.headers["Docker-Upload-UUID"]
    state = location.split("_state=", 1)[1]
    headers = await mallory(client, bearer)
    assert (await client.delete(location, headers=headers)).status_code in (401, 403)
    for method in ("GET", "PATCH", "PUT", "DELETE"):
        response = await client.request(
            method, f"/v2/mallory/x/blobs/uploads/{upload_id}?_state={state}&digest=sha256:{'0' * 64}", headers=headers
        )
        assert response.status_code in (400, 404), (method, response.status_code)
    status = await client.get(location, headers=admin)
    assert status.status_code == 204, status.text  # still there, untouched


async def test_an_issuers_catalog_grant_lists_names_but_shows_nothing_it_may_not_pull(
    client_factory: ClientFactory, htpasswd: Path, tmp_path: Path
) -> None:
    """A token of another issuer granting only `registry:catalog:*` (or `:search`, what docker search asks for)."""
    issuer_key = foreign_key()
    public = tmp_path / "issuer.pem"
    public.write_bytes(
        issuer_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    config = sections(htpasswd, token=True)
    config["auth"]["token"]["external"] = {"issuer": "https://idp.example", "public_key": str(public)}
    client = await client_factory(config)
    await admin_pushes(client, bearer=True)
    for actions in (["*"], ["search"]):
        access = [{"type": "registry", "name": "catalog", "actions": actions}]
        token = signed(claims(SERVICE, access, sub="carol", issuer="https://idp.example"), issuer_key)
        headers = {"Authorization": f"Bearer {token}"}
        assert (await client.get("/v2/secret/app/tags/list", headers=headers)).status_code == 401
        await index_ready(client, headers)
        for path in ("/api/v1/search?q=", "/v1/search?q=", "/api/v1/stats"):
            response = await client.get(path, headers=headers)
            assert response.status_code == 200 and "secret/app" not in response.text, (actions, path, response.text)
        catalog = (await client.get("/v2/_catalog", headers=headers)).json()["repositories"]
        assert catalog == ["mallory/base", "secret/app"], actions  # names only, as Distribution lists them
