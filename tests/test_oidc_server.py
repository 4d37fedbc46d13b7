"""The OIDC provider for tests itself (tests/oidc_server.py), driven without a browser: the authorization-code flow
with PKCE as a browser would go through it (the same requests, cookies and form), then the token endpoint."""

from __future__ import annotations

import base64
import hashlib
import html
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
import jwt
import pytest

from tests.oidc_server import Account, OidcProvider

CLIENT_ID = "moorage-ui"
CLIENT_SECRET = "a-client-secret"
CALLBACK = "/ui/auth/callback"
REDIRECT_URI = f"http://127.0.0.1:8123{CALLBACK}"
ACCOUNTS: dict[str, Account] = {
    "alice": {"password": "alice-password", "email": "alice@example.test", "groups": ["developers", "admins"]},
    "bob": {"password": "bob-password", "email": "bob@example.test", "name": "Bob B."},
}


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    """One provider for the module's tests that leave it as it is; its redirect URIs take any port."""
    with OidcProvider(
        ACCOUNTS,
        CLIENT_ID,
        CLIENT_SECRET,
        [f"http://127.0.0.1:*{CALLBACK}"],
        post_logout_redirect_uris=["http://127.0.0.1:*/ui/"],
        log_path=tmp_path_factory.mktemp("oidc") / "provider.log",
    ) as started:
        yield started


@pytest.fixture
def own_provider(tmp_path: Path) -> Iterator[OidcProvider]:
    """A provider of the test's own (not started), for tests that restart it or change its settings."""
    created = OidcProvider(ACCOUNTS, CLIENT_ID, CLIENT_SECRET, log_path=tmp_path / "provider.log")
    yield created
    created.stop()


_clients: list[httpx.Client] = []  # each Flow's, closed after each test


def _new_client() -> httpx.Client:
    client = httpx.Client(timeout=10.0)
    _clients.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


@dataclass
class Flow:
    """One authorization request as a browser makes it: the same cookie jar throughout."""

    provider: OidcProvider
    redirect_uri: str = REDIRECT_URI
    verifier: str = field(default_factory=lambda: pkce_pair()[0])
    nonce: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    state: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    visited: list[str] = field(default_factory=list)
    http: httpx.Client = field(default_factory=_new_client)

    def discovery(self) -> dict[str, Any]:
        response = self.http.get(self.provider.discovery_url)
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document

    def authorization_url(self, **overrides: str | None) -> str:
        challenge = base64.urlsafe_b64encode(hashlib.sha256(self.verifier.encode()).digest()).rstrip(b"=").decode()
        params: dict[str, str | None] = {
            "response_type": "code",
            "client_id": self.provider.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": "openid profile email groups",
            "state": self.state,
            "nonce": self.nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
            **overrides,
        }
        query = {name: value for name, value in params.items() if value is not None}
        return f"{self.discovery()['authorization_endpoint']}?{urlencode(query)}"

    def follow(self, response: httpx.Response) -> httpx.Response:
        """Follow redirects within the provider; stop at the first one that leaves it (the relying party's)."""
        while response.is_redirect:
            target = urljoin(str(response.url), response.headers["location"])
            if not target.startswith(self.provider.issuer + "/"):
                return response
            self.visited.append(target)
            response = self.http.get(target)
        return response

    def start(self, **overrides: str | None) -> httpx.Response:
        url = self.authorization_url(**overrides)
        self.visited.append(url)
        return self.follow(self.http.get(url))

    def sign_in(self, login_page: httpx.Response, login: str, password: str) -> httpx.Response:
        assert login_page.status_code == 200, login_page.text
        action = re.search(r'<form id="login-form" method="post" action="([^"]+)"', login_page.text)
        assert action is not None, login_page.text
        for name in ("login", "password"):
            assert f'id="{name}" name="{name}"' in login_page.text
        assert '<button id="submit" type="submit">' in login_page.text
        target = urljoin(str(login_page.url), html.unescape(action[1]))
        self.visited.append(f"POST {target}")
        return self.follow(self.http.post(target, data={"login": login, "password": password}))

    def callback(self, response: httpx.Response) -> dict[str, str]:
        """The query of the redirect to the relying party, which must be `redirect_uri`."""
        assert response.is_redirect, f"{response.status_code} {response.text}"
        location = response.headers["location"]
        self.visited.append(location)
        assert location.split("?")[0] == self.redirect_uri
        return {name: values[0] for name, values in parse_qs(urlsplit(location).query).items()}

    def code_for(self, login: str, password: str) -> str:
        answer = self.callback(self.sign_in(self.start(), login, password))
        assert answer["state"] == self.state
        assert answer["iss"] == self.provider.issuer  # RFC 9207
        return answer["code"]

    def token(self, code: str, *, verifier: str | None = "", basic: bool = True, secret: str = "") -> httpx.Response:
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri}
        if verifier is not None:
            data["code_verifier"] = verifier or self.verifier
        secret = secret or self.provider.client_secret
        endpoint = self.discovery()["token_endpoint"]
        if basic:
            return self.http.post(endpoint, data=data, auth=httpx.BasicAuth(self.provider.client_id, secret))
        return self.http.post(endpoint, data={**data, "client_id": self.provider.client_id, "client_secret": secret})

    def id_token(self, login: str, password: str) -> dict[str, Any]:
        response = self.token(self.code_for(login, password))
        assert response.status_code == 200, response.text
        return verified(self.provider, response.json()["id_token"], self.nonce)


