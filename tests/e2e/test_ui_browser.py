"""The web UI in a real headless Chromium against a real `moorage serve` with htpasswd sign-in and access rules.

Images are pushed with skopeo from an OCI layout built here (layers of known digests and sizes, a config whose
history has steps that made no layer); then, in the browser: alice signs in, searches, copies a pull command, reads
an image's layers and history, deletes a tag through its confirmation page and signs out (her old session cookie
names nobody any more); bob, who may only pull team/**, never sees secret/app (its page is a 404), gets no delete
links and a 403 for a delete page; a wrong password is refused; the pages fit 375 px and render in dark mode; the
sign-in form works from the keyboard. Every page is screenshotted (test-artifacts/ui/) and its console must hold no
error (a Content-Security-Policy violation, a script error, a failed load).
"""

from __future__ import annotations

import base64
import re
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
import yaml
from selenium.webdriver.common.keys import Keys

from .browser import DESKTOP, PHONE, Browser, artifacts_dir, chromium
from .conftest import MoorageFactory, RunningServer, Skopeo
from .images import MT_CONFIG, MT_MANIFEST, Descriptor, OciLayout

pytestmark = pytest.mark.e2e

PASSWORDS = {"alice": "alice-ui-pw-1", "bob": "bob-ui-pw-2"}
RULES: list[dict[str, Any]] = [
    {"repository": "team/**", "users": ["alice"], "actions": ["pull", "push", "delete"]},
    {"repository": "team/**", "users": ["bob"], "actions": ["pull"]},
    {"repository": "secret/**", "users": ["alice"], "actions": ["pull", "push", "delete"]},
]
LARGE_LAYER = 1024 * 1024  # exactly, headers and padding included
INDEX_TIMEOUT = 15.0
SESSION_COOKIE = "moorage_session"


@dataclass(frozen=True)
class Pushed:
    """What one tag was pushed as: its manifest, config, layers, and the config's history."""

    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    history: tuple[dict[str, Any], ...]


def build_image(layout: OciLayout, *, version: str, tag: str) -> Pushed:
    """An image of two layers (gzip, then an uncompressed one of exactly LARGE_LAYER bytes) whose history has four
    steps, two of them `empty_layer` (ENV and CMD, as `docker build` records them)."""
    base = layout.add_layer(
        {"etc/os-release": f"NAME=moorage-ui-e2e\nVERSION={version}\n".encode(), "bin/app": b"#!/bin/sh\necho hi\n"},
        compress=True,
    )
    large = layout.add_large_layer(LARGE_LAYER, seed=int(version.replace(".", "")))
    layers = [base, large]
    history: list[dict[str, Any]] = [
        {"created": "2024-01-01T00:00:00Z", "created_by": f"/bin/sh -c #(nop) ADD file:base-{version} in / "},
        {"created": "2024-01-01T00:00:01Z", "created_by": f"/bin/sh -c #(nop)  ENV APP_VERSION={version}"},
        {"created": "2024-01-01T00:00:02Z", "created_by": "/bin/sh -c make install DESTDIR=/app"},
        {"created": "2024-01-01T00:00:03Z", "created_by": '/bin/sh -c #(nop)  CMD ["/bin/app"]'},
    ]
    history[1]["empty_layer"] = True
    history[3]["empty_layer"] = True
    config = {
        "created": "2024-01-01T00:00:03Z",
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [f"APP_VERSION={version}"], "Cmd": ["/bin/app"], "Labels": {"e2e.version": version}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in layers]},
        "history": history,
    }
    config_desc, _ = layout.add_json(config, MT_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": config_desc.to_json(),
        "layers": [desc.to_json() for desc, _ in layers],
    }
    manifest_desc, _ = layout.add_json(manifest, MT_MANIFEST)
    layout.tag(manifest_desc, tag)
    return Pushed(manifest_desc, config_desc, tuple(desc for desc, _ in layers), tuple(history))


