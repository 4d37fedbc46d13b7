"""The UI under attack: path tricks, forged cursors and cookies, CSRF token variants, sign-in inputs, oversized forms,
delete races and switches, static files, and what every response carries. Each test states what must hold (the
review's findings among them: huge and malformed cursors, a superscript page number, a wrong method, a tag moved
after its confirmation, an Origin of another scheme)."""

from __future__ import annotations

import base64
import logging
import re
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry import paths
from registry.ui.sessions import SESSION_COOKIE, _key
from registry.ui.setup import TEMPLATES
from tests.api.helpers import push_image
from tests.auth.test_htpasswd import bcrypt_entry
from tests.ui.conftest import PASSWORD, UiFactory, auth_sections, csrf_of, indexed, sign_in, text_of
from tests.ui.test_ui_security import VISIBLE, filled, listed

ROOT = {"Authorization": httpx.BasicAuth("root", PASSWORD)._auth_header}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def tolerant(ui: httpx.AsyncClient) -> httpx.AsyncClient:
    """A second browser on the same app that sees a 500 as a response instead of the app's exception."""
    app = ui._transport.app  # type: ignore[attr-defined]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url=str(ui.base_url))


@pytest.fixture
async def browser(ui_factory: UiFactory, htpasswd: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The four repositories of test_ui_security.filled, browsed by a client that reports 500s as responses."""
    ui = await filled(ui_factory, htpasswd)
    client = tolerant(ui)
    yield client
    await client.aclose()


def cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def is_error_page(response: httpx.Response, status: int) -> bool:
    return (
        response.status_code == status
        and 'id="error"' in response.text
        and response.headers["content-type"].startswith("text/html")
    )


async def digest_of(client: httpx.AsyncClient, name: str, tag: str = "1.0") -> str:
    response = await client.get(f"/v2/{name}/manifests/{tag}", headers=ROOT)
    assert response.status_code == 200, (name, response.text)
    return str(response.headers["docker-content-digest"])


# Path tricks.


async def test_path_tricks_never_reach_a_private_repository(browser: httpx.AsyncClient) -> None:
    ui = browser
    secret = await digest_of(ui, "secret/app")
    public = await digest_of(ui, "public/app")
    manifest = (await ui.get("/v2/secret/app/manifests/1.0", headers=ROOT)).json()
    secret_layer = manifest["layers"][-1]["digest"]  # a layer only secret/app holds
    assert (await sign_in(ui, "bob")).status_code == 303
    missing = await ui.get("/ui/r/no/such")
    assert is_error_page(missing, 404)
    for path, status in (
        # A digest present only in another repository: the store checks this repository's revision link.
        (f"/ui/r/public/app/-/images/{secret}", 404),
        (f"/ui/r/team/app/-/images/{secret}", 404),
        (f"/ui/r/team/app/-/images/{secret_layer}", 404),  # a blob, not a manifest, and not even here
        (f"/ui/r/secret/app/-/images/{public}", 404),
        # Prefixes and extensions of a private name look like any missing repository.
        ("/ui/r/secret", 404),
        ("/ui/r/secret/ap", 404),
        ("/ui/r/secret/app/extra", 404),
        ("/ui/r/secret/app", 404),
        # Encoded slashes decode to the same name, checked the same way.
        ("/ui/r/secret%2Fapp", 404),
        ("/ui/r/public%2Fapp%2F-%2Fimages%2F" + secret, 404),
        # Dot segments, empty components, `-` components, uppercase and overlong names are not names at all.
        ("/ui/r/public/app/%2e%2e/%2e%2e/secret/app", 400),
        ("/ui/r/public/%2e%2e/secret/app", 400),
        ("/ui/r/team//app", 400),
        ("/ui/r//secret/app", 400),
        ("/ui/r/secret/app/", 400),
        ("/ui/r/team/-/app", 400),
        ("/ui/r/-/app", 400),
        ("/ui/r/SECRET/APP", 400),
        ("/ui/r/" + "a/" * 200 + "b", 400),
        ("/ui/r/%ff", 400),
        ("/ui/r/public/app/-/images/x/-/images/" + secret, 400),
        ("/ui/r/team/app/-/images/sha256:" + "A" * 64, 404),
        ("/ui/r/team/app/-/images/sha256:%00", 404),
        ("/ui/r/team/app/-/images/" + "x" * 5000, 404),
    ):
        response = await ui.get(path)
        assert is_error_page(response, status), (path, response.status_code)
        if status == 404 and re.search(r"/-/images/sha256:[0-9a-f]{64}$", urllib.parse.unquote(path)):
            # The same page as for a digest nothing holds: the digest asked for is echoed, nothing else.
            name, _, digest = urllib.parse.unquote(path.removeprefix("/ui/r/")).partition("/-/images/")
            nowhere = await ui.get(f"/ui/r/{name}/-/images/sha256:{'0' * 64}")
            assert response.text == nowhere.text.replace("sha256:" + "0" * 64, digest), path
        elif status == 404 and "/-/" not in path:
            name = urllib.parse.unquote(path.removeprefix("/ui/r/"))
            assert response.text == missing.text.replace("no/such", name), path  # indistinguishable
        else:
            shown = text_of(response).replace(urllib.parse.unquote(path.removeprefix("/ui/r/")), "")  # the echo
            assert secret not in shown and "secret/app" not in shown and "needle" not in shown, path
    # A tag of a private repository through a public one's path: the tag is one path segment, never a path.
    token = csrf_of(await ui.get("/ui/storage"))
    for path in (
        "/ui/r/public/app/-/tags/..%2F..%2Fsecret%2Fapp%2F-%2Ftags%2F1.0/delete",
        "/ui/r/public/app/-/tags/%2e%2e/delete",
        "/ui/r/secret/app/-/tags/1.0/delete",
    ):
        for method in ("GET", "POST"):
            response = await ui.request(method, path, data={"csrf": token} if method == "POST" else None)
            assert response.status_code in (400, 403, 404) and 'id="error"' in response.text, (method, path)
    assert (await ui.get("/v2/secret/app/tags/list", headers=ROOT)).json()["tags"] == ["1.0"]


# Cursors and queries.


@pytest.mark.parametrize(
    "raw",
    [
        '[NaN,"a"]',
        '[Infinity,"a"]',
        '[-Infinity,"a"]',
        '[1e999,"a"]',
        '[-1e308,"a"]',
        '{"a":1,"b":2}',  # a two-key object unpacks into two names: harmless
        '"ab"',
        "[null,null]",
        '[[1],"a"]',
        "[1,2]",
        '[true,"a"]',
        '["a","b","c"]',
        "[]",
        "42",
        "null",
        '["a","\\u0000"]',
        '["secret/app","secret/app"]',
        '["","secret/"]',
    ],
)
async def test_forged_cursors_are_refused_or_still_filtered(browser: httpx.AsyncClient, raw: str) -> None:
    ui = browser
    assert (await sign_in(ui, "bob")).status_code == 303
    for sort in ("name", "size", "pushed", "relevance"):
        params = {"after": cursor(raw), "sort": sort, **({"q": "app"} if sort == "relevance" else {})}
        response = await ui.get("/ui/", params=params)
        assert response.status_code in (200, 400), (raw, sort, response.status_code)
        if response.status_code == 400:
            assert is_error_page(response, 400)
        assert listed(response) <= VISIBLE["bob"], (raw, sort)
        assert "secret/app" not in text_of(response), (raw, sort)
    for junk in ("%ff", "a" * 3000, "====", "é", "WyJhIiwiYiJd" * 200):
        response = await ui.get("/ui/?after=" + junk)
        assert is_error_page(response, 400), junk


@pytest.mark.parametrize("sort", ["size", "pushed", "relevance"])
async def test_a_cursor_with_a_huge_number_is_an_error_page(ui_factory: UiFactory, sort: str) -> None:
    ui = tolerant(await ui_factory())
    params = {"sort": sort, "after": cursor("[1" + "0" * 30 + ',"a"]'), **({"q": "a"} if sort == "relevance" else {})}
    response = await ui.get("/ui/", params=params)
    await ui.aclose()
    assert is_error_page(response, 400), response.status_code


async def test_a_cursor_with_a_lone_surrogate_is_an_error_page(ui_factory: UiFactory) -> None:
    ui = tolerant(await ui_factory())
    response = await ui.get("/ui/", params={"after": cursor('["\\ud800","\\ud800"]')})
    await ui.aclose()
    assert is_error_page(response, 400), response.status_code


async def test_search_query_edge_cases(browser: httpx.AsyncClient) -> None:
    ui = browser
    assert (await sign_in(ui, "bob")).status_code == 303
    for query, status in (
        ("\x00", 200),
        ("a\x00b", 200),
        ("label:\x00=\x00", 200),
        ("type:\x00", 200),
        ("tag:[", 200),
        ("tag:*", 200),
        ("\u202eppa", 200),
        ("应用 🚀", 200),
        ("\\", 200),
        ("%", 200),
        ("_", 200),
        ("secret", 200),
        ("label:com.example.word=needle", 200),
        (" ".join(["app"] * 16), 200),
        (" ".join(["app"] * 17), 400),
        ("a" * 1025, 400),
        ("é" * 1025, 400),
        ("platform:linux", 400),
        ("label:", 400),
    ):
        response = await ui.get("/ui/", params={"q": query})
        assert response.status_code == status, (query, response.status_code)
        assert listed(response) <= VISIBLE["bob"], query
        assert "secret/app" not in response.text, query
    assert listed(await ui.get("/ui/", params={"q": "%"})) == set()  # LIKE wildcards are literal
    assert (await ui.get("/ui/?q=%ff")).status_code == 200
    for query_string in ("sort=drop", "sort=relevance", "sort=SIZE", "sort="):
        response = await ui.get("/ui/?" + query_string)
        assert response.status_code == 200 and listed(response) == VISIBLE["bob"], query_string
    for query_string in ("q=a&q=b", "sort=size&sort=name", "after=a&after=b", "q=a&q="):
        assert is_error_page(await ui.get("/ui/?" + query_string), 400), query_string
    for query_string in ("page=1&page=2", "page=0", "page=-1", "page=1.5", "page=99999999999999999999", "page= 1"):
        assert is_error_page(await ui.get("/ui/r/team/app?" + query_string), 400), query_string


async def test_a_page_number_in_superscript_is_an_error_page(ui_factory: UiFactory) -> None:
    ui = tolerant(await ui_factory())
    await push_image(ui, "team/app", "1.0")
    await indexed(ui, "team/app")
    response = await ui.get("/ui/r/team/app", params={"page": "²"})
    await ui.aclose()
    assert is_error_page(response, 400), response.status_code


# Sessions and CSRF.


@pytest.mark.parametrize(
    "cookie",
    [
        b"x",
        b"a" * 42,
        b"a" * 44,
        b"." * 43,
        b"../../../../../../etc/passwd",
        b"..%2F..%2F" + b"a" * 33,
        b"/" * 43,
        b"a" * 8000,
        "é".encode() * 43,
        b"\xff\xfe" * 22,
        b"a" * 42 + b"\x00",
    ],
)
async def test_forged_session_cookies_name_nobody(
    ui_factory: UiFactory, htpasswd: Path, storage_config: dict[str, Any], cookie: bytes
) -> None:
    ui = tolerant(await ui_factory(auth_sections(htpasswd)))
    root = Path(storage_config["filesystem"]["root"])
    before = files_under(root)
    for path in ("/ui/", "/ui/storage", "/ui/r/secret/app", "/ui/login"):
        response = await ui.get(path, headers=[(b"Cookie", SESSION_COOKIE.encode() + b"=" + cookie)])
        assert response.status_code in (200, 303, 404, 431), (path, response.status_code)
        assert "signed-in-as" not in response.text
    assert (
        await ui.post("/ui/logout", headers=[(b"Cookie", SESSION_COOKIE.encode() + b"=" + cookie)])
    ).status_code == 403
    # Nothing was written, or read, outside the sessions' directory because of a cookie.
    after = files_under(root)
    assert not {p for p in after - before if "session" in str(p) or "passwd" in str(p)}
    await ui.aclose()


def files_under(root: Path) -> set[Path]:
    return set(root.rglob("*")) if root.exists() else set()


def add_user(htpasswd: Path, user: str, password: str) -> None:
    htpasswd.write_text(htpasswd.read_text() + bcrypt_entry(user, password) + "\n")


def test_a_session_record_key_is_always_a_hash_under_the_sessions_directory() -> None:
    for secret in ("../../x", "/etc/passwd", "a" * 43, "%2e%2e"):
        key = _key(secret)
        assert re.fullmatch(r"[0-9a-f]{64}", key)
        assert ".." not in paths.ui_session(key) and paths.ui_session(key).endswith(key)


async def test_two_session_cookies_in_one_header(ui_factory: UiFactory, htpasswd: Path) -> None:
    ui = await filled(ui_factory, htpasswd)
    assert (await sign_in(ui, "alice")).status_code == 303
    secret = ui.cookies[SESSION_COOKIE]
    ui.cookies.clear()
    raw = tolerant(ui)
    for header in (
        f"{SESSION_COOKIE}=junk; {SESSION_COOKIE}={secret}",
        f"{SESSION_COOKIE}={secret}; {SESSION_COOKIE}=junk",
    ):
        response = await raw.get("/ui/r/secret/app", headers={"Cookie": header})
        # One of them is taken, never a mix, never a 500; whichever it is, it names alice or nobody.
        assert response.status_code in (200, 303), header
    await raw.aclose()


async def test_sign_out_ends_the_session_on_every_replica(ui_factory: UiFactory, htpasswd: Path) -> None:
    first = await filled(ui_factory, htpasswd)
    second = await ui_factory(auth_sections(htpasswd))
    assert (await sign_in(first, "alice")).status_code == 303
    secret = first.cookies[SESSION_COOKIE]
    second.cookies.set(SESSION_COOKIE, secret, domain="registry.test", path="/ui")
    await indexed(second, "secret/app", ROOT)
    assert (await second.get("/ui/r/secret/app")).status_code == 200  # the other replica knows the session
    token = csrf_of(await first.get("/ui/storage"))
    assert (await first.post("/ui/logout", data={"csrf": token})).status_code == 303
    replay = await second.get("/ui/r/secret/app")
    assert replay.status_code == 303 and replay.headers["location"].endswith("&expired=1")


async def test_csrf_token_variants_are_refused(ui_factory: UiFactory, htpasswd: Path) -> None:
    ui = await filled(ui_factory, htpasswd)
    action = "/ui/r/team/app/-/tags/1.0/delete"
    before_sign_in = csrf_of(await ui.get("/ui/login"))  # bound to the pre-sign-in nonce
    assert (await sign_in(ui, "alice")).status_code == 303
    old_session = csrf_of(await ui.get("/ui/storage"))
    assert (await ui.post("/ui/logout", data={"csrf": old_session})).status_code == 303
    assert (await sign_in(ui, "alice")).status_code == 303
    token = csrf_of(await ui.get(action))
    refused: list[tuple[dict[str, str], dict[str, str], str]] = [
        ({"csrf": before_sign_in}, {}, ""),
        ({"csrf": old_session}, {}, ""),  # from before sign-out, after signing in again
        ({"csrf": token.upper()}, {}, ""),
        ({"csrf": " " + token}, {}, ""),
        ({"csrf": token + " "}, {}, ""),
        ({"csrf": token + "\n"}, {}, ""),
        ({"csrf": token + "00"}, {}, ""),
        ({}, {}, "?csrf=" + token),  # in the query string instead of the body
        ({"csrf": token}, {"Origin": "null"}, ""),
        ({"csrf": token}, {"Origin": "http://registry.test.evil.example"}, ""),
        ({"csrf": token}, {"Origin": "http://registry.test:8080"}, ""),
        ({"csrf": token}, {"Sec-Fetch-Site": "same-site"}, ""),
        ({"csrf": token}, {"Sec-Fetch-Site": "cross-site", "Origin": "http://registry.test"}, ""),
    ]
    for data, headers, query in refused:
        response = await ui.post(action + query, data=data, headers=headers)
        assert is_error_page(response, 403), (data, headers, query, response.status_code)
    assert (await ui.get("/v2/team/app/tags/list", headers=ROOT)).json()["tags"] == ["1.0"]
    digest = await digest_of(ui, "team/app")
    done = await ui.post(action, data={"csrf": token, "digest": digest}, headers={"Sec-Fetch-Site": "same-origin"})
    assert done.status_code == 303


# Signing in.


async def test_sign_in_inputs_are_neither_echoed_nor_logged_raw(
    ui_factory: UiFactory, htpasswd: Path, caplog: pytest.LogCaptureFixture
) -> None:
    add_user(htpasswd, "dave", "pass:with:colons")
    ui = await ui_factory(auth_sections(htpasswd))
    caplog.set_level(logging.INFO)
    secret_password = "Hunter2-never-shown"
    for username, password in (
        ("eve\r\nWARNING forged log line", secret_password),
        ("alice", secret_password),
        ("alice", "mrg_" + secret_password),  # looks like a CI token
        ("x" * 5000, secret_password),
        ("<script>", secret_password),
        ("alice\x00", PASSWORD),
    ):
        response = await sign_in(ui, username, password)
        assert response.status_code == 401, (username[:20], response.status_code)
        assert secret_password not in response.text and 'id="login-error"' in response.text
        assert "<script>" not in response.text
        assert SESSION_COOKIE not in ui.cookies
    messages = [record.getMessage() for record in caplog.records]
    assert not any(secret_password in message for message in messages)
    assert not any("\n" in message or "\r" in message for message in messages if "eve" in message)
    assert any("eve\\r\\nWARNING" in message for message in messages)
    # A password with colons is a password (the UI never splits it as Basic credentials are).
    assert (await sign_in(ui, "dave", "pass:with:colons")).status_code == 303
    # Credentials in the login page's URL do nothing, and are not echoed.
    await ui.post("/ui/logout", data={"csrf": csrf_of(await ui.get("/ui/"))})
    page = await ui.get("/ui/login", params={"username": "alice", "password": PASSWORD})
    assert page.status_code == 200 and PASSWORD not in page.text and SESSION_COOKIE not in ui.cookies


@pytest.mark.parametrize(
    "target",
    [
        "/ui/..//evil.example",
        "/ui/../..//evil.example",
        "/ui/%2F%2Fevil.example",
        "/ui/\t//evil.example",
        "/\\evil.example",
        "/ui/\\\\evil.example",
        "/ui//evil.example",
        "/ui/\r\nSet-Cookie: planted=1",
        "\t/ui/",
        "/ui/@evil.example",
        "https:/ui/",
        "/ui/\x00",
        "",
    ],
)
async def test_sign_in_lands_on_this_site(ui_factory: UiFactory, htpasswd: Path, target: str) -> None:
    ui = await ui_factory(auth_sections(htpasswd))
    signed = await sign_in(ui, "alice", next=target)
    assert signed.status_code == 303
    location = signed.headers["location"]
    assert "\r" not in location and "\n" not in location and "planted" not in ui.cookies
    resolved = urllib.parse.urlsplit(urllib.parse.urljoin("http://registry.test/ui/login", location))
    assert resolved.scheme == "http" and resolved.netloc == "registry.test", location
    # The path a browser lands on does not send it elsewhere either.
    landed = await ui.get(location)
    if landed.status_code in (301, 302, 303, 307, 308):
        again = urllib.parse.urlsplit(urllib.parse.urljoin(str(landed.url), landed.headers["location"]))
        assert again.netloc == "registry.test", landed.headers["location"]


# Oversized and slow forms.


async def test_oversized_forms_are_refused_without_a_500(ui_factory: UiFactory) -> None:
    ui = tolerant(await ui_factory())

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(1000):
            yield b"a" * 1024

    chunked = await ui.post("/ui/logout", content=chunks(), headers=FORM)
    assert is_error_page(chunked, 413)
    fields = b"&".join(b"f%d=" % i for i in range(5000))[:8000]
    assert is_error_page(await ui.post("/ui/login", content=fields, headers=FORM), 400)
    assert is_error_page(await ui.post("/ui/logout", content=b"=" * 8000, headers=FORM), 403)
    assert is_error_page(await ui.post("/ui/logout", content=b"%" * 8000, headers=FORM), 403)
    await ui.aclose()


# Deleting: races, switches, read-only mode.


async def test_delete_races_and_switches(ui_factory: UiFactory, htpasswd: Path, storage_config: dict[str, Any]) -> None:
    ui = await filled(ui_factory, htpasswd)
    assert (await sign_in(ui, "alice")).status_code == 303
    action = "/ui/r/team/app/-/tags/1.0/delete"
    confirm = await ui.get(action)
    assert confirm.status_code == 200 and 'id="confirm-delete"' in confirm.text
    token = csrf_of(confirm)
    # Another client deletes the tag between the confirmation and the POST: a tidy 404 page.
    deleted = await ui.delete(f"/v2/team/app/manifests/{await digest_of(ui, 'team/app')}", headers=ROOT)
    assert deleted.status_code == 202
    confirmed = re.search(r'name="digest" value="([^"]+)"', confirm.text)
    assert confirmed is not None
    gone = await ui.post(action, data={"csrf": token, "digest": confirmed.group(1)})
    assert is_error_page(gone, 404)
    # Read-only mode, and deletes switched off, on replicas over the same storage: refused, nothing changed.
    sections = auth_sections(htpasswd)
    for extra, status in (
        ({"maintenance": {"read_only": True}}, 503),
        ({"storage": {**storage_config, "delete": False}}, 405),
    ):
        replica = await ui_factory({**sections, **extra})
        assert (await sign_in(replica, "alice")).status_code == 303  # signing in still works
        token = csrf_of(await replica.get("/ui/storage"))
        digest = await digest_of(replica, "secret/app")
        refused = await replica.post("/ui/r/secret/app/-/tags/1.0/delete", data={"csrf": token, "digest": digest})
        assert is_error_page(refused, status), (extra, refused.status_code)
        assert (await replica.get("/v2/secret/app/tags/list", headers=ROOT)).json()["tags"] == ["1.0"]


# Static files.


async def test_static_files_only_serve_the_shipped_assets(ui_factory: UiFactory) -> None:
    ui = await ui_factory()
    for path in (
        "/ui/static/..%2fsettings.py",
        "/ui/static/%2e%2e%2fpages.py",
        "/ui/static/%2e%2e/pages.py",
        "/ui/static/templates",
        "/ui/static/ui.css%00",
        "/ui/static/UI.CSS",
        "/ui/static/__init__.py",
        "/ui/static/",
    ):
        response = await ui.get(path)
        assert response.status_code == 404, path
        assert "import" not in response.text and "{%" not in response.text, path
    head = await ui.head("/ui/static/ui.css")
    assert head.status_code == 200 and head.content == b"" and head.headers["etag"]
    etag = head.headers["etag"]
    assert (await ui.get("/ui/static/ui.css", headers={"If-None-Match": etag})).status_code == 304
    for other in ('"nope"', "", etag.upper(), etag[1:-1]):
        response = await ui.get("/ui/static/ui.css", headers={"If-None-Match": other})
        assert response.status_code == 200 and response.content, other
    js = await ui.get("/ui/static/ui.js")
    assert (
        js.headers["content-type"].startswith("text/javascript") and js.headers["x-content-type-options"] == "nosniff"
    )


# What each page leaks, and what each response carries.


async def test_the_storage_page_of_a_user_totals_only_their_repositories(browser: httpx.AsyncClient) -> None:
    ui = browser
    totals = {}
    for user in ("bob", "root"):
        assert (await sign_in(ui, user)).status_code == 303
        page = await ui.get("/ui/storage")
        assert page.status_code == 200
        rows = [int(b) for b in re.findall(r'<td class="size" data-bytes="(\d+)"', page.text)]
        logical = int(re.search(r'id="logical-bytes" data-bytes="(\d+)"', page.text).group(1))  # type: ignore[union-attr]
        physical = int(re.search(r'id="physical-bytes" data-bytes="(\d+)"', page.text).group(1))  # type: ignore[union-attr]
        assert logical == sum(rows) and physical <= logical
        totals[user] = (logical, physical, "secret/app" in page.text, 'id="gc-dry-run"' in page.text)
    assert totals["bob"][0] < totals["root"][0] and totals["bob"][1] < totals["root"][1]
    assert totals["bob"][2:] == (False, False) and totals["root"][2:] == (True, True)


SECURED = {"x-frame-options": "DENY", "x-content-type-options": "nosniff", "cache-control": "no-store"}


async def test_every_ui_response_is_secured_and_no_template_has_inline_code(browser: httpx.AsyncClient) -> None:
    ui = browser
    digest = await digest_of(ui, "public/app")
    requests: list[tuple[str, str, Any]] = [
        ("GET", "/ui/", None),
        ("GET", "/ui/?after=junk", None),
        ("GET", "/ui/storage", None),
        ("GET", "/ui/login", None),
        ("GET", "/ui/r/public/app", None),
        ("GET", f"/ui/r/public/app/-/images/{digest}", None),
        ("GET", "/ui/r/secret/app", None),  # 303 to sign in
        ("GET", "/ui/r/BAD", None),
        ("POST", "/ui/logout", b"csrf=x"),
        ("POST", "/ui/logout", b"x=" + b"a" * 9000),
        ("POST", "/ui/login", b"csrf=x&csrf=y"),
    ]
    signed = await sign_in(ui, "root")
    assert SESSION_COOKIE in ui.cookies
    assert "content-security-policy" in signed.headers and signed.headers["x-frame-options"] == "DENY"
    requests += [
        ("GET", "/ui/r/secret/app", None),
        ("GET", "/ui/r/secret/app/-/tags/1.0/delete", None),
        ("GET", "/ui/r/secret/app/-/tags/nope/delete", None),
        ("POST", "/ui/storage/gc", None),
    ]
    for method, path, body in requests:
        if method == "POST" and body is None:
            body = urllib.parse.urlencode({"csrf": csrf_of(await ui.get("/ui/storage"))}).encode()
        response = await ui.request(method, path, content=body, headers=FORM if body else None)
        assert response.status_code < 500, (method, path, response.status_code)
        policy = response.headers.get("content-security-policy", "")
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy, (method, path)
        assert "unsafe-inline" not in policy
        for key, value in SECURED.items():
            assert response.headers.get(key) == value, (method, path, key)
        if response.headers.get("content-type", "").startswith("text/html"):
            assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", response.text), (method, path)
            assert not re.search(r"\sstyle\s*=|<style|\son[a-z]+\s*=|javascript:", response.text, re.I), (method, path)
    for template in sorted(TEMPLATES.glob("*.html")):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), template.name
        assert not re.search(
            r"\sstyle\s*=|<style|\son[a-z]+\s*=|javascript:|\|\s*safe\b|autoescape\s+false", text, re.I
        ), template.name


async def test_the_deleted_flash_is_text_and_the_image_page_counts_only_visible_repositories(
    browser: httpx.AsyncClient,
) -> None:
    ui = browser
    assert (await sign_in(ui, "bob")).status_code == 303
    flash = await ui.get("/ui/r/team/app", params={"deleted": '<a href="//evil.example">x</a>'})
    assert flash.status_code == 200 and '<a href="//evil' not in flash.text
    digest = await digest_of(ui, "public/app")
    page = await ui.get(f"/ui/r/public/app/-/images/{digest}")
    assert page.status_code == 200
    assert re.findall(r'class="shared">([^<]*)<', page.text)[0] == "1 other repository"  # team/app only


async def test_a_wrong_method_on_a_ui_page_is_a_secured_error_page(ui_factory: UiFactory) -> None:
    ui = await ui_factory()
    for method, path in (("PUT", "/ui/login"), ("DELETE", "/ui/r/team/app"), ("POST", "/ui/")):
        response = await ui.request(method, path)
        assert is_error_page(response, 405), (method, path)
        assert response.headers.get("x-frame-options") == "DENY" and "content-security-policy" in response.headers


async def test_a_tag_moved_after_the_confirmation_is_not_deleted(ui_factory: UiFactory) -> None:
    ui = await ui_factory()
    await push_image(ui, "team/app", "1.0")
    action = "/ui/r/team/app/-/tags/1.0/delete"
    confirm = await ui.get(action)
    confirmed = re.search(r'name="digest" value="([^"]+)"', confirm.text)
    assert confirmed is not None
    moved, _ = await push_image(ui, "team/app", "1.0", seed="moved")  # someone re-tags meanwhile
    refused = await ui.post(action, data={"csrf": csrf_of(confirm), "digest": confirmed.group(1)})
    assert refused.status_code == 409 and 'id="error"' in refused.text
    assert (await ui.get("/v2/team/app/manifests/1.0")).headers["docker-content-digest"] == moved
    for digest in ("", "sha256:zz", "not a digest"):
        bad = await ui.post(action, data={"csrf": csrf_of(confirm), "digest": digest})
        assert bad.status_code == 400 and 'id="error"' in bad.text


async def test_an_origin_of_another_scheme_is_refused(ui_factory: UiFactory) -> None:
    ui = await ui_factory()
    page = await ui.get("/ui/storage")
    refused = await ui.post("/ui/logout", data={"csrf": csrf_of(page)}, headers={"Origin": "https://registry.test"})
    assert refused.status_code == 403


async def test_static_revalidation_follows_the_http_rules(ui_factory: UiFactory) -> None:
    ui = await ui_factory()
    etag = (await ui.get("/ui/static/ui.css")).headers["etag"]
    for header in (etag, f"W/{etag}", "*", f'"other", {etag}'):
        assert (await ui.get("/ui/static/ui.css", headers={"If-None-Match": header})).status_code == 304, header
    assert (await ui.get("/ui/static/ui.css", headers={"If-None-Match": '"other"'})).status_code == 200
