"""Authentication and access control in-process: challenges, the token service, bad tokens, rate limits, CI tokens
seen by every replica at once, filtered listings. (The allow/deny table over real HTTP is in tests/e2e.)"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from registry import paths
from registry.app import create_app
from registry.auth import htpasswd as htpasswd_module
from registry.auth.ci_tokens import CiTokenStore, DatabaseTokenRecords, StorageTokenRecords
from registry.database import postgres_engine
from registry.logs import ACCESS_LOGGER
from registry.settings import ConfigError, Settings
from storage_backends import StorageBackend
from tests.api.conftest import ClientFactory, filesystem_storage
from tests.api.helpers import error_code, push_blob, push_image
from tests.auth.forge import alg_none, claims, claims_of, foreign_key, hmac_with_public_key, read_signing_key, signed
from tests.auth.forge import tampered as tamper
from tests.auth.test_htpasswd import bcrypt_entry
from tests.webhook_receiver import Receiver


@pytest.fixture
def storage_config(tmp_path: Path) -> dict[str, Any]:
    return filesystem_storage(tmp_path)  # nothing here depends on the storage backend


SERVICE = "registry.test"
REALM = "http://registry.test/auth/token"
PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret", "admin": "admin-secret"}
RULES = [
    {"repository": "**", "users": ["admin"], "actions": ["*"]},
    {"repository": "team/*", "users": ["alice"], "actions": ["pull", "push", "delete"]},
    {"repository": "team/app", "users": ["bob"], "actions": ["pull"]},
    {"repository": "bob/*", "users": ["bob"], "actions": ["pull", "push"]},
]
PUBLIC_RULE = {"repository": "public/*", "users": ["anonymous"], "actions": ["pull"]}


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    path.write_text("".join(bcrypt_entry(user, password) + "\n" for user, password in PASSWORDS.items()))
    return path


def auth_sections(htpasswd: Path, *, token: bool, rules: list[dict[str, Any]] = RULES, **auth: Any) -> dict[str, Any]:
    return {
        "auth": {"htpasswd": {"path": str(htpasswd)}, "token": {"enabled": token, "service": SERVICE}, **auth},
        "access": rules,
    }


def entries_of(path: Path) -> dict[str, str]:
    """An htpasswd file's entries by user."""
    return dict(line.split(":", 1) for line in path.read_text().splitlines())


def rewrite(path: Path, text: str) -> None:
    path.write_text(text)
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse clock