def write_htpasswd(path: Path) -> Path:
    """bcrypt entries as `htpasswd -B` writes them ($2y$), at the lowest cost so that sign-ins stay quick."""
    lines = []
    for user, password in PASSWORDS.items():
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        lines.append(f"{user}:$2y${hashed[4:]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def basic(user: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def wait_indexed(server: RunningServer, expected: dict[str, list[str]]) -> None:
    """Poll alice's search for "app", then each repository's summary, until the index has every tag pushed."""
    deadline = time.monotonic() + INDEX_TIMEOUT
    found: Any = None
    while time.monotonic() < deadline:
        response = server.get("/api/v1/search", params={"q": "app"}, headers=basic("alice"))
        if response.status_code == 200:
            names = sorted(hit["name"] for hit in response.json()["results"])
            found = {name: indexed_tags(server, name) for name in names}
            if found == expected:
                return
        else:
            found = f"{response.status_code} {response.text[:300]}"
        time.sleep(0.1)
    pytest.fail(f"the index never listed {expected} within {INDEX_TIMEOUT:g}s; last answer: {found}")


def indexed_tags(server: RunningServer, name: str) -> list[str] | str:
    response = server.get(f"/api/v1/repositories/{name}", headers=basic("alice"))
    if response.status_code != 200:
        return f"{response.status_code} {response.text[:300]}"
    return sorted(t["tag"] for t in response.json()["tags"])


def registry_tags(server: RunningServer, name: str) -> list[str]:
    response = server.get(f"/v2/{name}/tags/list", headers=basic("alice"))
    assert response.status_code == 200, response.text
    tags: list[str] = response.json()["tags"] or []
    return sorted(tags)


@pytest.fixture
def seeded(moorage_factory: MoorageFactory, skopeo: Skopeo, tmp_path: Path) -> tuple[RunningServer, dict[str, Pushed]]:
    config = tmp_path / "ui.yml"
    settings = {"auth": {"htpasswd": {"path": str(write_htpasswd(tmp_path / "ui.htpasswd"))}}, "access": RULES}
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    server = moorage_factory(tmp_path / "ui-root", env={"MOORAGE_CONFIG": str(config)})
    layout = OciLayout(tmp_path / "ui-layout")
    pushed = {tag: build_image(layout, version=tag, tag=tag) for tag in ("1.0", "2.0")}
    creds = "--dest-creds=alice:" + PASSWORDS["alice"]
    skopeo.push(layout.path, "1.0", server.ref("team/app", "1.0"), creds)
    skopeo.push(layout.path, "2.0", server.ref("team/app", "2.0"), creds)
    skopeo.push(layout.path, "1.0", server.ref("secret/app", "1.0"), creds)
    wait_indexed(server, {"team/app": ["1.0", "2.0"], "secret/app": ["1.0"]})
    return server, pushed


# Steps in the browser.


def sign_in(browser: Browser, user: str, password: str, *, next_path: str = "/ui/") -> None:
    """Sign in through the form (asked for by a page that needs it), landing on `next_path`."""
    browser.get(next_path)
    browser.wait_path(r"/ui/login\?next=.*")
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(browser.path).query)["next"] == [next_path]
    browser.checked("login")
    browser.find("#username").send_keys(user)
    browser.find("#password").send_keys(password)
    browser.click_and_load(browser.find("#login-submit"), re.escape(next_path))
    assert browser.text("#signed-in-as") == user
    assert browser.cookie(SESSION_COOKIE) is not None


def sign_out(browser: Browser, user: str) -> dict[str, Any]:
    """Sign out with the header's button; return the session cookie the browser had."""
    old = browser.cookie(SESSION_COOKIE)
    assert old is not None
    browser.click_and_load(browser.find("form#logout-form button#logout"), r"/ui/login\?signed_out=1")
    assert browser.exists("#signed-out")
    assert not browser.exists("#signed-in-as")
    assert browser.cookie(SESSION_COOKIE) is None
    browser.checked("signed-out")
    return old


def search(browser: Browser, term: str) -> list[str]:
    browser.get("/ui/")
    browser.wait_path(r"/ui/")
    box = browser.find("form#search input[name=q]")
    box.clear()
    box.send_keys(term, Keys.ENTER)
    browser.wait_path(r"/ui/\?q=" + re.escape(urllib.parse.quote_plus(term)))
    return [link.text.strip() for link in browser.find_all("table#repositories tr.repository a.repository-link")]


