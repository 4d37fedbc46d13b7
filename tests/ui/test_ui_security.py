"""The UI as an attacker sees it: who sees what through every page, sessions (fixation, expiry, sign-out), CSRF on
every form, cookies, redirects, escaping, and malformed forms."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry import paths
from registry.store.registry import Registry
from registry.ui.sessions import SESSION_COOKIE, Sessions, _key
from tests.api.conftest import make_settings
from tests.api.helpers import OCI_MANIFEST, push_blob
from tests.api.test_proxy_upstream import FakeUpstream
from tests.ui.conftest import (
    PASSWORD,
    UiFactory,
    as_user,
    auth_sections,
    csrf_of,
    indexed,
    post_form,
    sign_in,
    text_of,
)
from tests.ui.test_ui_pages import push_rich_image

CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
REPOSITORIES = ("team/app", "secret/app", "public/app", "other/app")
VISIBLE = {
    None: {"public/app"},
    "carol": {"public/app"},
    "bob": {"team/app", "public/app"},
    "alice": {"team/app", "secret/app", "public/app"},
    "root": set(REPOSITORIES),
}


async def filled(ui_factory: UiFactory, htpasswd: Path, **auth: Any) -> httpx.AsyncClient:
    ui = await ui_factory(auth_sections(htpasswd, **auth))
    root = {"Authorization": httpx.BasicAuth("root", PASSWORD)._auth_header}

    async def push() -> None:
        for name in REPOSITORIES:
            await push_rich_image(ui, name, "1.0", **{"com.example.word": "needle"})
        for name in REPOSITORIES:
            await indexed(ui, name, root)

    await as_user(ui, "root", push)
    return ui


def listed(page: httpx.Response) -> set[str]:
    return set(re.findall(r'class="repository-link" href="/ui/r/([^"]+)"', page.text))


@pytest.mark.parametrize("user", [None, "carol", "bob", "alice", "root"])
async def test_no_page_shows_a_repository_the_user_may_not_pull(
    ui_factory: UiFactory, htpasswd: Path, user: str | None
) -> None:
    ui = await filled(ui_factory, htpasswd)
    if user is not None:
        signed = await sign_in(ui, user)
        assert signed.status_code == 303, signed.text
    visible = VISIBLE[user]
    for params in ({}, {"q": "app"}, {"q": "label:com.example.word=needle"}, {"sort": "size"}, {"q": "secret"}):
        page = await ui.get("/ui/", params=params)
        assert page.status_code == 200
        expected = {n for n in visible if "q" not in params or params["q"] != "secret" or n.startswith("secret")}
        assert listed(page) == expected, (params, user)
    storage = await ui.get("/ui/storage")
    assert storage.status_code == 200
    shown = set(re.findall(r'<tr class="usage"><td><a href="/ui/r/([^"]+)"', storage.text))
    assert shown == visible
    for name in REPOSITORIES:
        page = await ui.get(f"/ui/r/{name}")
        digest = (await as_user(ui, "root", lambda n=name: ui.get(f"/v2/{n}/manifests/1.0"))).headers[
            "docker-content-digest"
        ]
        image = await ui.get(f"/ui/r/{name}/-/images/{digest}")
        if name in visible:
            assert page.status_code == 200 and image.status_code == 200
        elif user is None:
            # Anonymous is asked to sign in, for a private repository as for one that does not exist.
            assert page.status_code == image.status_code == 303 == (await ui.get("/ui/r/no/such")).status_code
        else:
            # Not "forbidden": a page never tells a private repository from one that does not exist.
            assert page.status_code == 404 and image.status_code == 404, (name, user)
            assert name.split("/")[0] + "/app" in text_of(page)  # the name asked for, not what it holds
            assert "needle" not in page.text and digest not in page.text
            for body in (page.text, image.text):
                assert (await ui.get("/ui/r/no/such")).text.replace("no/such", name) == body or "404" in body


async def test_without_a_rule_for_anonymous_every_page_asks_to_sign_in(ui_factory: UiFactory, htpasswd: Path) -> None:
    sections = auth_sections(htpasswd)
    sections["access"] = [rule for rule in sections["access"] if "anonymous" not in rule["users"]]
    ui = await ui_factory(sections)
    for path in ("/ui/", "/ui/storage", "/ui/r/team/app", "/ui/r/team/app/-/images/sha256:" + "a" * 64):
        response = await ui.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"].startswith("/ui/login?next=")
    # A header the API would accept does nothing here: pages know only their session.
    basic = await ui.get("/ui/", auth=("root", PASSWORD))
    assert basic.status_code == 303


async def test_sign_in_and_out(ui_factory: UiFactory, htpasswd: Path) -> None:
    ui = await filled(ui_factory, htpasswd)
    wrong = await sign_in(ui, "alice", "wrong password")
    assert wrong.status_code == 401 and 'id="login-error"' in wrong.text
    assert SESSION_COOKIE not in ui.cookies
    signed = await sign_in(ui, "alice", next="/ui/r/team/app")
    assert signed.status_code == 303 and signed.headers["location"] == "/ui/r/team/app"
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Path=/ui" in cookie
    assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
    page = await ui.get("/ui/r/team/app")
    assert '<span id="signed-in-as" title="Signed in">alice</span>' in page.text
    stolen = ui.cookies[SESSION_COOKIE]
    out = await post_form(ui, "/ui/", "/ui/logout")
    assert out.status_code == 303 and out.headers["location"] == "/ui/login?signed_out=1"
    assert (await ui.get("/ui/")).status_code == 200 and listed(await ui.get("/ui/")) == VISIBLE[None]
    # The old cookie names nobody any more, on any replica: the record is gone from storage.
    ui.cookies.set(SESSION_COOKIE, stolen, domain="registry.test", path="/ui")
    replay = await ui.get("/ui/r/secret/app")
    assert replay.status_code == 303 and replay.headers["location"].endswith("&expired=1")


async def test_the_session_cookie_is_secure_under_tls(ui_factory: UiFactory, htpasswd: Path) -> None:
    ui = await ui_factory(auth_sections(htpasswd), https=True)
    signed = await sign_in(ui, "alice")
    assert signed.status_code == 303
    assert "Secure" in signed.headers["set-cookie"]


async def test_signing_in_never_keeps_a_planted_session(ui_factory: UiFactory, htpasswd: Path) -> None:
    ui = await filled(ui_factory, htpasswd)
    attacker = await ui_factory(auth_sections(htpasswd))
    # A session the attacker holds, planted in the victim's browser before the victim signs in.
    assert (await sign_in(attacker, "carol")).status_code == 303
    planted = attacker.cookies[SESSION_COOKIE]
    ui.cookies.set(SESSION_COOKIE, planted, domain="registry.test", path="/ui")
    signed = await sign_in(ui, "alice")
    assert signed.status_code == 303
    new = re.search(rf"{SESSION_COOKIE}=([^;]+)", signed.headers["set-cookie"]).group(1)  # type: ignore[union-attr]
    assert new != planted
    # The attacker's cookie did not become alice's session (and was ended).
    assert listed(await attacker.get("/ui/")) == VISIBLE[None]
    # A made-up cookie names nobody.
    ui.cookies.set(SESSION_COOKIE, secrets.token_urlsafe(32), domain="registry.test", path="/ui")
    made_up = await ui.get("/ui/r/secret/app")
    assert made_up.status_code == 303 and "signed-in-as" not in made_up.text


async def test_an_expired_session_asks_to_sign_in_again(
    ui_factory: UiFactory, htpasswd: Path, storage_config: dict[str, Any]
) -> None:
    sections = auth_sections(htpasswd)
    sections["access"] = [rule for rule in sections["access"] if "anonymous" not in rule["users"]]
    ui = await ui_factory(sections)
    assert (await sign_in(ui, "alice")).status_code == 303
    record = Path(storage_config["filesystem"]["root"]) / paths.ui_session(_key(ui.cookies[SESSION_COOKIE]))
    body = json.loads(record.read_text())
    record.write_text(json.dumps({**body, "expires": body["created"] - 1}))
    response = await ui.get("/ui/r/team/app")
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login?next=%2Fui%2Fr%2Fteam%2Fapp&expired=1"
    assert f'{SESSION_COOKIE}=""' in response.headers["set-cookie"] and not record.exists()
    login = await ui.get(response.headers["location"])
    assert 'id="expired"' in login.text


async def test_a_user_removed_from_htpasswd_is_signed_out(ui_factory: UiFactory, htpasswd: Path) -> None:
    ui = await filled(ui_factory, htpasswd)
    assert (await sign_in(ui, "alice")).status_code == 303
    assert "secret/app" in listed(await ui.get("/ui/"))
    remove_user(htpasswd, "alice")
    for _ in range(40):  # the file is re-read within a second of a change
        if listed(await ui.get("/ui/")) == VISIBLE[None]:
            break
        await asyncio.sleep(0.1)
    assert listed(await ui.get("/ui/")) == VISIBLE[None]


def remove_user(htpasswd: Path, user: str) -> None:
    lines = htpasswd.read_text().splitlines()
    htpasswd.write_text("".join(line + "\n" for line in lines if not line.startswith(user + ":")))


FORMS = {
    "login": ("/ui/login", {"username": "alice", "password": PASSWORD}),
    "logout": ("/ui/logout", {}),
    "delete": ("/ui/r/team/app/-/tags/1.0/delete", {}),
    "gc": ("/ui/storage/gc", {}),
}


@pytest.mark.parametrize("form", sorted(FORMS))
async def test_every_form_needs_its_csrf_token(ui_factory: UiFactory, htpasswd: Path, form: str) -> None:
    ui = await filled(ui_factory, htpasswd)
    other = await ui_factory(auth_sections(htpasswd))
    assert (await sign_in(ui, "root")).status_code == 303
    assert (await sign_in(other, "root")).status_code == 303
    action, fields = FORMS[form]
    if form == "delete":
        fields = {
            "digest": (await ui.get("/v2/team/app/manifests/1.0", auth=("root", PASSWORD))).headers[
                "docker-content-digest"
            ]
        }
    mine = csrf_of(await ui.get("/ui/storage"))
    someone_elses = csrf_of(await other.get("/ui/storage"))
    for token in (None, "", "0" * 64, someone_elses, mine[:-1]):
        data = {**fields, **({"csrf": token} if token is not None else {})}
        refused = await ui.post(action, data=data)
        assert refused.status_code == 403, (form, token, refused.status_code)
        assert 'id="error"' in refused.text
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        refused = await ui.post(action, data={**fields, "csrf": mine}, headers=headers)
        assert refused.status_code == 403, (form, headers)
    assert (await ui.get("/v2/team/app/tags/list", auth=("root", PASSWORD))).json()["tags"] == ["1.0"]
    accepted = await ui.post(action, data={**fields, "csrf": mine}, headers={"Origin": "http://registry.test"})
    assert accepted.status_code in (200, 303), (form, accepted.status_code, accepted.text[:500])


async def test_gc_dry_runs_are_for_admins(ui_factory: UiFactory, htpasswd: Path) -> None:
    ui = await filled(ui_factory, htpasswd)
    assert (await sign_in(ui, "alice")).status_code == 303
    storage = await ui.get("/ui/storage")
    assert 'id="gc-dry-run"' not in storage.text and 'id="gc-last"' not in storage.text
    refused = await ui.post("/ui/storage/gc", data={"csrf": csrf_of(storage)})
    assert refused.status_code == 403
    await post_form(ui, "/ui/", "/ui/logout")
    assert (await sign_in(ui, "root")).status_code == 303
    report = await post_form(ui, "/ui/storage", "/ui/storage/gc")
    assert report.status_code == 200 and 'id="gc-report"' in report.text


async def test_buttons_only_for_what_the_user_may_do(ui_factory: UiFactory, htpasswd: Path) -> None:
    ui = await filled(ui_factory, htpasswd)
    assert (await sign_in(ui, "bob")).status_code == 303
    page = await ui.get("/ui/r/team/app")
    assert page.status_code == 200 and "delete-tag" not in page.text
    confirm = await ui.get("/ui/r/team/app/-/tags/1.0/delete")
    assert confirm.status_code == 403 and 'data-code="DENIED"' in confirm.text
    refused = await ui.post("/ui/r/team/app/-/tags/1.0/delete", data={"csrf": csrf_of(page)})
    assert refused.status_code == 403
    assert (await ui.get("/v2/team/app/tags/list", auth=("root", PASSWORD))).json()["tags"] == ["1.0"]
    await post_form(ui, "/ui/", "/ui/logout")
    assert (await sign_in(ui, "alice")).status_code == 303
    assert "delete-tag" in (await ui.get("/ui/r/team/app")).text


async def test_token_forms_without_auth_are_not_found(ui_factory: UiFactory) -> None:
    """Laptop mode (no auth): no personal tokens, so their forms are a 404 page like their page (an assertion made
    them a 500)."""
    ui = await ui_factory()
    csrf = csrf_of(await ui.get("/ui/storage"))
    assert (await ui.get("/ui/tokens")).status_code == 404
    created = await ui.post("/ui/tokens", data={"csrf": csrf, "name": "t", "scopes": "repository:a:pull"})
    revoked = await ui.post("/ui/tokens/abc/revoke", data={"csrf": csrf})
    assert (created.status_code, revoked.status_code) == (404, 404), (created.text[:300], revoked.text[:300])


async def test_the_delete_page_needs_pull_too(ui_factory: UiFactory, htpasswd: Path) -> None:
    """A user who may delete but not pull (the API refuses them the tag and the tags list) learns from the
    confirmation page neither the tag's digest nor whether the tag exists."""
    sections = auth_sections(htpasswd)
    sections["access"].append({"repository": "team/**", "users": ["carol"], "actions": ["delete"]})
    ui = await ui_factory(sections)
    root = httpx.BasicAuth("root", PASSWORD)
    await as_user(ui, "root", lambda: push_rich_image(ui, "team/app", "1.0"))
    digest = (await ui.head("/v2/team/app/manifests/1.0", auth=root)).headers["Docker-Content-Digest"]
    assert (await ui.head("/v2/team/app/manifests/1.0", auth=("carol", PASSWORD))).status_code == 403
    assert (await sign_in(ui, "carol")).status_code == 303
    csrf = csrf_of(await ui.get("/ui/"))
    for tag in ("1.0", "no-such-tag"):
        for page in (
            await ui.get(f"/ui/r/team/app/-/tags/{tag}/delete"),
            await ui.post(f"/ui/r/team/app/-/tags/{tag}/delete", data={"csrf": csrf, "digest": digest}),
        ):
            assert page.status_code == 403 and 'data-code="DENIED"' in page.text, (tag, page.status_code)
            assert digest not in page.text and digest.removeprefix("sha256:")[:12] not in page.text
    assert (await ui.get("/v2/team/app/tags/list", auth=root)).json()["tags"] == ["1.0"]