def creds(user: str) -> tuple[str, str]:
    return user, PASSWORDS[user]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def token_for(client: httpx.AsyncClient, user: str | None, *scopes: str, **params: str) -> str:
    response = await client.get(
        "/auth/token",
        params={"service": SERVICE, "scope": list(scopes), **params},
        auth=creds(user) if user else httpx.USE_CLIENT_DEFAULT,
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def test_laptop_mode_has_no_auth(client: httpx.AsyncClient) -> None:
    response = await client.get("/v2/")
    assert response.status_code == 200 and "WWW-Authenticate" not in response.headers
    assert (await client.get("/auth/token")).status_code == 404
    await push_image(client, "any/repo", "v1")


async def test_basic_challenges_and_refusals(client_factory: ClientFactory, htpasswd: Path) -> None:
    client = await client_factory(auth_sections(htpasswd, token=False))
    response = await client.get("/v2/")
    assert response.status_code == 401 and error_code(response) == "UNAUTHORIZED"
    assert response.headers["WWW-Authenticate"] == 'Basic realm="moorage",charset="UTF-8"'
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert (await client.get("/v2/", auth=creds("alice"))).status_code == 200
    wrong = await client.get("/v2/", auth=("alice", "guess"))
    assert wrong.status_code == 401 and "guess" not in wrong.text
    assert (await client.get("/v2/", auth=("nobody", "guess"))).status_code == 401
    assert (await client.get("/v2/", headers={"Authorization": "Basic !!!"})).status_code == 401
    assert (await client.get("/v2/", headers={"Authorization": "Digest x"})).status_code == 401

    anonymous = await client.get("/v2/team/app/tags/list")
    assert anonymous.status_code == 401
    assert anonymous.json()["errors"][0]["detail"] == [{"Type": "repository", "Name": "team/app", "Action": "pull"}]
    denied = await client.post("/v2/team/app/blobs/uploads/", auth=creds("bob"))
    assert denied.status_code == 403 and error_code(denied) == "DENIED"
    assert denied.json()["errors"][0]["detail"] == [{"Type": "repository", "Name": "team/app", "Action": "push"}]
    head = await client.head("/v2/team/app/manifests/v1", auth=("bob", "wrong"))
    assert head.status_code == 401 and head.content == b""
    # Probes and the metrics endpoint are not behind auth.
    assert (await client.get("/healthz")).status_code == 200


async def test_bearer_challenges_name_realm_service_and_scope(client_factory: ClientFactory, htpasswd: Path) -> None:
    client = await client_factory(auth_sections(htpasswd, token=True))
    cases = {
        ("GET", "/v2/"): f'Bearer realm="{REALM}",service="{SERVICE}"',
        ("GET", "/v2/team/app/manifests/v1"): f'Bearer realm="{REALM}",service="{SERVICE}",'
        'scope="repository:team/app:pull"',
        ("POST", "/v2/team/app/blobs/uploads/"): f'Bearer realm="{REALM}",service="{SERVICE}",'
        'scope="repository:team/app:pull,push"',
        ("DELETE", "/v2/team/app/manifests/sha256:" + "0" * 64): f'Bearer realm="{REALM}",service="{SERVICE}",'
        'scope="repository:team/app:delete"',
        ("GET", "/v2/_catalog"): f'Bearer realm="{REALM}",service="{SERVICE}",scope="registry:catalog:*"',
        ("GET", "/v1/search"): f'Bearer realm="{REALM}",service="{SERVICE}",scope="registry:catalog:search"',
    }
    for (method, path), challenge in cases.items():
        response = await client.request(method, path)
        assert response.status_code == 401, (method, path)
        assert response.headers["WWW-Authenticate"] == challenge, (method, path)
    # Basic credentials are taken at the registry too (curl -u), in token mode.
    assert (await client.get("/v2/team/app/tags/list", auth=creds("bob"))).status_code == 404


async def test_realm_from_config(client_factory: ClientFactory, htpasswd: Path) -> None:
    sections = auth_sections(htpasswd, token=True)
    sections["auth"]["token"]["realm"] = "https://registry.example/auth/token"
    client = await client_factory(sections)
    response = await client.get("/v2/")
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="https://registry.example/auth/token"')


async def test_token_service_grants_what_was_asked_and_allowed(client_factory: ClientFactory, htpasswd: Path) -> None:
    client = await client_factory(auth_sections(htpasswd, token=True))
    response = await client.get(
        "/auth/token",
        params={
            "service": SERVICE,
            "scope": ["repository:team/app:pull,push,delete", "repository:other:pull", "registry:catalog:*"],
            "account": "bob",
            "client_id": "docker",
        },
        auth=creds("bob"),
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token"] == body["access_token"] and body["expires_in"] == 300 and body["issued_at"].endswith("Z")
    assert "refresh_token" not in body
    assert response.headers["Cache-Control"] == "no-store"
    payload = claims_of(body["token"])
    assert payload["sub"] == "bob" and payload["aud"] == SERVICE
    assert payload["access"] == [
        {"type": "repository", "name": "team/app", "actions": ["pull"]},
        {"type": "registry", "name": "catalog", "actions": ["*"]},
    ]
    anonymous = await client.get("/auth/token", params={"service": SERVICE, "scope": "repository:team/app:pull"})
    assert anonymous.status_code == 200 and claims_of(anonymous.json()["token"])["access"] == []
    offline = await client.get("/auth/token", params={"service": SERVICE, "offline_token": "true"}, auth=creds("bob"))
    assert offline.json()["refresh_token"]
    assert (await client.get("/auth/token", params={"service": "elsewhere"}, auth=creds("bob"))).status_code == 400
    assert (await client.get("/auth/token", params={"scope": "nonsense"}, auth=creds("bob"))).status_code == 400
    refused = await client.get("/auth/token", params={"service": SERVICE}, auth=("bob", "wrong"))
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Basic ")


async def test_oauth2_password_and_refresh_grants(client_factory: ClientFactory, htpasswd: Path) -> None:
    client = await client_factory(auth_sections(htpasswd, token=True))
    form = {
        "grant_type": "password",
        "username": "alice",
        "password": PASSWORDS["alice"],
        "service": SERVICE,
        "client_id": "docker",
        "access_type": "offline",
        "scope": "repository:team/app:pull,push repository:bob/x:pull",
    }
    response = await client.post("/auth/token", data=form)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scope"] == "repository:team/app:pull,push"
    assert claims_of(body["access_token"])["access"] == [
        {"type": "repository", "name": "team/app", "actions": ["pull", "push"]}
    ]
    refresh = body["refresh_token"]
    # A refresh token is no access token, and the other way round.
    assert (await client.get("/v2/", headers=bearer(refresh))).status_code == 401
    misuse = {"grant_type": "refresh_token", "refresh_token": body["access_token"], "service": SERVICE}
    assert (await client.post("/auth/token", data=misuse)).status_code == 401
    renewed = await client.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "service": SERVICE,
            "scope": "repository:team/x:*",
        },
    )
    assert renewed.status_code == 200
    assert claims_of(renewed.json()["access_token"])["access"] == [
        {"type": "repository", "name": "team/x", "actions": ["pull", "push", "delete"]}
    ]
    wrong = await client.post("/auth/token", data={**form, "password": "wrong"})
    assert wrong.status_code == 401
    assert (await client.post("/auth/token", data={"grant_type": "client_credentials"})).status_code == 400
    # A user removed from the htpasswd file cannot refresh any more.
    rewrite(htpasswd, bcrypt_entry("bob", "b") + "\n")
    await asyncio.sleep(htpasswd_module.RECHECK_SECONDS + 0.05)
    gone = await client.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": refresh})
    assert gone.status_code == 401