def tag_rows(browser: Browser) -> list[str]:
    return [row.get_attribute("data-tag") or "" for row in browser.find_all("table#tags tr.tag")]


def assert_old_session_gone(server: RunningServer, browser: Browser, old: dict[str, Any]) -> None:
    """The session cookie from before signing out names nobody: the server ended the session, not just the browser."""
    with httpx.Client(base_url=server.url, cookies={SESSION_COOKIE: old["value"]}, timeout=30.0) as client:
        response = client.get("/ui/", follow_redirects=False)
    assert response.status_code == 303, response.text
    assert response.headers["location"].startswith("/ui/login?"), response.headers["location"]
    assert "expired=1" in response.headers["location"]
    # And the browser with the old cookie put back: sent to sign in, told its session ended.
    browser.driver.add_cookie(
        {"name": SESSION_COOKIE, "value": old["value"], "path": "/ui", "httpOnly": True, "sameSite": "Strict"}
    )
    browser.get("/ui/")
    browser.wait_path(r"/ui/login\?next=%2Fui%2F&expired=1")
    assert browser.exists("#expired")
    assert not browser.exists("#signed-in-as")
    browser.checked("old-session-expired")


def check_image_page(browser: Browser, image: Pushed) -> None:
    assert browser.text("#image-digest") == image.manifest.digest
    rows = browser.find_all("table#layers tr.layer")
    shown = [
        (
            row.get_attribute("data-digest"),
            row.find_element("css selector", "td.size").get_attribute("data-bytes"),
            row.find_element("css selector", "td.media-type").text.strip(),
        )
        for row in rows
    ]
    assert shown == [(layer.digest, str(layer.size), layer.media_type) for layer in image.layers]
    assert image.layers[1].size == LARGE_LAYER
    assert browser.text("dl#config .config-digest") == image.config.digest
    steps = browser.find_all("table#history tr.step")
    layer_sizes = iter(layer.size for layer in image.layers)
    expected_steps = [
        (step["created_by"], "" if step.get("empty_layer") else str(next(layer_sizes))) for step in image.history
    ]
    shown_steps = [
        (
            step.find_element("css selector", "td.created-by code").get_property("textContent"),
            step.find_element("css selector", "td.size").get_attribute("data-bytes"),
        )
        for step in steps
    ]
    assert shown_steps == expected_steps
    empty_sizes = [
        step.find_element("css selector", "td.size").text.strip()
        for step, source in zip(steps, image.history, strict=True)
        if source.get("empty_layer")
    ]
    assert empty_sizes == ["—", "—"]
    assert browser.exists("#no-referrers") and not browser.exists("#referrers")


def check_error_page(browser: Browser, status: int, code: str | None = None) -> None:
    error = browser.find("div#error")
    assert error.get_attribute("data-status") == str(status), error.get_attribute("outerHTML")
    if code is not None:
        assert error.get_attribute("data-code") == code, error.get_attribute("outerHTML")