def verified(provider: OidcProvider, id_token: str, nonce: str) -> dict[str, Any]:
    jwks = jwt.PyJWKClient(f"{provider.issuer}/jwks", cache_keys=False)
    claims: dict[str, Any] = jwt.decode(
        id_token,
        jwks.get_signing_key_from_jwt(id_token).key,
        algorithms=["RS256"],
        audience=provider.client_id,
        issuer=provider.issuer,
        options={"require": ["iss", "aud", "exp", "iat", "sub", "nonce"]},
    )
    assert claims["nonce"] == nonce
    return claims


def test_the_discovery_document(provider: OidcProvider) -> None:
    document = Flow(provider).discovery()
    assert document["issuer"] == provider.issuer == f"http://127.0.0.1:{provider.port}"
    assert document["jwks_uri"] == f"{provider.issuer}/jwks"
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["response_types_supported"] == ["code"]
    assert {"openid", "profile", "email", "groups"} <= set(document["scopes_supported"])
    assert {"client_secret_basic", "client_secret_post"} <= set(document["token_endpoint_auth_methods_supported"])
    keys = httpx.get(document["jwks_uri"]).json()["keys"]
    assert [key["kid"] for key in keys] == [provider.kid]
    assert [sorted(key) for key in keys] == [["alg", "e", "kid", "kty", "n", "use"]]  # the public key only
    assert (keys[0]["kty"], keys[0]["alg"], keys[0]["use"]) == ("RSA", "RS256", "sig")


def test_the_code_flow_with_pkce_gives_a_signed_id_token_with_the_claims(provider: OidcProvider) -> None:
    flow = Flow(provider)
    claims = flow.id_token("alice", "alice-password")
    assert claims["sub"] == "alice"
    assert claims["preferred_username"] == "alice"
    assert claims["email"] == "alice@example.test"
    assert claims["email_verified"] is True
    assert claims["groups"] == ["developers", "admins"]
    assert 3590 <= claims["exp"] - claims["iat"] <= 3600
    assert claims["exp"] > time.time()
    # The pages a browser goes through: authorize, the login page, its form, back to authorize, the relying party.
    issuer = provider.issuer
    pages = [url.split("?")[0] for url in flow.visited]
    assert [re.sub(r"(\d/(interaction|auth))/[A-Za-z0-9_-]+", r"\1/UID", page) for page in pages] == [
        f"{issuer}/auth",
        f"{issuer}/interaction/UID",
        f"POST {issuer}/interaction/UID/login",
        f"{issuer}/auth/UID",
        REDIRECT_URI,
    ]