async def test_a_new_password_ends_the_tokens_got_with_the_old_one(
    client_factory: ClientFactory, htpasswd: Path
) -> None:
    """docker login keeps a refresh token instead of the password: one leaked must not outlive a password reset
    (for auth.token.refresh_expiry, 30 days), nor the access tokens got with it. Other users' are untouched."""
    client = await client_factory(auth_sections(htpasswd, token=True))

    async def refresh_token(user: str, password: str) -> str:
        params = {"service": SERVICE, "scope": "repository:team/app:pull", "offline_token": "true"}
        got = await client.get("/auth/token", params=params, auth=(user, password))
        assert got.status_code == 200, got.text
        token: str = got.json()["refresh_token"]
        return token

    async def refresh(token: str) -> httpx.Response:
        return await client.post(
            "/auth/token",
            data={
                "grant_type": "refresh_token",
                "refresh_token": token,
                "service": SERVICE,
                "scope": "repository:team/app:pull",
            },
        )

    alices, bobs = await refresh_token("alice", PASSWORDS["alice"]), await refresh_token("bob", PASSWORDS["bob"])
    refreshed = await refresh(alices)
    assert refreshed.status_code == 200
    access = {"Authorization": f"Bearer {refreshed.json()['token']}"}  # got through the refresh token
    bobs_access = {"Authorization": f"Bearer {(await refresh(bobs)).json()['token']}"}
    assert (await client.get("/v2/team/app/tags/list", headers=access)).status_code == 404  # let in, nothing there
    # The token carries a mark of the password entry, not the entry (a bcrypt hash to crack offline).
    entries = entries_of(htpasswd)
    assert entries["alice"] not in json.dumps(claims_of(alices)) and "$2" not in json.dumps(claims_of(alices))

    entries["alice"] = bcrypt_entry("alice", "new-secret").split(":", 1)[1]  # the others' lines as they were
    rewrite(htpasswd, "".join(f"{user}:{entry}\n" for user, entry in entries.items()))
    await asyncio.sleep(htpasswd_module.RECHECK_SECONDS + 0.05)
    ended = await refresh(alices)
    assert ended.status_code == 401, ended.text
    # The access tokens got with the old password end too, as Basic with it does (not at their expiry).
    assert (await client.get("/v2/team/app/tags/list", headers=access)).status_code == 401
    assert (await refresh(bobs)).status_code == 200
    assert (await client.get("/v2/team/app/tags/list", headers=bobs_access)).status_code == 404
    assert (await refresh(await refresh_token("alice", "new-secret"))).status_code == 200
    # A user taken out of the file: their tokens end at once.
    del entries["bob"]
    rewrite(htpasswd, "".join(f"{user}:{entry}\n" for user, entry in entries.items()))
    await asyncio.sleep(htpasswd_module.RECHECK_SECONDS + 0.05)
    assert (await client.get("/v2/team/app/tags/list", headers=bobs_access)).status_code == 401