def test_ui_in_chromium(seeded: tuple[RunningServer, dict[str, Pushed]], tmp_path: Path) -> None:
    server, pushed = seeded
    shots = artifacts_dir()
    for stale in shots.glob("*.png"):
        stale.unlink()

    with chromium(server.url, tmp_path / "chromium-alice", "alice", shots) as browser:
        # A wrong password: refused on the form, no session.
        browser.get("/ui/login")
        browser.wait_path(r"/ui/login")
        browser.find("#username").send_keys("alice")
        browser.find("#password").send_keys("not-her-password")
        browser.click_and_load(browser.find("#login-submit"), r"/ui/login")
        assert browser.exists("#login-error"), browser.find("main").text
        assert "Wrong user name or password" in browser.text("#login-error")
        assert browser.cookie(SESSION_COOKIE) is None
        assert browser.find("#username").get_attribute("value") == "alice"
        browser.checked("login-wrong-password", expected_status=401)

        # alice signs in, and finds both repositories she may pull.
        sign_in(browser, "alice", PASSWORDS["alice"])
        browser.checked("repositories")
        assert sorted(search(browser, "app")) == ["secret/app", "team/app"]
        browser.checked("search")

        # The repository page: a pull command copied with its button.
        link = browser.find('table#repositories tr.repository[data-name="team/app"] a.repository-link')
        browser.click_and_load(link, r"/ui/r/team/app")
        assert browser.text("#repository-name") == "team/app"
        assert sorted(tag_rows(browser)) == ["1.0", "2.0"]
        assert len(browser.find_all("table#tags tr.tag a.delete-tag")) == 2
        command = browser.text("code.pull-command#pull-docker")
        assert re.fullmatch(rf"docker pull {re.escape(server.host)}/team/app:(1\.0|2\.0)", command), command
        assert browser.text("#pull-podman") == "podman" + command.removeprefix("docker")
        assert browser.text("#pull-moorage") == "moorage" + command.removeprefix("docker")
        copy = browser.find('#pull-commands button.copy[data-copy="pull-docker"]')
        copy.click()
        browser.wait(lambda d: copy.get_attribute("data-copied") is not None, "the copy button marks what it copied")
        copied = copy.get_attribute("data-copied")
        assert copied == command and "team/app:" in command
        assert browser.clipboard() == command  # headless Chromium's own clipboard, read by the page
        assert copy.text.strip() == "Copied"
        browser.checked("repository")

        # The image of 1.0: every layer's digest, size and type; the history in order, empty steps without a size.
        row = browser.find('table#tags tr.tag[data-tag="1.0"]')
        image_path = f"/ui/r/team/app/-/images/{pushed['1.0'].manifest.digest}"
        browser.click_and_load(row.find_element("css selector", "a.image-link"), re.escape(image_path))
        check_image_page(browser, pushed["1.0"])
        browser.checked("image")

        # Delete 2.0 through its confirmation page: gone from the page and from the registry; 1.0 stays.
        browser.get("/ui/r/team/app")
        browser.wait_path(r"/ui/r/team/app")
        delete = browser.find('table#tags tr.tag[data-tag="2.0"] a.delete-tag')
        browser.click_and_load(delete, re.escape("/ui/r/team/app/-/tags/2.0/delete"))
        assert pushed["2.0"].manifest.digest in browser.text("main")
        browser.checked("confirm-delete")
        button = browser.find("form#confirm-delete button#confirm-delete-button")
        browser.click_and_load(button, re.escape("/ui/r/team/app?deleted=2.0"))
        assert "2.0" in browser.text("#flash")
        assert tag_rows(browser) == ["1.0"]
        browser.checked("deleted")
        assert registry_tags(server, "team/app") == ["1.0"]
        assert registry_tags(server, "secret/app") == ["1.0"]

        # The storage page renders for her too.
        browser.get("/ui/storage")
        browser.wait_path(r"/ui/storage")
        assert browser.exists("#storage-totals")
        browser.checked("storage")
        # The console check sees what it must: an inline style, refused by the Content-Security-Policy, is an error.
        browser.js("const s = document.createElement('style'); s.textContent = 'body{}'; document.head.append(s)")
        refused = browser.wait(
            lambda d: [e for e in browser.console_entries() if "Content Security Policy" in e["message"]],
            "the browser reports the refused inline style",
        )
        assert all(e["level"] == "SEVERE" for e in refused), refused

        # At 375 px: no page as a whole scrolls sideways (tables scroll inside their wrappers).
        browser.set_size(PHONE)
        too_wide = []
        for path, name in (
            ("/ui/r/team/app", "repository"),
            (image_path, "image"),
            ("/ui/?q=app", "repositories"),
            ("/ui/storage", "storage"),
        ):
            browser.get(path)
            browser.wait_path(re.escape(path))
            overflow = browser.horizontal_overflow()
            if overflow is not None:
                too_wide.append(f"{name} page ({path}): {overflow}")
            browser.checked(f"{name}-375px")
        # Dark mode: the page follows the system's preference.
        browser.emulate_dark(True)
        browser.get(image_path)
        browser.wait_path(re.escape(image_path))
        assert browser.js("return matchMedia('(prefers-color-scheme: dark)').matches") is True
        background = browser.js("return getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(15, 20, 25)", background
        browser.checked("image-375px-dark")
        browser.emulate_dark(False)
        browser.set_size(DESKTOP)

        # Signing out ends the session on the server: the old cookie, put back, names nobody.
        old = sign_out(browser, "alice")
        assert_old_session_gone(server, browser, old)
        console_errors = list(browser.errors)

    with chromium(server.url, tmp_path / "chromium-bob", "bob", shots) as browser:
        # The sign-in form from the keyboard: Tab reaches user name, password and button in order; Enter submits.
        browser.get("/ui/login?next=%2Fui%2F")
        browser.wait_path(r"/ui/login\?next=%2Fui%2F")
        browser.checked("login")
        browser.find("main h1").click()  # focus navigation starts from the heading, above the form
        order = []
        for _ in range(3):
            browser.driver.switch_to.active_element.send_keys(Keys.TAB)
            order.append(browser.active_element_id())
        assert order == ["username", "password", "login-submit"]
        browser.driver.switch_to.active_element.send_keys(Keys.SHIFT, Keys.TAB)
        assert browser.active_element_id() == "password"
        browser.driver.switch_to.active_element.send_keys(Keys.SHIFT, Keys.TAB)
        assert browser.active_element_id() == "username"
        browser.driver.switch_to.active_element.send_keys("bob", Keys.TAB)
        assert browser.active_element_id() == "password"
        old_page = browser.find("html")
        browser.driver.switch_to.active_element.send_keys(PASSWORDS["bob"], Keys.ENTER)
        browser.wait_next_page(old_page, r"/ui/")
        assert browser.text("#signed-in-as") == "bob"
        browser.checked("repositories")

        # bob never sees secret/app: not in search, its page a 404 like a repository that does not exist.
        assert search(browser, "app") == ["team/app"]
        browser.checked("search")
        browser.get("/ui/r/secret/app")
        browser.wait_path(r"/ui/r/secret/app")
        check_error_page(browser, 404, "NAME_UNKNOWN")
        secret_text = browser.text("main").replace("secret/app", "NAME")
        browser.checked("secret-404", expected_status=404)
        browser.get("/ui/r/secret/nothing-here")
        browser.wait_path(r"/ui/r/secret/nothing-here")
        check_error_page(browser, 404, "NAME_UNKNOWN")
        assert browser.text("main").replace("secret/nothing-here", "NAME") == secret_text
        browser.checked("missing-404", expected_status=404)
        secret_image = f"/ui/r/secret/app/-/images/{pushed['1.0'].manifest.digest}"
        browser.get(secret_image)
        browser.wait_path(re.escape(secret_image))
        check_error_page(browser, 404, "NAME_UNKNOWN")
        browser.checked("secret-image-404", expected_status=404)

        # team/app: he may pull, so he sees it, but no delete link; the delete page itself is a 403.
        browser.get("/ui/r/team/app")
        browser.wait_path(r"/ui/r/team/app")
        assert tag_rows(browser) == ["1.0"]
        assert not browser.exists("a.delete-tag")
        browser.checked("repository")
        browser.get("/ui/r/team/app/-/tags/1.0/delete")
        browser.wait_path(re.escape("/ui/r/team/app/-/tags/1.0/delete"))
        check_error_page(browser, 403)
        assert not browser.exists("#confirm-delete-button")
        browser.checked("delete-403", expected_status=403)
        assert registry_tags(server, "team/app") == ["1.0"]

        old = sign_out(browser, "bob")
        assert_old_session_gone(server, browser, old)
        console_errors += browser.errors

    # Checked last, so that every other check above has run: the layout at 375 px and the consoles.
    problems = [f"scrolls sideways as a whole at 375 px: the {page}" for page in too_wide]
    problems += [f"browser console error on {error}" for error in console_errors]
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems)