def test_a_user_without_groups_has_an_empty_list_and_the_userinfo_agrees(provider: OidcProvider) -> None:
    flow = Flow(provider)
    response = flow.token(flow.code_for("bob", "bob-password"))
    assert response.status_code == 200, response.text
    tokens = response.json()
    claims = verified(provider, tokens["id_token"], flow.nonce)
    assert (claims["preferred_username"], claims["name"], claims["groups"]) == ("bob", "Bob B.", [])
    userinfo = flow.http.get(f"{provider.issuer}/me", headers={"authorization": f"Bearer {tokens['access_token']}"})
    assert userinfo.status_code == 200, userinfo.text
    assert userinfo.json()["groups"] == [] and userinfo.json()["sub"] == "bob"


def test_client_secret_post_is_accepted_and_a_wrong_secret_is_not(provider: OidcProvider) -> None:
    flow = Flow(provider)
    wrong = flow.token(flow.code_for("alice", "alice-password"), secret="not-the-secret")
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    flow = Flow(provider)
    posted = flow.token(flow.code_for("alice", "alice-password"), basic=False)
    assert posted.status_code == 200, posted.text
    verified(provider, posted.json()["id_token"], flow.nonce)


@pytest.mark.parametrize(("login", "password"), [("alice", "bob-password"), ("alice", ""), ("mallory", "x")])
def test_a_wrong_password_is_refused(provider: OidcProvider, login: str, password: str) -> None:
    flow = Flow(provider)
    refused = flow.sign_in(flow.start(), login, password)
    assert refused.status_code == 200 and not refused.is_redirect
    assert '<p id="error" role="alert">Invalid login or password.</p>' in refused.text
    assert 'id="password" name="password"' in refused.text  # the form again, to try again
    assert f'value="{login}"' in refused.text
    # The same interaction then accepts the right password.
    assert flow.callback(flow.sign_in(refused, "alice", "alice-password"))["code"]


def test_the_code_needs_the_code_verifier(provider: OidcProvider) -> None:
    flow = Flow(provider)
    code = flow.code_for("alice", "alice-password")
    missing = flow.token(code, verifier=None)
    assert missing.status_code == 400 and missing.json()["error"] == "invalid_grant", missing.text
    flow = Flow(provider)
    wrong = flow.token(flow.code_for("alice", "alice-password"), verifier=pkce_pair()[0])
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant", wrong.text


def test_a_code_is_good_once(provider: OidcProvider) -> None:
    flow = Flow(provider)
    code = flow.code_for("alice", "alice-password")
    assert flow.token(code).status_code == 200
    again = flow.token(code)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_an_authorization_request_without_pkce_is_refused(provider: OidcProvider) -> None:
    flow = Flow(provider)
    answer = flow.callback(flow.start(code_challenge=None, code_challenge_method=None))
    assert answer["error"] == "invalid_request" and "code" not in answer
    assert "PKCE" in answer["error_description"]


def test_a_redirect_uri_must_match_apart_from_the_wildcard_port(provider: OidcProvider) -> None:
    flow = Flow(provider, redirect_uri=f"http://127.0.0.1:45678{CALLBACK}")
    assert flow.callback(flow.sign_in(flow.start(), "alice", "alice-password"))["code"]
    for elsewhere in (f"http://127.0.0.1:45678/elsewhere{CALLBACK}", f"http://localhost:45678{CALLBACK}"):
        refused = Flow(provider, redirect_uri=elsewhere).start()
        assert refused.status_code == 400 and not refused.is_redirect
        assert '<p id="error">invalid_redirect_uri</p>' in refused.text


def test_cancel_returns_access_denied(provider: OidcProvider) -> None:
    flow = Flow(provider)
    login_page = flow.start()
    cancel = re.search(r'<a id="cancel" href="([^"]+)"', login_page.text)
    assert cancel is not None
    answer = flow.callback(flow.follow(flow.http.get(urljoin(str(login_page.url), cancel[1]))))
    assert answer["error"] == "access_denied" and answer["state"] == flow.state