async def test_a_long_password_is_a_401_whether_the_user_exists_or_not(
    client_factory: ClientFactory, htpasswd: Path
) -> None:
    client = await client_factory(auth_sections(htpasswd, token=True))
    long = "p" * 100  # over bcrypt's 72 bytes
    for user in ("nobody", "alice"):
        refused = [
            await client.get("/v2/", auth=(user, long)),
            await client.get("/auth/token", params={"service": SERVICE}, auth=(user, long)),
            await client.post(
                "/auth/token",
                data={"grant_type": "password", "username": user, "password": long, "service": SERVICE},
            ),
        ]
        assert [r.status_code for r in refused] == [401, 401, 401], (user, [r.text for r in refused])


async def test_bad_bearer_tokens_get_401(
    client_factory: ClientFactory, htpasswd: Path, storage: StorageBackend
) -> None:
    client = await client_factory(auth_sections(htpasswd, token=True))
    good = await token_for(client, "alice", "repository:team/app:pull")
    assert (await client.get("/v2/team/app/tags/list", headers=bearer(good))).status_code == 404
    key = read_signing_key(await storage.get_content(paths.TOKEN_SIGNING_KEY))
    kid = jwt.get_unverified_header(good)["kid"]
    access = [{"type": "repository", "name": "team/app", "actions": ["pull"]}]
    expired = claims(SERVICE, access)
    expired.update(exp=expired["iat"] - 60, iat=expired["iat"] - 400)
    bad = {
        "tampered": tamper(good, access=[{"type": "repository", "name": "team/app", "actions": ["push"]}]),
        "expired": signed(expired, key),
        "wrong audience": signed(claims("another-service", access), key),
        "alg none": alg_none(claims(SERVICE, access), kid),
        "hmac with the public key": hmac_with_public_key(claims(SERVICE, access), key),
        "foreign key": signed(claims(SERVICE, access), foreign_key(), kid=kid),
        "garbage": "abc",
    }
    for name, token in bad.items():
        response = await client.get("/v2/team/app/tags/list", headers=bearer(token))
        assert response.status_code == 401, name
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"], name
        assert token not in response.text


async def test_a_token_without_the_scope_is_challenged_or_denied(client_factory: ClientFactory, htpasswd: Path) -> None:
    client = await client_factory(auth_sections(htpasswd, token=True))
    pull_only = await token_for(client, "alice", "repository:team/app:pull")
    # The rules allow alice to push: the client is told to fetch a token with that scope.
    response = await client.post("/v2/team/app/blobs/uploads/", headers=bearer(pull_only))
    assert response.status_code == 401
    assert 'scope="repository:team/app:pull,push",error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    # The rules do not allow bob to push: no token will help.
    bob = await token_for(client, "bob", "repository:team/app:pull,push")
    assert (await client.post("/v2/team/app/blobs/uploads/", headers=bearer(bob))).status_code == 403
    pushing = await token_for(client, "alice", "repository:team/app:pull,push")
    assert (await client.post("/v2/team/app/blobs/uploads/", headers=bearer(pushing))).status_code == 202
    anonymous = await token_for(client, None, "repository:team/app:pull")
    assert (await client.get("/v2/", headers=bearer(anonymous))).status_code == 200
    assert (await client.get("/v2/team/app/tags/list", headers=bearer(anonymous))).status_code == 401


