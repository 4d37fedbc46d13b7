"""Authorization after routing: every route declares its access, the declared access is what is enforced, and a
mount cannot read a repository the caller may not pull, however its query is spelled (basic and bearer)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

import registry.app
from registry.app import create_app
from registry.routing import ApiRoute, Need, UndeclaredRoute
from tests.api.conftest import ClientFactory, make_settings
from tests.api.helpers import digest_of, error_code, push_blob, push_image
from tests.auth.test_htpasswd import bcrypt_entry

SERVICE = "registry.test"
USERS = {"puller": "pull", "pusher": "push", "deleter": "delete"}
PASSWORD = "a-long-password"
SECRET_LAYER = b"a layer only admin may read"


@pytest.fixture
def storage_config(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Access is decided above storage: the filesystem alone is enough here."""
    yield {"filesystem": {"root": str(tmp_path / "data"), "fsync": False}}


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    names = [*USERS, "admin", "mallory"]
    path.write_text("".join(bcrypt_entry(user, PASSWORD) + "\n" for user in names))
    return path


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()}


def sections(htpasswd: Path, *, token: bool) -> dict[str, Any]:
    rules = [{"repository": "r/**", "users": [user], "actions": [action]} for user, action in USERS.items()]
    rules += [
        {"repository": "**", "users": ["admin"], "actions": ["*"]},
        {"repository": "mallory/**", "users": ["mallory"], "actions": ["pull", "push"]},
    ]
    return {
        "auth": {
            "htpasswd": {"path": str(htpasswd)},
            "token": {"enabled": token, "service": SERVICE},
            "admins": ["admin"],
        },
        "access": rules,
    }


def test_a_route_without_an_access_declaration_stops_the_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    async def sneaky(request: Request) -> Response:
        return Response("no check here")

    declared = registry.app.routes

    def routes(*, metrics: bool = False) -> list[BaseRoute]:
        return [*declared(metrics=metrics), Route("/v2/{name:path}/sneaky", sneaky, methods=["GET"])]

    monkeypatch.setattr(registry.app, "routes", routes)
    settings = make_settings({"filesystem": {"root": str(tmp_path / "data")}})
    with pytest.raises(UndeclaredRoute, match="sneaky"):
        create_app(settings)


def test_every_route_of_the_app_is_declared(tmp_path: Path) -> None:
    app = create_app(make_settings({"filesystem": {"root": str(tmp_path / "data")}}, {"metrics": {"enabled": True}}))
    assert app.routes and all(isinstance(route, ApiRoute) for route in app.routes)


def concrete(route: ApiRoute, repository: str) -> tuple[str, dict[str, str]]:
    """A request path for the route, and its path parameters."""
    params = {
        "name": repository,
        "digest": digest_of(b"x"),
        "reference": "v1",
        "upload_id": str(uuid.uuid4()),
        "tag": "v1",
        "file": "ui.css",
        "id": "0123456789abcdef",
        "pattern": "r/*",
        "kind": "quota",
    }
    path = route.path
    used = {}
    for key, value in params.items():
        for pattern in (f"{{{key}:path}}", f"{{{key}}}"):
            if pattern in path:
                path = path.replace(pattern, value)
                used[key] = value
    assert "{" not in path, path
    return path, used


def declared_need(app: Starlette, route: ApiRoute, method: str, path: str, path_params: dict[str, str]) -> Need:
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": [],
        "path_params": path_params,
        "app": app,
    }
    return route.access(Request(scope))


def route_cases(app: Starlette) -> list[tuple[ApiRoute, str, str, Need]]:
    cases = []
    for route in app.routes:
        assert isinstance(route, ApiRoute)
        for method in sorted(route.methods or ()):
            path, path_params = concrete(route, "r/app")
            cases.append((route, method, path, declared_need(app, route, method, path, path_params)))
    return cases


async def caller(client: httpx.AsyncClient, user: str | None, bearer: bool) -> dict[str, str]:
    if user is None:
        return {}
    if not bearer:
        return basic(user)
    scopes = ["repository:r/app:pull,push,delete", "registry:catalog:*"]
    response = await client.get("/auth/token", params={"service": SERVICE, "scope": scopes}, auth=(user, PASSWORD))
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


@pytest.mark.parametrize("bearer", [False, True], ids=["basic", "bearer"])
async def test_the_declared_access_is_what_is_enforced(
    client_factory: ClientFactory, storage_config: dict[str, Any], htpasswd: Path, bearer: bool
) -> None:
    """Each route, each method, each caller: refused exactly when the declaration says so."""
    config = {**sections(htpasswd, token=bearer), "metrics": {"enabled": True}}
    client = await client_factory(config)
    app = create_app(make_settings(storage_config, config))  # the same routes, to enumerate them
    headers = {user: await caller(client, user, bearer) for user in (*USERS, "admin")}
    headers["anonymous"] = {}
    checked = 0
    for _route, method, path, need in route_cases(app):
        if path == "/auth/token":
            continue  # public, and it checks the credentials it exchanges itself (tests/api/test_auth.py)
        if _route.identify is not None:
            continue  # a UI page: its caller is its session, not a header (tests/ui/test_ui_access.py)
        for user, auth in headers.items():
            response = await client.request(method, path, headers=auth)
            refused = response.status_code in (401, 403)
            if need.kind == "public":
                expected = False
            elif need.kind == "admin":
                expected = user != "admin"
            elif need.kind == "repository":
                actions = {access.action for access in need.required}
                assert len(actions) == 1, (path, need)
                may = user == "admin" or USERS.get(user) in actions
                expected = not may
            else:  # ping, login, listing: no rule names anonymous here
                expected = user == "anonymous"
            assert refused == expected, (method, path, user, need, response.status_code, response.text)
            if refused and method != "HEAD":
                assert error_code(response) in ("UNAUTHORIZED", "DENIED")
            checked += 1
    assert checked >= 5 * 20


