"""The admin API for access rules, visibility, quotas, personal tokens and the audit log (registry/handlers/policy.py,
registry/policy): changes take effect at once without a restart, every change is audited, groups grant rights,
personal tokens act as their owner within their scopes and die at once when revoked, bad input gets the spec's
errors. Quotas have their own file (test_quotas.py); the second replica is in tests/e2e/test_policy_replicas.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from registry.app import create_app
from tests.api.conftest import make_settings
from tests.api.helpers import error_code, push_image
from tests.auth.test_htpasswd import bcrypt_entry

FILESYSTEM = pytest.mark.parametrize("storage_config", ["filesystem"], indirect=True)
PASSWORDS = {"admin": "admin-secret", "alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret"}
RULES = [
    {"repository": "**", "users": ["admin"], "actions": ["*"]},
    {"repository": "team/*", "users": ["alice"], "actions": ["pull", "push", "delete"]},
    {"repository": "open/*", "users": ["anonymous"], "actions": ["pull"]},
]
Client = Callable[[str | None], httpx.AsyncClient]


@pytest.fixture
async def registry(storage_config: dict[str, Any], tmp_path: Path) -> AsyncIterator[Client]:
    """One registry with htpasswd users, `admin` as its admin and bob in group `devs`; clients per user."""
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text("".join(bcrypt_entry(user, password) + "\n" for user, password in PASSWORDS.items()))
    sections = {
        "auth": {
            "htpasswd": {"path": str(htpasswd)},
            "admins": ["admin"],
            "groups": {"devs": ["bob"], "ops": ["carol"]},
            "cache_ttl": 0.1,
        },
        "access": RULES,
    }
    app = create_app(make_settings(storage_config, sections))
    clients: list[httpx.AsyncClient] = []
    async with LifespanManager(app) as manager:

        def client(user: str | None) -> httpx.AsyncClient:
            made = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app),
                base_url="http://registry.test",
                auth=(user, PASSWORDS[user]) if user else None,
            )
            clients.append(made)
            return made

        yield client
        for made in clients:
            await made.aclose()


async def add_rule(admin: httpx.AsyncClient, **rule: Any) -> str:
    response = await admin.post("/api/v1/access-rules", json=rule)
    assert response.status_code == 201, response.text
    rule_id: str = response.json()["id"]
    return rule_id


@FILESYSTEM
async def test_a_rule_added_through_the_api_holds_at_once_and_goes_when_deleted(registry: Client) -> None:
    admin, bob = registry("admin"), registry("bob")
    refused = await bob.post("/v2/bob-team/app/blobs/uploads/")
    assert refused.status_code == 403 and error_code(refused) == "DENIED"

    rule_id = await add_rule(admin, repository="bob-team/*", users=["bob"], actions=["pull", "push"])
    await push_image(bob, "bob-team/app", "v1")
    listed = (await admin.get("/api/v1/access-rules")).json()["rules"]
    assert [r["source"] for r in listed] == ["config", "config", "config", "api"]
    assert listed[-1] == {**listed[-1], "id": rule_id, "repository": "bob-team/*", "users": ["bob"], "groups": []}

    assert (await admin.delete(f"/api/v1/access-rules/{rule_id}")).status_code == 204
    assert (await bob.get("/v2/bob-team/app/tags/list")).status_code == 403
    again = await admin.delete(f"/api/v1/access-rules/{rule_id}")
    assert again.status_code == 404 and error_code(again) == "NOT_FOUND"


@FILESYSTEM
async def test_groups_grant_what_rules_give_them(registry: Client) -> None:
    admin, bob, carol = registry("admin"), registry("bob"), registry("carol")
    await add_rule(admin, repository="dev/**", groups=["devs"], actions=["pull", "push"])
    await push_image(bob, "dev/tools/app", "v1")  # bob is in devs (auth.groups)
    assert (await carol.get("/v2/dev/tools/app/tags/list")).status_code == 403  # carol is in ops
    await add_rule(admin, repository="dev/**", groups=["o*"], actions=["pull"])  # group globs
    assert (await carol.get("/v2/dev/tools/app/tags/list")).json()["tags"] == ["v1"]


@FILESYSTEM
async def test_visibility_opens_a_repository_to_anyone_or_closes_it_to_members(registry: Client) -> None:
    admin, anonymous, alice = registry("admin"), registry(None), registry("alice")
    await push_image(admin, "team/app", "v1")
    await push_image(admin, "open/private-one", "v1")
    assert (await anonymous.get("/v2/team/app/tags/list")).status_code == 401
    assert (await anonymous.get("/v2/open/private-one/tags/list")).status_code == 200

    public = await admin.put("/api/v1/visibility", json={"repository": "team/app", "visibility": "public"})
    assert public.status_code == 200, public.text
    assert (await anonymous.get("/v2/team/app/tags/list")).json()["tags"] == ["v1"]
    assert (await anonymous.post("/v2/team/app/blobs/uploads/")).status_code == 401  # public is pull only

    # Private wins over the config's rule for anonymous; members named by rules keep their rights.
    private = await admin.put("/api/v1/visibility", json={"repository": "open/private-*", "visibility": "private"})
    assert private.status_code == 200
    assert (await anonymous.get("/v2/open/private-one/tags/list")).status_code == 401
    assert (await admin.get("/v2/open/private-one/tags/list")).status_code == 200
    assert (await alice.get("/v2/team/app/tags/list")).status_code == 200
    listed = (await admin.get("/api/v1/visibility")).json()["visibility"]
    assert {v["repository"]: v["visibility"] for v in listed} == {"team/app": "public", "open/private-*": "private"}

    assert (await admin.delete("/api/v1/visibility/open/private-*")).status_code == 204
    assert (await anonymous.get("/v2/open/private-one/tags/list")).status_code == 200


@FILESYSTEM
async def test_only_admins_change_policy_and_read_the_audit_log(registry: Client) -> None:
    anonymous, alice = registry(None), registry("alice")
    for method, path, body in [
        ("GET", "/api/v1/access-rules", None),
        ("POST", "/api/v1/access-rules", {"repository": "x/*", "users": ["alice"], "actions": ["*"]}),
        ("DELETE", "/api/v1/access-rules/0123456789abcdef", None),
        ("PUT", "/api/v1/visibility", {"repository": "team/app", "visibility": "public"}),
        ("PUT", "/api/v1/quotas", {"repository": "team/*", "bytes": 1}),
        ("DELETE", "/api/v1/quotas/team/*", None),
        ("GET", "/api/v1/audit", None),
    ]:
        unknown = await anonymous.request(method, path, json=body)
        assert unknown.status_code == 401 and error_code(unknown) == "UNAUTHORIZED", (path, unknown.text)
        refused = await alice.request(method, path, json=body)
        assert refused.status_code == 403 and error_code(refused) == "DENIED", (path, refused.text)
    # alice's own rights did not change.
    assert (await alice.post("/v2/x/app/blobs/uploads/")).status_code == 403


@FILESYSTEM
async def test_bad_bodies_and_parameters_get_the_specs_errors(registry: Client) -> None:
    admin = registry("admin")
    cases: list[tuple[str, str, Any]] = [
        ("/api/v1/access-rules", "POST", b"not json"),
        ("/api/v1/access-rules", "POST", b"[]"),
        ("/api/v1/access-rules", "POST", {"repository": "x/*", "users": ["bob"], "actions": ["own"]}),
        ("/api/v1/access-rules", "POST", {"repository": "x/*", "actions": ["pull"]}),
        ("/api/v1/access-rules", "POST", {"repository": "", "users": ["bob"], "actions": ["pull"]}),
        ("/api/v1/access-rules", "POST", {"repository": "x/*", "users": ["bob"], "actions": ["pull"], "x": 1}),
        ("/api/v1/access-rules", "POST", {"repository": "x/*", "users": ["b\nob"], "actions": ["pull"]}),
        ("/api/v1/access-rules", "POST", b'{"repository": "' + b"a" * 70_000 + b'"}'),
        ("/api/v1/visibility", "PUT", {"repository": "x", "visibility": "secret"}),
        ("/api/v1/quotas", "PUT", {"repository": "x/*", "bytes": -1}),
        ("/api/v1/quotas", "PUT", {"repository": "x/*", "bytes": "ten gigs"}),
        ("/api/v1/quotas", "PUT", {"repository": "x/*", "bytes": 2**70}),
    ]
    for path, method, body in cases:
        if isinstance(body, bytes):
            response = await admin.request(method, path, content=body)
        else:
            response = await admin.request(method, path, json=body)
        assert response.status_code == 400, (body if not isinstance(body, bytes) else body[:40], response.text)
        assert response.json()["errors"][0]["code"] in {"REQUEST_INVALID"}
    config_rule = await admin.delete("/api/v1/access-rules/config-0")
    assert config_rule.status_code == 403 and "config file" in config_rule.json()["errors"][0]["message"]
    for query in ("limit=0", "limit=abc", "limit=1&limit=2", "limit=100000"):
        response = await admin.get(f"/api/v1/audit?{query}")
        assert response.status_code == 400, (query, response.text)
    assert (await admin.get("/api/v1/audit?before=%%%")).status_code == 400
    # Nothing of the above was stored or audited.
    assert (await admin.get("/api/v1/audit")).json()["entries"] == []


@FILESYSTEM
async def test_every_change_is_audited_with_who_what_when_and_from_where(registry: Client) -> None:
    admin = registry("admin")
    rule_id = await add_rule(admin, repository="x/*", users=["bob"], actions=["pull"])
    await admin.put("/api/v1/quotas", json={"repository": "x/*", "bytes": "1GiB"})
    await admin.put("/api/v1/visibility", json={"repository": "x/pub", "visibility": "public"})
    await admin.delete(f"/api/v1/access-rules/{rule_id}")
    first = (await admin.get("/api/v1/audit?limit=3")).json()
    actions = [entry["action"] for entry in first["entries"]]
    assert actions == ["access-rule.delete", "visibility.set", "quota.set"]
    assert all(e["actor"] == "admin" and e["address"] == "127.0.0.1" and e["at"] > 0 for e in first["entries"])
    assert first["entries"][2]["detail"] == {"bytes": 2**30} and first["entries"][2]["target"] == "x/*"
    rest = (await admin.get("/api/v1/audit", params={"before": first["next"]})).json()
    assert [entry["action"] for entry in rest["entries"]] == ["access-rule.create"]
    assert rest["entries"][0]["detail"]["users"] == ["bob"] and "next" not in rest


@FILESYSTEM
async def test_personal_tokens_act_as_their_owner_within_their_scopes_and_die_when_revoked(
    registry: Client, storage_config: dict[str, Any]
) -> None:
    admin, alice, bob = registry("admin"), registry("alice"), registry("bob")
    await push_image(admin, "team/app", "v1")
    await push_image(admin, "team/other", "v1")
    made = await alice.post(
        "/api/v1/tokens", json={"name": "laptop", "scopes": ["repository:team/app:pull"], "expires_in": "30d"}
    )
    assert made.status_code == 201, made.text
    secret, token_id = made.json()["token"], made.json()["id"]
    assert secret.startswith("moorage_pat_") and made.json()["expires_at"] > made.json()["created_at"]
    assert "token" not in (await alice.get("/api/v1/tokens")).json()["tokens"][0]

    def with_token(user: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=alice._transport, base_url="http://registry.test", auth=(user, secret))

    async with with_token("alice") as as_token, with_token("bob") as wrong_user:
        assert (await as_token.get("/v2/team/app/tags/list")).json()["tags"] == ["v1"]
        assert (await as_token.get("/v2/team/other/tags/list")).status_code == 403  # alice may; the token may not
        assert (await as_token.post("/v2/team/app/blobs/uploads/")).status_code == 403  # pull only
        assert (
            await as_token.post("/api/v1/tokens", json={"name": "x", "scopes": ["repository:a:pull"]})
        ).status_code == 403
        assert (await wrong_user.get("/v2/team/app/tags/list")).status_code == 401  # alice's token, bob's name
        # bob cannot see or revoke it; the owner can, and it stops at once.
        assert (await bob.get("/api/v1/tokens")).json()["tokens"] == []
        assert (await bob.delete(f"/api/v1/tokens/{token_id}")).status_code == 404
        assert (await bob.get("/api/v1/tokens?all=true")).status_code == 403
        assert [t["owner"] for t in (await admin.get("/api/v1/tokens?all=true")).json()["tokens"]] == ["alice"]
        assert (await alice.delete(f"/api/v1/tokens/{token_id}")).status_code == 204
        assert (await as_token.get("/v2/team/app/tags/list")).status_code == 401
    audit = (await admin.get("/api/v1/audit")).json()["entries"]
    assert [(e["action"], e["actor"]) for e in audit] == [("token.revoke", "alice"), ("token.create", "alice")]


@FILESYSTEM
async def test_token_requests_that_make_no_sense_are_refused(registry: Client) -> None:
    alice = registry("alice")
    for body in (
        {"name": "x", "scopes": []},
        {"name": "x", "scopes": ["registry:catalog:*"]},
        {"name": "x", "scopes": ["repository:team/app:own"]},
        {"name": "", "scopes": ["repository:team/app:pull"]},
        {"name": "x\n", "scopes": ["repository:team/app:pull"]},
        {"name": "x", "scopes": ["repository:team/app:pull"], "expires_in": "-1s"},
        {"name": "x", "scopes": ["repository:team/app:pull"], "expires_in": "100y"},
    ):
        response = await alice.post("/api/v1/tokens", json=body)
        assert response.status_code == 400 and error_code(response) == "REQUEST_INVALID", (body, response.text)
    assert (
        await registry(None).post("/api/v1/tokens", json={"name": "x", "scopes": ["repository:a:pull"]})
    ).status_code == 401
    for bad in ("moorage_pat_0123456789abcdef_" + "A" * 43, "moorage_pat_zz", "moorage_pat_"):
        async with httpx.AsyncClient(
            transport=alice._transport, base_url="http://registry.test", auth=("alice", bad)
        ) as c:
            assert (await c.get("/v2/team/app/tags/list")).status_code == 401


@FILESYSTEM
async def test_concurrent_rule_changes_are_all_kept(registry: Client) -> None:
    admin = registry("admin")
    ids = await asyncio.gather(
        *(add_rule(admin, repository=f"r{i}/*", users=["bob"], actions=["pull"]) for i in range(12))
    )
    listed = [r["id"] for r in (await admin.get("/api/v1/access-rules")).json()["rules"] if r["source"] == "api"]
    assert sorted(listed) == sorted(ids)


@FILESYSTEM
async def test_a_repository_deleted_through_the_admin_api_is_in_the_audit_log(registry: Client) -> None:
    admin = registry("admin")
    await push_image(admin, "team/gone", "v1")
    assert (await admin.delete("/api/v1/repositories/team/gone")).status_code == 202
    entry = (await admin.get("/api/v1/audit")).json()["entries"][0]
    assert (entry["action"], entry["target"], entry["actor"]) == ("repository.delete", "team/gone", "admin")
    assert entry["detail"]["tags"] == 1