@pytest.mark.parametrize("token", [False, True], ids=["basic", "bearer"])
async def test_catalog_lists_only_what_the_caller_may_pull(
    client_factory: ClientFactory, htpasswd: Path, token: bool
) -> None:
    client = await client_factory(auth_sections(htpasswd, token=token))
    admin = httpx.BasicAuth(*creds("admin"))
    for name in ("team/app", "team/web", "bob/x", "secret/db"):
        client.auth = admin
        await push_image(client, name, "v1")
    client.auth = None

    async def catalog(user: str) -> Any:
        if token:
            response = await client.get(
                "/v2/_catalog", headers=bearer(await token_for(client, user, "registry:catalog:*"))
            )
        else:
            response = await client.get("/v2/_catalog", auth=creds(user))
        assert response.status_code == 200, response.text
        return response.json()["repositories"]

    assert await catalog("admin") == ["bob/x", "secret/db", "team/app", "team/web"]
    assert await catalog("alice") == ["team/app", "team/web"]
    assert await catalog("bob") == ["bob/x", "team/app"]
    assert (await client.get("/v2/_catalog")).status_code == 401  # nothing is granted to anonymous


async def test_anonymous_catalog_is_filtered_when_anonymous_may_pull(
    client_factory: ClientFactory, htpasswd: Path
) -> None:
    client = await client_factory(auth_sections(htpasswd, token=False, rules=[*RULES, PUBLIC_RULE]))
    client.auth = httpx.BasicAuth(*creds("admin"))
    for name in ("public/tool", "team/app"):
        await push_image(client, name, "v1")
    client.auth = None
    # No credentials at all: challenged first, so that a client holding some sends them and sees its own list.
    assert (await client.get("/v2/_catalog")).status_code == 401
    # Anonymous on purpose (skopeo's empty Basic credentials): what anonymous may pull.
    response = await client.get("/v2/_catalog", auth=("", ""))
    assert response.status_code == 200 and response.json()["repositories"] == ["public/tool"]
    # docker search cannot answer a challenge: anonymous gets past auth there at once (the list is filtered).
    assert (await client.get("/v1/search", params={"q": "tool"})).status_code != 401
    assert (await client.get("/v2/public/tool/manifests/v1")).status_code == 200
    assert (await client.get("/v2/team/app/manifests/v1")).status_code == 401
    # The ping still challenges, so that clients holding credentials send them.
    assert (await client.get("/v2/")).status_code == 401