@pytest.mark.parametrize(
    "target", ["//evil.example/x", "https://evil.example/ui/", "/ui/\\evil", "/v2/_catalog", "javascript:alert(1)"]
)
async def test_sign_in_never_redirects_off_the_ui(ui_factory: UiFactory, htpasswd: Path, target: str) -> None:
    ui = await ui_factory(auth_sections(htpasswd))
    signed = await sign_in(ui, "alice", next=target)
    assert signed.status_code == 303 and signed.headers["location"] == "/ui/"


async def test_failed_sign_ins_are_rate_limited(ui_factory: UiFactory, htpasswd: Path) -> None:
    ui = await ui_factory(auth_sections(htpasswd, rate_limit={"failures": 3, "window": 60}))
    for _ in range(3):
        assert (await sign_in(ui, "alice", "wrong")).status_code == 401
    limited = await sign_in(ui, "alice")
    assert limited.status_code == 429 and "retry-after" in limited.headers and 'id="login-error"' in limited.text


async def test_template_output_is_escaped(ui_factory: UiFactory) -> None:
    ui = await ui_factory()
    script = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    await push_rich_image(ui, "team/app", "1.0", **{"org.opencontainers.image.description": script, "x": script})
    await indexed(ui, "team/app")
    digest = (await ui.get("/v2/team/app/manifests/1.0")).headers["docker-content-digest"]
    for path in ("/ui/", "/ui/?q=" + "<script>", "/ui/r/team/app", f"/ui/r/team/app/-/images/{digest}"):
        page = await ui.get(path)
        assert page.status_code in (200, 400), path
        assert "<script>alert" not in page.text and "<img src=x" not in page.text, path
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in (await ui.get("/ui/r/team/app")).text


