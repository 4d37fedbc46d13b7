"""OpenID Connect for real: a certified provider (Node's `oidc-provider`, tests/oidc_provider) run by the test, a
browser sign-in in headless Chromium through the UI (authorization code + PKCE), a personal access token made on
the UI's token page, `podman login` with it, a push its owner's group allows, and its revocation refused at once.
The provider then rotates its signing key, and signing in still works (the registry reads the new JWKS)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from registry.ui.sessions import SESSION_COOKIE
from tests.oidc_server import Account, OidcProvider, ensure_node_modules

from .browser import Browser, artifacts_dir, chromium
from .conftest import MoorageFactory, RunningServer, Skopeo
from .images import OciLayout, small_image
from .test_podman import Podman
from .test_podman import podman as podman  # the fixture

pytestmark = pytest.mark.e2e
ACCOUNTS: dict[str, Account] = {
    "erin": {"password": "erin-password", "email": "erin@example.org", "groups": ["developers"]},
    "frank": {"password": "frank-password", "groups": ["visitors"]},
}


@pytest.fixture
def provider() -> Iterator[OidcProvider]:
    ensure_node_modules()
    with OidcProvider(ACCOUNTS, redirect_uris=["http://127.0.0.1:*/ui/auth/callback"]) as started:
        yield started


def sso_registry(moorage_factory: MoorageFactory, provider: OidcProvider, tmp_path: Path) -> RunningServer:
    config: dict[str, Any] = {
        "auth": {
            "oidc": {
                "issuer": provider.issuer,
                "client_id": provider.client_id,
                "client_secret": provider.client_secret,
                "display_name": "Test SSO",
            },
        },
        "access": [{"repository": "dev/**", "groups": ["developers"], "actions": ["pull", "push"]}],
    }
    path = tmp_path / "sso.yml"
    path.write_text(yaml.safe_dump(config))
    return moorage_factory(env={"MOORAGE_CONFIG": str(path)})


def sign_in(browser: Browser, user: str, password: str) -> None:
    browser.get("/ui/login")
    browser.wait_path(r"/ui/login")
    browser.checked(f"sso-login-{user}")
    browser.find("#oidc-login").click()
    browser.wait(lambda d: d.find_elements("css selector", "#login-form #password"), "the provider's login form")
    browser.find("#login").send_keys(user)
    browser.find("#password").send_keys(password)
    browser.find("#submit").click()


def test_a_browser_signs_in_through_the_provider_and_makes_a_token_podman_uses_until_revoked(
    moorage_factory: MoorageFactory,
    provider: OidcProvider,
    podman: Podman,
    skopeo: Skopeo,
    tmp_path: Path,
) -> None:
    server = sso_registry(moorage_factory, provider, tmp_path)
    with chromium(server.url, tmp_path / "chromium-sso", "sso", artifacts_dir()) as browser:
        # A wrong password stays at the provider: no code, no session.
        sign_in(browser, "erin", "not-erins")
        browser.wait(lambda d: d.find_elements("css selector", "#error"), "the provider's refusal")
        assert browser.cookie(SESSION_COOKIE) is None

        sign_in(browser, "erin", "erin-password")
        browser.wait(lambda d: d.find_elements("css selector", "#signed-in-as"), "signed in")
        browser.wait_path(r"/ui/")
        assert browser.text("#signed-in-as") == "erin"
        assert browser.cookie(SESSION_COOKIE) is not None
        browser.checked("sso-signed-in")

        browser.get("/ui/tokens")
        browser.wait_path(r"/ui/tokens")
        browser.find("#token-name").send_keys("laptop")
        browser.find("#token-scopes").send_keys("repository:dev/*:pull,push")
        browser.click_and_load(browser.find("#token-submit"), r"/ui/tokens")
        secret = browser.text("#token-secret")
        assert re.fullmatch(r"moorage_pat_[0-9a-f]{16}_[A-Za-z0-9_-]{43}", secret), secret
        browser.checked("sso-token-made")

        tls = "--tls-verify=false"
        podman.run("login", tls, "-u", "erin", "-p", secret, server.host)
        layout = OciLayout(tmp_path / "layout")
        small_image(layout, name="sso", tag="v1")
        skopeo.push(layout.path, "v1", server.ref("dev/app", "v1"), f"--dest-creds=erin:{secret}")
        podman.run("pull", "--quiet", tls, f"{server.host}/dev/app:v1")
        podman.run("push", "--quiet", tls, f"{server.host}/dev/app:v1", f"{server.host}/dev/app:v2")
        outside = podman.run(
            "push", "--quiet", tls, f"{server.host}/dev/app:v1", f"{server.host}/ops/app:v1", check=False
        )
        assert outside.returncode != 0  # neither erin's groups nor the token's scopes reach ops/

        browser.click_and_load(browser.find("table#tokens button.revoke"), r"/ui/tokens")
        assert not browser.find_all("table#tokens tr[data-token]")
        podman.run("rmi", "--all", "--force")
        revoked = podman.run("pull", "--quiet", tls, f"{server.host}/dev/app:v1", check=False)
        assert revoked.returncode != 0 and "unauthorized" in revoked.stderr.lower(), revoked.stderr
        assert not browser.errors, browser.errors

    # The provider rotates its key: the next sign-in's ID token names a key the registry has not seen.
    old_kid = provider.kid
    provider.restart(new_key=True)
    assert provider.kid != old_kid
    with chromium(server.url, tmp_path / "chromium-sso-2", "sso-rotated", artifacts_dir()) as browser:
        sign_in(browser, "frank", "frank-password")
        browser.wait(lambda d: d.find_elements("css selector", "#signed-in-as"), "signed in after the key rotation")
        assert browser.text("#signed-in-as") == "frank"
        assert not browser.errors, browser.errors