async def test_a_burst_of_bad_passwords_is_answered_429(client_factory: ClientFactory, htpasswd: Path) -> None:
    sections = auth_sections(htpasswd, token=True, rate_limit={"failures": 3, "window": 60})
    client = await client_factory(sections)
    statuses = [(await client.get("/v2/", auth=("alice", f"guess-{i}"))).status_code for i in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
    locked = await client.get("/v2/", auth=creds("alice"))  # even the right password, until the window passes
    assert locked.status_code == 429 and error_code(locked) == "TOOMANYREQUESTS"
    assert 0 < int(locked.headers["Retry-After"]) <= 60
    assert (await client.get("/auth/token", auth=creds("alice"))).status_code == 429
    assert (await client.get("/v2/", auth=creds("bob"))).status_code == 200  # someone else is not locked out
    form = {"grant_type": "password", "username": "bob", "password": "wrong", "service": SERVICE}
    assert [(await client.post("/auth/token", data=form)).status_code for _ in range(4)] == [401, 401, 401, 429]


@pytest.fixture(params=["storage", "postgresql"])
def token_home(
    request: pytest.FixtureRequest, storage: StorageBackend
) -> Iterator[tuple[dict[str, Any], CiTokenStore]]:
    """Where the replicas keep CI tokens: storage, or the shared PostgreSQL database (`database.url`)."""
    if request.param == "storage":
        yield {}, CiTokenStore(StorageTokenRecords(storage))
        return
    server = request.getfixturevalue("postgres_server")
    url = server.new_database()
    records = DatabaseTokenRecords(lambda: postgres_engine(url), StorageTokenRecords(storage))
    yield {"database": {"url": url}}, CiTokenStore(records)
    records.close()
    server.drop_database(url)


async def test_ci_tokens_are_seen_and_revoked_at_once_on_every_replica(
    token_home: tuple[dict[str, Any], CiTokenStore], client_factory: ClientFactory, htpasswd: Path
) -> None:
    # token_home first: its database is dropped only after the replicas (client_factory) have stopped.
    database, store = token_home
    sections = {**auth_sections(htpasswd, token=True), **database}
    replica_a, replica_b = await client_factory(sections), await client_factory(sections)
    _, secret = await store.create("ci-app", ["repository:team/app:pull,push"])
    ci = httpx.BasicAuth("ci-app", secret)
    replica_a.auth = ci
    await push_image(replica_a, "team/app", "v1")
    assert (await replica_a.post("/v2/team/web/blobs/uploads/")).status_code == 403
    replica_a.auth = None
    token = await token_for_basic(replica_a, ci, "repository:team/app:pull,push")
    assert claims_of(token)["access"] == [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]
    assert (await replica_b.get("/v2/team/app/manifests/v1", headers=bearer(token))).status_code == 200
    assert (await replica_b.get("/v2/team/app/manifests/v1", auth=ci)).status_code == 200

    assert await store.revoke("ci-app")
    for replica in (replica_a, replica_b):
        assert (await replica.get("/v2/team/app/manifests/v1", auth=ci)).status_code == 401
        assert (await replica.get("/v2/team/app/manifests/v1", headers=bearer(token))).status_code == 401
    assert (await replica_a.get("/auth/token", auth=ci)).status_code == 401


async def token_for_basic(client: httpx.AsyncClient, auth: httpx.BasicAuth, *scopes: str) -> str:
    response = await client.get("/auth/token", params={"service": SERVICE, "scope": list(scopes)}, auth=auth)
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


async def test_a_mount_from_a_repository_the_caller_cannot_pull_is_a_plain_upload(
    client_factory: ClientFactory, htpasswd: Path
) -> None:
    client = await client_factory(auth_sections(htpasswd, token=False))
    client.auth = httpx.BasicAuth(*creds("alice"))
    digest = await push_blob(client, "team/app", b"private layer")
    client.auth = httpx.BasicAuth(*creds("bob"))
    response = await client.post("/v2/bob/x/blobs/uploads/", params={"mount": digest, "from": "team/web"})
    assert response.status_code == 202  # bob may not pull team/web: no mount, no hint the blob exists
    assert (await client.head(f"/v2/bob/x/blobs/{digest}")).status_code == 404
    client.auth = httpx.BasicAuth(*creds("alice"))
    mounted = await client.post("/v2/team/web/blobs/uploads/", params={"mount": digest, "from": "team/app"})
    assert mounted.status_code == 201
    client.auth = httpx.BasicAuth(*creds("bob"))
    allowed = await client.post("/v2/bob/x/blobs/uploads/", params={"mount": digest, "from": "team/app"})
    assert allowed.status_code == 201  # bob may pull team/app


async def test_admin_and_search_routes_are_guarded(client_factory: ClientFactory, htpasswd: Path) -> None:
    client = await client_factory(auth_sections(htpasswd, token=False))
    assert (await client.get("/api/v1/stats")).status_code == 401
    assert (await client.get("/api/v1/repositories/team/app", auth=("bob", "x"))).status_code == 401
    assert (await client.delete("/api/v1/repositories/team/app", auth=creds("bob"))).status_code == 403
    assert (await client.get("/api/v1/repositories/secret/db", auth=creds("alice"))).status_code == 403
    assert (await client.get("/api/v1/search", params={"q": "x"})).status_code == 401
    assert (await client.get("/v1/search", params={"q": "x"})).status_code == 401


async def test_the_access_log_names_the_user_and_never_the_secret(
    client_factory: ClientFactory, htpasswd: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sections = auth_sections(htpasswd, token=False)
    sections["http"] = {"access_log": True}
    client = await client_factory(sections)
    with caplog.at_level(logging.INFO):
        await client.get("/v2/", auth=creds("alice"))
        await client.get("/v2/team/x/tags/list", auth=creds("bob"))
        await client.get("/v2/", auth=("alice", "wrong-password"))
    records = [dict(r.fields) for r in caplog.records if r.name == ACCESS_LOGGER]  # type: ignore[attr-defined]
    assert [(r["user"], r["status"]) for r in records] == [("alice", 200), ("bob", 403), ("", 401)]
    assert records[1]["route"] == "/v2/{name:path}/tags/list" and records[1]["repository"] == "team/x"
    assert not any("secret" in r.getMessage() or "wrong-password" in r.getMessage() for r in caplog.records)


def test_a_missing_htpasswd_file_stops_the_start(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {
            "storage": {"filesystem": {"root": str(tmp_path / "data")}},
            "auth": {"htpasswd": {"path": str(tmp_path / "missing")}},
        }
    )
    with pytest.raises(ConfigError, match=r"auth\.htpasswd\.path"):
        create_app(settings)


async def test_tokens_of_an_external_issuer(client_factory: ClientFactory, htpasswd: Path, tmp_path: Path) -> None:
    issuer_key = foreign_key()
    public = tmp_path / "issuer.pem"
    public.write_bytes(
        issuer_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    sections = auth_sections(htpasswd, token=True, rules=[])
    sections["auth"]["token"]["external"] = {
        "issuer": "https://idp.example",
        "public_key": str(public),
        "algorithms": ["ES256"],
        "realm": "https://idp.example/token",
    }
    client = await client_factory(sections)
    challenge = (await client.get("/v2/team/app/tags/list")).headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="https://idp.example/token",service="registry.test"')
    access = [{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]
    token = signed(claims(SERVICE, access, sub="carol", issuer="https://idp.example"), issuer_key)
    client.headers["Authorization"] = f"Bearer {token}"
    await push_image(client, "team/app", "v1")  # its access claim decides, not the (empty) rules
    other = await client.get("/v2/team/web/tags/list")
    assert other.status_code == 401 and 'error="insufficient_scope"' in other.headers["WWW-Authenticate"]
    catalog = await client.get("/v2/_catalog")
    assert catalog.json()["repositories"] == ["team/app"]
    wrong_issuer = signed(claims(SERVICE, access, sub="carol", issuer="https://evil.example"), issuer_key)
    assert (await client.get("/v2/", headers=bearer(wrong_issuer))).status_code == 401


async def test_webhook_events_name_the_actor(
    client_factory: ClientFactory, htpasswd: Path, storage: StorageBackend, tmp_path: Path
) -> None:
    receiver = Receiver()
    try:
        sections = auth_sections(htpasswd, token=True)
        sections["notifications"] = {
            "endpoints": [{"name": "hook", "url": receiver.url, "timeout": "2s"}],
            "queue_path": str(tmp_path / "events.sqlite3"),
        }
        client = await client_factory(sections)
        client.auth = httpx.BasicAuth(*creds("alice"))
        await push_image(client, "team/app", "v1")
        _, secret = await CiTokenStore(StorageTokenRecords(storage)).create("ci-app", ["repository:team/app:pull"])
        client.auth = None
        token = await token_for_basic(client, httpx.BasicAuth("ci-app", secret), "repository:team/app:pull")
        assert (await client.get("/v2/team/app/manifests/v1", headers=bearer(token))).status_code == 200
        (pushed,) = await receiver.wait_for("push", "manifests")
        (pulled,) = await receiver.wait_for("pull", "manifests")
        assert pushed["actor"] == {"name": "alice"} and pulled["actor"] == {"name": "ci-app"}
    finally:
        receiver.close()