async def test_pages_carry_security_headers(ui_factory: UiFactory) -> None:
    ui = await ui_factory()
    for path in ("/ui/", "/ui/storage", "/ui/r/no/such"):
        page = await ui.get(path)
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert page.headers["x-content-type-options"] == "nosniff" and page.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"csrf=a&csrf=b", {"Content-Type": "application/x-www-form-urlencoded"}, 400),
        (b"x=" + b"a" * 10_000, {"Content-Type": "application/x-www-form-urlencoded"}, 413),
        (b'{"csrf": "a"}', {"Content-Type": "application/json"}, 415),
        (b"csrf=%ff%fe", {"Content-Type": "application/x-www-form-urlencoded"}, 400),
        (b"csrf=a", {"Content-Type": "text/plain"}, 415),
        (b"&".join(b"f%d=1" % i for i in range(100)), {"Content-Type": "application/x-www-form-urlencoded"}, 400),
    ],
)
async def test_malformed_forms_are_refused(
    ui_factory: UiFactory, body: bytes, headers: dict[str, str], status: int
) -> None:
    ui = await ui_factory()
    response = await ui.post("/ui/logout", content=body, headers=headers)
    assert response.status_code == status and 'id="error"' in response.text


async def test_layer_sharing_counts_only_repositories_the_user_may_pull(ui_factory: UiFactory, htpasswd: Path) -> None:
    ui = await filled(ui_factory, htpasswd)  # the four repositories share their base layer
    digest = (await ui.get("/v2/team/app/manifests/1.0", auth=("root", PASSWORD))).headers["docker-content-digest"]
    counts = {}
    for user in ("bob", "alice", "root"):
        assert (await sign_in(ui, user)).status_code == 303
        page = await ui.get(f"/ui/r/team/app/-/images/{digest}")
        counts[user] = re.findall(r'class="shared">([^<]*)<', page.text)[0]
    assert counts == {
        "bob": "1 other repository",  # public/app; not secret/app nor other/app
        "alice": "2 other repositories",
        "root": "3 other repositories",
    }