MOUNT_BYPASSES = [
    "mount={d}&from=mallory/base&from=secret/app",
    "mount={d}&from=secret/app&from=mallory/base",
    "mount={d}&mount={d}&from=secret/app",
    "mount={d}&from=secret/app&from=",
    "%6Dount={d}&from=secret/app",
    "mount={d}&%66rom=secret/app",
    "%6D%6F%75%6E%74={d}&%66%72%6F%6D=secret%2Fapp",
    "mount={d}&from=secret%2Fapp",
    "mount={d}&from=secret/app&mount=",
    "mount={d}",
    "mount={d}&from=",
    "mount={d}&from=secret//app",
    "mount={d}&from=secret/app/",
    "mount={d}&from=./secret/app",
    "mount={d}&from=SECRET/app",
    "mount={d}&from=secret/app%00",
    "mount={d}&from=mallory/base/../../secret/app",
    "mount={d}&from=secret/app;mallory/base",
    "mount={d}&from=secret/app&digest={d}",
]


@pytest.mark.parametrize("bearer", [False, True], ids=["basic", "bearer"])
async def test_a_mount_never_reads_a_repository_the_caller_may_not_pull(
    client_factory: ClientFactory, htpasswd: Path, bearer: bool
) -> None:
    client = await client_factory(sections(htpasswd, token=bearer))
    client.auth = httpx.BasicAuth("admin", PASSWORD)
    if bearer:
        client.auth = None
        admin = await caller_token(client, "admin", "secret/app", "mallory/base")
        client.headers.update(admin)
    digest = await push_blob(client, "secret/app", SECRET_LAYER)
    await push_image(client, "mallory/base", "1")
    client.auth = None
    client.headers.pop("Authorization", None)
    if bearer:
        # mallory asks for everything a mount would need; the token carries only what she may do.
        mallory = await caller_token(client, "mallory", "mallory/x", "secret/app")
    else:
        mallory = basic("mallory")
    for query in MOUNT_BYPASSES:
        response = await client.post(
            f"/v2/mallory/x/blobs/uploads/?{query.format(d=digest)}", headers=mallory, content=SECRET_LAYER[:0]
        )
        assert response.status_code in (202, 400), (query, response.status_code, response.text)
        if response.status_code == 400:
            assert error_code(response) in ("BLOB_UPLOAD_INVALID", "DIGEST_INVALID", "NAME_INVALID"), query
        for method in ("HEAD", "GET"):
            leaked = await client.request(method, f"/v2/mallory/x/blobs/{digest}", headers=mallory)
            assert leaked.status_code == 404, (query, method)
    # The control: the same mount asked by someone who may pull the source is a 201.
    admin = await caller_token(client, "admin", "admin/x", "secret/app") if bearer else basic("admin")
    mounted = await client.post(f"/v2/admin/x/blobs/uploads/?mount={digest}&from=secret/app", headers=admin)
    assert mounted.status_code == 201, mounted.text


async def caller_token(client: httpx.AsyncClient, user: str, *repositories: str) -> dict[str, str]:
    scopes = [f"repository:{repository}:pull,push" for repository in repositories]
    response = await client.get("/auth/token", params={"service": SERVICE, "scope": scopes}, auth=(user, PASSWORD))
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


@pytest.mark.parametrize("bearer", [False, True], ids=["basic", "bearer"])
async def test_a_mount_from_a_pullable_repository_or_found_among_them(
    client_factory: ClientFactory, htpasswd: Path, bearer: bool
) -> None:
    client = await client_factory(sections(htpasswd, token=bearer))
    admin = await caller_token(client, "admin", "mallory/base") if bearer else {}
    client.auth = None if bearer else httpx.BasicAuth("admin", PASSWORD)
    client.headers.update(admin)
    digest = await push_blob(client, "mallory/base", b"a layer mallory may pull")
    await push_image(client, "mallory/base", "1")
    client.auth = None
    client.headers.pop("Authorization", None)
    mallory = (
        await caller_token(client, "mallory", "mallory/x", "mallory/y", "mallory/base") if bearer else basic("mallory")
    )
    named = await client.post(f"/v2/mallory/x/blobs/uploads/?mount={digest}&from=mallory/base", headers=mallory)
    assert named.status_code == 201, named.text
    found = await client.post(f"/v2/mallory/y/blobs/uploads/?mount={digest}", headers=mallory)
    # Without `from`: mallory may pull mallory/base, which the metadata index lists: found there.
    assert found.status_code == 201, found.text
    assert (await client.get(f"/v2/mallory/y/blobs/{digest}", headers=mallory)).status_code == 200
