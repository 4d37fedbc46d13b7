"""What an attacker-minded review of the identity change found, kept found: a personal token never becomes more
than its scopes (through a bearer or a refresh token, or as an admin), tokens are managed only by their signed-in
owner, a removed user's tokens stop, hostile inputs are 400s not 500s, quotas hold when completions fail or
reservations lapse, and a policy database that cannot be read keeps repositories closed instead of open."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from registry.app import create_app
from tests.api.conftest import make_settings
from tests.api.helpers import at, digest_of, error_code, push_image
from tests.api.test_quotas import push_with
from tests.auth.test_htpasswd import bcrypt_entry

pytestmark = pytest.mark.parametrize("storage_config", ["filesystem"], indirect=True)
SERVICE = "registry.test"
PASSWORDS = {"admin": "admin-secret", "alice": "alice-secret"}
RULES = [
    {"repository": "**", "users": ["admin"], "actions": ["*"]},
    {"repository": "team/*", "users": ["alice"], "actions": ["pull", "push", "delete"]},
    {"repository": "open/*", "users": ["anonymous"], "actions": ["pull"]},
]
Factory = Callable[..., Any]


@pytest.fixture
async def serve(storage_config: dict[str, Any], tmp_path: Path) -> AsyncIterator[Factory]:
    """Start registries (htpasswd users, bearer tokens on); each gives a client factory per user."""
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("".join(bcrypt_entry(u, p) + "\n" for u, p in PASSWORDS.items()))
    managers: list[LifespanManager] = []
    clients: list[httpx.AsyncClient] = []

    async def start(**extra: Any) -> Callable[[tuple[str, str] | None], httpx.AsyncClient]:
        sections = {
            "auth": {
                "htpasswd": {"path": str(htpasswd)},
                "admins": ["admin"],
                "token": {"enabled": True, "service": SERVICE},
                "cache_ttl": 0.1,
            },
            "access": RULES,
            **extra,
        }
        manager = LifespanManager(create_app(make_settings(storage_config, sections)))
        await manager.__aenter__()
        managers.append(manager)

        def client(auth: tuple[str, str] | None) -> httpx.AsyncClient:
            made = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://registry.test", auth=auth
            )
            clients.append(made)
            return made

        return client

    yield start
    for made in clients:
        await made.aclose()
    for manager in reversed(managers):
        await manager.__aexit__(None, None, None)


async def make_token(client: httpx.AsyncClient, *scopes: str) -> tuple[str, str]:
    made = await client.post("/api/v1/tokens", json={"name": "t", "scopes": list(scopes)})
    assert made.status_code == 201, made.text
    return made.json()["token"], made.json()["id"]


async def bearer(client: httpx.AsyncClient, *scopes: str, offline: bool = False) -> dict[str, Any]:
    params: dict[str, Any] = {"service": SERVICE, "scope": list(scopes)}
    if offline:
        params["offline_token"] = "true"
    response = await client.get("/auth/token", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_bearer_token_got_with_a_personal_token_keeps_its_scopes_and_is_never_admin(serve: Factory) -> None:
    client = await serve()
    admin = client(("admin", PASSWORDS["admin"]))
    await push_image(admin, "team/app", "v1")
    await push_image(admin, "team/secret", "v1")
    secret, token_id = await make_token(admin, "repository:team/app:pull")
    with_token = client(("admin", secret))
    got = await bearer(with_token, "repository:team/secret:pull", "registry:catalog:*", offline=True)
    assert "refresh_token" not in got  # the client keeps the personal token itself
    headers = {"Authorization": f"Bearer {got['token']}"}
    plain = client(None)
    assert (await plain.get("/api/v1/audit", headers=headers)).status_code == 403
    assert (
        await plain.post("/api/v1/tokens", headers=headers, json={"name": "x", "scopes": ["repository:**:*"]})
    ).status_code == 403
    assert (await plain.get("/v2/team/secret/tags/list", headers=headers)).status_code in (401, 403)
    catalog = await plain.get("/v2/_catalog", headers=headers)
    assert catalog.json()["repositories"] == ["team/app"], catalog.text
    assert (await admin.delete(f"/api/v1/tokens/{token_id}")).status_code == 204
    assert (await plain.get("/v2/_catalog", headers=headers)).status_code == 401


async def test_a_refresh_token_never_comes_from_or_for_a_personal_token(serve: Factory) -> None:
    client = await serve()
    alice = client(("alice", PASSWORDS["alice"]))
    secret, _ = await make_token(alice, "repository:team/app:pull")
    normal = await bearer(alice, "repository:team/app:pull", offline=True)
    assert "refresh_token" in normal  # an htpasswd user's
    claims = json.loads(base64.urlsafe_b64decode(normal["refresh_token"].split(".")[1] + "=="))
    assert "moorage_pat" not in claims
    plain = client(None)
    refreshed = await plain.post(
        "/auth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": normal["refresh_token"],
            "service": SERVICE,
            "scope": "repository:team/app:push",
        },
    )
    assert refreshed.status_code == 200 and refreshed.json()["scope"] == "repository:team/app:push"
    got = await bearer(client(("alice", secret)), "repository:team/app:pull", offline=True)
    assert "refresh_token" not in got


async def test_a_bearer_token_holds_no_more_than_the_rules_allow_now(serve: Factory) -> None:
    """A token this registry issued carries what the rules allowed when it was issued: a rule revoked, or a
    repository made private, stops it at once (as it stops Basic), not when the token expires."""
    client = await serve()
    admin, plain = client(("admin", PASSWORDS["admin"])), client(None)
    alice = client(("alice", PASSWORDS["alice"]))
    await push_image(admin, "secret/app", "v1")
    await push_image(admin, "team/app", "v1")
    made = await admin.post(
        "/api/v1/access-rules", json={"repository": "secret/**", "users": ["alice"], "actions": ["pull"]}
    )
    assert made.status_code == 201, made.text
    public = await admin.put("/api/v1/visibility", json={"repository": "team/app", "visibility": "public"})
    assert public.status_code == 200, public.text
    alices = {"Authorization": f"Bearer {(await bearer(alice, 'repository:secret/app:pull'))['token']}"}
    anonymous = {"Authorization": f"Bearer {(await bearer(plain, 'repository:team/app:pull'))['token']}"}
    assert (await plain.get("/v2/secret/app/manifests/v1", headers=alices)).status_code == 200
    assert (await plain.get("/v2/team/app/manifests/v1", headers=anonymous)).status_code == 200

    assert (await admin.delete(f"/api/v1/access-rules/{made.json()['id']}")).status_code == 204
    closed = await admin.put("/api/v1/visibility", json={"repository": "team/app", "visibility": "private"})
    assert closed.status_code == 200, closed.text
    assert (await alice.get("/v2/secret/app/manifests/v1")).status_code == 403  # Basic: refused at once
    for headers, name in ((alices, "secret/app"), (anonymous, "team/app")):
        for path in (f"/v2/{name}/manifests/v1", f"/v2/{name}/tags/list"):
            refused = await plain.get(path, headers=headers)
            assert refused.status_code in (401, 403), (path, refused.status_code)  # 401: anonymous's challenge
    # What the rules still allow, the same tokens still do: alice pulls team/app through her rule there (a token
    # for it, granted before, keeps working); the token's claims still bound it (no push from a pull token).
    alices_team = {"Authorization": f"Bearer {(await bearer(alice, 'repository:team/app:pull'))['token']}"}
    assert (await plain.get("/v2/team/app/manifests/v1", headers=alices_team)).status_code == 200
    pushing = await plain.post("/v2/team/app/blobs/uploads/", headers=alices_team)
    assert pushing.status_code in (401, 403), pushing.status_code


async def test_a_delete_only_user_cannot_tell_a_protected_tag_from_a_missing_one(serve: Factory) -> None:
    """Immutable tags refuse their deletion by name: the refusal comes before the tag is looked up, so that a user
    who may delete but not pull learns nothing of which tags exist (nothing is deleted either way)."""
    client = await serve(
        access=[*RULES, {"repository": "secret/*", "users": ["alice"], "actions": ["delete"]}],
        immutable_tags=[{"repository": "secret/*", "tags": ["v*"]}],
    )
    admin, alice = client(("admin", PASSWORDS["admin"])), client(("alice", PASSWORDS["alice"]))
    await push_image(admin, "secret/app", "v1")
    assert (await alice.head("/v2/secret/app/manifests/v1")).status_code == 403
    existing = await alice.delete("/v2/secret/app/manifests/v1")
    missing = await alice.delete("/v2/secret/app/manifests/v999")
    assert (existing.status_code, error_code(existing)) == (missing.status_code, error_code(missing)) == (403, "DENIED")
    assert existing.json()["errors"][0]["message"].replace("v1", "") == missing.json()["errors"][0]["message"].replace(
        "v999", ""
    )
    assert (await admin.head("/v2/secret/app/manifests/v1")).status_code == 200


async def test_only_a_signed_in_owner_manages_tokens(serve: Factory, tmp_path: Path) -> None:
    client = await serve()
    alice = client(("alice", PASSWORDS["alice"]))
    secret, token_id = await make_token(alice, "repository:team/app:pull")
    as_token = client(("alice", secret))
    for method, path in (("GET", "/api/v1/tokens"), ("DELETE", f"/api/v1/tokens/{token_id}")):
        refused = await as_token.request(method, path)
        assert refused.status_code == 403 and error_code(refused) == "DENIED", (path, refused.text)
    got = await bearer(as_token, "repository:team/app:pull")
    refused = await client(None).get("/api/v1/tokens", headers={"Authorization": f"Bearer {got['token']}"})
    assert refused.status_code == 403
    # A CI token named like the user is not the user.
    from registry.auth.ci_tokens import CiTokenStore, StorageTokenRecords
    from registry.store.registry import Registry

    registry = Registry.from_settings(make_settings({"filesystem": {"root": str(tmp_path / "data"), "fsync": False}}))
    _, ci_secret = await CiTokenStore(StorageTokenRecords(registry.backend)).create(
        "alice-ci", ["repository:team/app:pull"]
    )
    await registry.aclose()
    ci = client(("alice-ci", ci_secret))
    assert (await ci.get("/api/v1/tokens")).status_code == 403


async def test_a_token_stops_with_its_owners_htpasswd_entry(serve: Factory, tmp_path: Path) -> None:
    client = await serve()
    alice = client(("alice", PASSWORDS["alice"]))
    secret, _ = await make_token(alice, "repository:team/app:pull")
    as_token = client(("alice", secret))
    assert (await as_token.get("/v2/team/app/tags/list")).status_code == 404
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(bcrypt_entry("admin", PASSWORDS["admin"]) + "\n")
    os.utime(htpasswd, ns=(1, 1))
    await asyncio.sleep(1.1)  # the file is checked for changes every second
    assert (await as_token.get("/v2/team/app/tags/list")).status_code == 401


@pytest.mark.parametrize(
    ("user", "path", "body"),
    [
        ("admin", "/api/v1/access-rules", b'{"repository":"team/*","users":["\\udc80"],"actions":["pull"]}'),
        ("admin", "/api/v1/access-rules", b'{"repository":"team/*","groups":["x\\ud800"],"actions":["pull"]}'),
        ("alice", "/api/v1/tokens", b'{"name":"t","scopes":["repository:team/\\udc80:pull"]}'),
        ("alice", "/api/v1/tokens", b'{"name":"t","scopes":["repository:team/app:pull"]}\xff'),
    ],
)
async def test_json_bodies_with_lone_surrogates_are_refused_not_stored(
    serve: Factory, user: str, path: str, body: bytes
) -> None:
    """An unpaired surrogate escape is no text (RFC 8259): stored in a list item (pydantic checks only bounded
    strings), it made every later render of the admin or tokens page a 500."""
    client = await serve()
    caller = client((user, PASSWORDS[user]))
    before = (await caller.get(path)).json()
    refused = await caller.post(path, content=body, headers={"Content-Type": "application/json"})
    assert refused.status_code == 400 and error_code(refused) == "REQUEST_INVALID", refused.text
    assert (await caller.get(path)).json() == before


async def test_an_audit_cursor_naming_no_entry_is_refused(serve: Factory) -> None:
    client = await serve()
    admin = client(("admin", PASSWORDS["admin"]))
    for entry_id in ("\udc80", "é", "a\x00b", "x" * 65, ""):
        cursor = base64.urlsafe_b64encode(json.dumps([1, entry_id]).encode()).decode()
        refused = await admin.get("/api/v1/audit", params={"before": cursor})
        assert refused.status_code == 400 and error_code(refused) == "REQUEST_INVALID", (entry_id, refused.text)


async def test_hostile_inputs_are_400s(serve: Factory) -> None:
    client = await serve()
    admin = client(("admin", PASSWORDS["admin"]))
    huge = base64.urlsafe_b64encode(("[" + "1" * 400 + ', "x"]').encode()).decode()
    for query in (f"before={huge}", "limit=%C2%B2", "before=" + base64.urlsafe_b64encode(b'["nan", "x"]').decode()):
        response = await admin.get(f"/api/v1/audit?{query}")
        assert response.status_code == 400, (query, response.text)
    deep = b"[" * 60_000
    assert (await admin.post("/api/v1/tokens", content=deep)).status_code == 400
    many = " ".join(f"repository:r{i}/*:pull" for i in range(60))
    response = await admin.post("/api/v1/tokens", json={"name": "x", "scopes": [many]})
    assert response.status_code == 400 and "at most 50" in response.text
    assert (await admin.put("/api/v1/quotas", json={"repository": "x/*", "bytes": True})).status_code == 400
    bad_name = await admin.get("/api/v1/quotas", params={"repository": "Not/A..Name" + "x" * 300})
    assert bad_name.status_code == 400 and error_code(bad_name) == "NAME_INVALID"


async def test_a_failed_completion_does_not_uncount_another_push(serve: Factory) -> None:
    client = await serve(quotas=[{"repository": "team/*", "bytes": 10_000}])
    alice = client(("alice", PASSWORDS["alice"]))
    first = b"a" * 6000
    assert (await push_with(alice, "team/app", "v1", first)).status_code == 201
    start = await alice.post("/v2/team/app/blobs/uploads/")
    lying = await alice.put(at(start.headers["Location"], digest=digest_of(first)), content=b"zzz")
    assert lying.status_code == 400 and error_code(lying) == "DIGEST_INVALID"
    assert (await push_with(alice, "team/app", "v2", b"b" * 6000)).status_code == 403


async def test_a_manifest_cannot_reference_more_than_the_quota_once_reservations_lapse(serve: Factory) -> None:
    client = await serve(quotas=[{"repository": "team/*", "bytes": 10_000}], policy={"reservation_ttl": 0.05})
    alice = client(("alice", PASSWORDS["alice"]))
    from tests.api.helpers import OCI_MANIFEST, encode, image_manifest
    from tests.api.test_quotas import CONFIG

    layers = [bytes([70 + i]) * 4000 for i in range(3)]
    for blob in (CONFIG, *layers):
        start = await alice.post("/v2/team/app/blobs/uploads/")
        assert (await alice.put(at(start.headers["Location"], digest=digest_of(blob)), content=blob)).status_code == 201
        await asyncio.sleep(0.1)  # each reservation lapses before the next blob
    body = encode(image_manifest(CONFIG, layers))
    refused = await alice.put("/v2/team/app/manifests/v1", content=body, headers={"Content-Type": OCI_MANIFEST})
    assert refused.status_code == 403 and error_code(refused) == "DENIED", refused.text
    assert not (await alice.get("/v2/team/app/tags/list")).json().get("tags")


async def test_an_unreadable_policy_database_keeps_repositories_closed(
    serve: Factory, storage_config: dict[str, Any], tmp_path: Path
) -> None:
    unreadable = tmp_path / "policy.sqlite"
    unreadable.write_bytes(b"this is not an SQLite database" * 100)
    client = await serve(policy={"path": str(unreadable)})
    admin, anonymous = client(("admin", PASSWORDS["admin"])), client(None)
    await push_image(admin, "open/app", "v1")
    # The config opens open/* to anonymous, but the stored visibility (which may close some) cannot be read.
    assert (await anonymous.get("/v2/open/app/tags/list")).status_code == 401
    assert (await admin.get("/v2/open/app/tags/list")).status_code == 200  # named users keep their rights
    down = await admin.post("/api/v1/access-rules", json={"repository": "x/*", "users": ["alice"], "actions": ["pull"]})
    assert down.status_code == 503 and error_code(down) == "UNAVAILABLE", down.text
