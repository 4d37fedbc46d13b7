"""The ID token checks of the OIDC relying party (registry/auth/oidc.py), against a provider simulated in-process
(its discovery, JWKS and token endpoint): only a token signed by one of the provider's published keys, for this
client, from this issuer, unexpired and carrying this sign-in's nonce makes a user. (The real provider and a real
browser: tests/e2e/test_oidc_browser.py.)"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from registry.auth.oidc import OidcClient, OidcError, Pending
from registry.auth.settings import OidcSettings

ISSUER = "https://idp.test"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**public, "kid": kid, "use": "sig", "alg": "RS256"}


class Provider:
    def __init__(self) -> None:
        self.keys = [jwk(KEY, "k1")]
        self.id_token = ""
        self.jwks_reads = 0
        self.forms: list[dict[str, str]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(
                200,
                json={
                    "issuer": ISSUER,
                    "authorization_endpoint": f"{ISSUER}/auth",
                    "token_endpoint": f"{ISSUER}/token",
                    "jwks_uri": f"{ISSUER}/jwks",
                },
            )
        if request.url.path == "/jwks":
            self.jwks_reads += 1
            return httpx.Response(200, json={"keys": self.keys})
        if request.url.path == "/token":
            self.forms.append(dict(httpx.QueryParams(request.content.decode())))
            return httpx.Response(200, json={"id_token": self.id_token, "token_type": "Bearer"})
        return httpx.Response(404)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": "moorage",
        "sub": "u-1",
        "preferred_username": "erin",
        "groups": ["developers", 7, ""],
        "iat": now,
        "exp": now + 300,
        "nonce": "the-nonce",
    }
    return {key: value for key, value in {**base, **overrides}.items() if value is not None}


def sign(payload: dict[str, Any], key: Any = KEY, kid: str = "k1", algorithm: str = "RS256") -> str:
    return jwt.encode(payload, key, algorithm=algorithm, headers={"kid": kid})


@pytest.fixture
def provider() -> Provider:
    return Provider()


@pytest.fixture
async def client(provider: Provider) -> Any:
    settings = OidcSettings(issuer=ISSUER, client_id="moorage", client_secret="s3cret")
    made = OidcClient(settings, transport=httpx.MockTransport(provider.handler))
    yield made
    await made.aclose()


PENDING = Pending("the-state", "the-nonce", "v" * 64, "/ui/")


async def test_a_good_token_makes_the_user_with_its_groups(client: OidcClient, provider: Provider) -> None:
    url, pending = await client.begin("https://registry.test/ui/auth/callback", "/ui/")
    query = httpx.URL(url).params
    assert query["code_challenge_method"] == "S256" and query["nonce"] == pending.nonce
    assert query["state"] == pending.state and "openid" in query["scope"].split()
    provider.id_token = sign(claims(nonce=pending.nonce))
    identity = await client.finish("the-code", "https://registry.test/ui/auth/callback", pending)
    assert identity.name == "erin" and identity.groups == {"developers"}
    assert provider.forms[0]["code_verifier"] == pending.verifier and provider.forms[0]["code"] == "the-code"


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (lambda: sign(claims(nonce="another")), "nonce"),
        (lambda: sign(claims(nonce=None)), "nonce"),
        (lambda: sign(claims(aud="someone-else")), "(?i)audience"),
        (lambda: sign(claims(aud=["moorage", "other"], azp="other")), "another client"),
        (lambda: sign(claims(iss="https://evil.test")), "issuer"),
        (lambda: sign(claims(exp=int(time.time()) - 3600)), "expired"),
        (lambda: sign(claims(exp=None)), "exp"),
        (lambda: sign(claims(), key=OTHER_KEY), "Signature"),
        (lambda: sign(claims(), kid="k9"), "does not publish"),
        (lambda: jwt.encode(claims(), key="", algorithm="none"), "algorithm"),
        (lambda: jwt.encode(claims(), "s3cret" * 8, algorithm="HS256", headers={"kid": "k1"}), "algorithm"),
        (lambda: sign(claims(preferred_username=None)), "preferred_username"),
        (lambda: sign(claims(preferred_username="anonymous")), "reserved"),
        (lambda: sign(claims(preferred_username="a\nb")), "preferred_username"),
        (lambda: "not.a.token", "malformed"),
    ],
)
async def test_tokens_that_must_not_sign_anyone_in(
    client: OidcClient, provider: Provider, token: Any, why: str
) -> None:
    provider.id_token = token()
    with pytest.raises(OidcError, match=why):
        await client.finish("the-code", "https://registry.test/ui/auth/callback", PENDING)


async def test_a_rotated_key_is_read_when_a_token_names_it(client: OidcClient, provider: Provider) -> None:
    provider.id_token = sign(claims())
    await client.finish("c", "https://registry.test/cb", PENDING)
    assert provider.jwks_reads == 1
    await client.finish("c", "https://registry.test/cb", PENDING)
    assert provider.jwks_reads == 1  # known key: not read again
    provider.keys = [jwk(OTHER_KEY, "k2")]
    provider.id_token = sign(claims(), key=OTHER_KEY, kid="k2")
    assert (await client.finish("c", "https://registry.test/cb", PENDING)).name == "erin"
    assert provider.jwks_reads == 2