def test_rp_initiated_logout_asks_then_returns_to_the_relying_party(provider: OidcProvider) -> None:
    flow = Flow(provider)
    id_token = flow.token(flow.code_for("alice", "alice-password")).json()["id_token"]
    back = "http://127.0.0.1:45678/ui/"
    params = {"id_token_hint": id_token, "post_logout_redirect_uri": back, "state": "bye"}
    page = flow.http.get(flow.discovery()["end_session_endpoint"], params=params)
    assert page.status_code == 200, page.text
    form = re.search(r'<form id="op.logoutForm" method="post" action="([^"]+)"><input type="hidden" name="xsrf" '
                     r'value="([^"]+)"/></form>', page.text)  # fmt: skip
    assert form is not None and '<button id="logout" type="submit" form="op.logoutForm"' in page.text, page.text
    done = flow.http.post(html.unescape(form[1]), data={"xsrf": form[2], "logout": "yes"})
    assert done.status_code == 303 and done.headers["location"] == f"{back}?state=bye"
    assert "op_session" not in flow.http.cookies


def test_every_authorization_shows_the_login_page_unless_sso(provider: OidcProvider, tmp_path: Path) -> None:
    flow = Flow(provider)
    flow.code_for("alice", "alice-password")
    again = flow.start(state="second")  # same cookies: the provider has a session for alice
    assert again.status_code == 200 and 'id="login"' in again.text
    flow.state = "second"
    code = flow.callback(flow.sign_in(again, "bob", "bob-password"))["code"]  # no detour to sign alice out first
    response = flow.token(code)
    assert response.status_code == 200, response.text
    assert verified(provider, response.json()["id_token"], flow.nonce)["sub"] == "bob"

    with OidcProvider(ACCOUNTS, CLIENT_ID, CLIENT_SECRET, [REDIRECT_URI], sso=True) as sso:
        flow = Flow(sso)
        flow.code_for("alice", "alice-password")
        answer = flow.callback(flow.start())
        assert answer["code"] and answer["state"] == flow.state


def test_redirect_uris_given_at_start_and_a_short_id_token_lifetime(own_provider: OidcProvider) -> None:
    own_provider.id_token_ttl = 5
    own_provider.start(redirect_uris=[REDIRECT_URI])
    claims = Flow(own_provider).id_token("alice", "alice-password")
    assert claims["exp"] - claims["iat"] == 5


def test_restart_with_a_new_key_rotates_the_jwks(own_provider: OidcProvider) -> None:
    own_provider.start(redirect_uris=[REDIRECT_URI])
    port, old_kid = own_provider.port, own_provider.kid
    first = Flow(own_provider)
    old_token = first.token(first.code_for("alice", "alice-password")).json()["id_token"]
    assert jwt.get_unverified_header(old_token)["kid"] == old_kid

    own_provider.restart(new_key=True)
    assert own_provider.port == port and own_provider.kid != old_kid
    assert [key["kid"] for key in httpx.get(f"{own_provider.issuer}/jwks").json()["keys"]] == [own_provider.kid]
    flow = Flow(own_provider)
    new_token = flow.token(flow.code_for("alice", "alice-password")).json()["id_token"]
    assert jwt.get_unverified_header(new_token)["kid"] == own_provider.kid
    verified(own_provider, new_token, flow.nonce)
    with pytest.raises(jwt.PyJWKClientError):  # the old key is gone from the JWKS
        verified(own_provider, old_token, first.nonce)

    previous = own_provider.kid
    own_provider.restart(new_key=True, keep_old_key=True)
    kids = [key["kid"] for key in httpx.get(f"{own_provider.issuer}/jwks").json()["keys"]]
    assert kids == [own_provider.kid, previous]
    flow = Flow(own_provider)
    assert (
        jwt.get_unverified_header(flow.token(flow.code_for("alice", "alice-password")).json()["id_token"])["kid"]
        == own_provider.kid
    )

    own_provider.restart()  # the same key
    assert [key["kid"] for key in httpx.get(f"{own_provider.issuer}/jwks").json()["keys"]] == kids