async def test_expired_session_records_are_pruned(
    ui_factory: UiFactory, htpasswd: Path, storage_config: dict[str, Any]
) -> None:
    ui = await ui_factory(auth_sections(htpasswd))
    assert (await sign_in(ui, "alice")).status_code == 303
    live = Path(storage_config["filesystem"]["root"]) / paths.ui_session(_key(ui.cookies[SESSION_COOKIE]))
    stale = live.with_name("0" * 64)
    stale.write_text(live.read_text())
    old = time.time() - 9 * 3600  # past the 8 h default lifetime
    os.utime(stale, (old, old))
    registry = Registry.from_settings(make_settings(storage_config))
    try:
        assert await Sessions(registry.backend, 8 * 3600).prune() == 1
    finally:
        await registry.aclose()
    assert live.exists() and not stale.exists()
    assert 'id="signed-in-as"' in (await ui.get("/ui/")).text  # the live session is untouched


async def test_a_cached_image_never_shows_a_config_its_repository_does_not_hold(
    ui_factory: UiFactory, htpasswd: Path
) -> None:
    """A cached manifest names whatever config its upstream wrote: one naming the digest of another repository's
    private config (learned somewhere) must not have that config shown on the cached image's page."""
    upstream = FakeUpstream()
    try:
        sections = auth_sections(htpasswd)
        sections["access"].append({"repository": "up/**", "users": ["carol"], "actions": ["pull"]})
        sections["proxy"] = {"upstreams": [{"name": "up", "url": upstream.url, "prefix": "up", "attempts": 1}]}
        ui = await ui_factory(sections)
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": ["DB_PASSWORD=hunter2"]}})
        config_digest = await as_user(ui, "alice", lambda: push_blob(ui, "secret/app", config.encode()))
        descriptor = {"mediaType": CONFIG_TYPE, "digest": config_digest, "size": len(config)}
        forged = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": descriptor, "layers": []})
        digest = upstream.manifest("lure/app", "v1", forged.encode())
        pull = lambda: ui.get("/v2/up/lure/app/manifests/v1", headers={"Accept": OCI_MANIFEST})  # noqa: E731
        assert (await as_user(ui, "carol", pull)).status_code == 200
        await sign_in(ui, "carol")
        page = await ui.get(f"/ui/r/up/lure/app/-/images/{digest}")
        assert page.status_code == 200, page.text
        assert "hunter2" not in page.text and "DB_PASSWORD" not in page.text
        assert "not in this repository yet" in text_of(page)
    finally:
        upstream.close()
