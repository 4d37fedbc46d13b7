"""OpenID Connect sign-in for the UI: the authorization-code flow with PKCE (S256), against any certified provider
(Keycloak, Dex, Okta, Entra ID, Google, ...).

The provider is found by discovery (`<issuer>/.well-known/openid-configuration`, read again after an hour). A
sign-in starts with a random `state`, `nonce` and PKCE verifier, which the browser keeps in a short-lived signed
cookie; the callback exchanges the code (with the verifier and the client's secret) and accepts the ID token only
when its signature verifies with one of the provider's keys (the JWKS is read again when a token names a key it does
not have: keys rotate), its issuer is the configured one, its audience names this client
(and `azp` does, when there are several), it has not expired, and its nonce is the one this browser was given.
The user is the `username_claim`, the groups the `groups_claim` (a list of names).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt

from registry.auth.access import Identity
from registry.auth.oidc_state import OidcError, Pending
from registry.auth.settings import OidcSettings

logger = logging.getLogger("moorage.auth.oidc")
DISCOVERY_TTL = 3600.0
ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
LEEWAY_SECONDS = 30
JWKS_TTL = 3600.0  # keys the provider withdrew stop being trusted within this long
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_GROUPS = 200
MAX_GROUP_NAME = 256


def _challenge(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


class OidcClient:
    def __init__(self, settings: OidcSettings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.issuer = settings.issuer.rstrip("/")
        self._client = httpx.AsyncClient(timeout=settings.timeout, transport=transport, follow_redirects=False)
        self._discovery: dict[str, Any] | None = None
        self._discovered_at = 0.0
        self._keys: dict[str, jwt.PyJWK] = {}
        self._keys_read_at = 0.0

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = await self._client.get(url, headers={"Accept": "application/json"})
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as e:
            raise OidcError(f"the identity provider cannot be reached ({type(e).__name__})") from e
        if response.status_code != 200:
            raise OidcError(f"the identity provider answered {response.status_code} for {url}")
        if len(response.content) > MAX_DOCUMENT_BYTES:
            raise OidcError(f"the identity provider's {url} is too large")
        try:
            data = response.json()
        except (ValueError, RecursionError):
            raise OidcError(f"the identity provider's {url} is not JSON") from None
        if not isinstance(data, dict):
            raise OidcError(f"the identity provider's {url} is not a JSON object")
        return data

    async def discovery(self) -> dict[str, Any]:
        if self._discovery is None or time.monotonic() - self._discovered_at > DISCOVERY_TTL:
            data = await self._get_json(f"{self.issuer}/.well-known/openid-configuration")
            if str(data.get("issuer", "")).rstrip("/") != self.issuer:
                raise OidcError("the identity provider's discovery document names another issuer")
            for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(data.get(key), str):
                    raise OidcError(f"the identity provider's discovery document has no {key}")
            self._discovery, self._discovered_at = data, time.monotonic()
        return self._discovery

    async def begin(self, redirect_uri: str, target: str) -> tuple[str, Pending]:
        """The provider's authorization URL to send the browser to, and what the browser must keep meanwhile."""
        discovery = await self.discovery()
        pending = Pending(
            secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48), target, time.time()
        )
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.settings.client_id,
                "redirect_uri": redirect_uri,
                "scope": " ".join(self.settings.scopes),
                "state": pending.state,
                "nonce": pending.nonce,
                "code_challenge": _challenge(pending.verifier),
                "code_challenge_method": "S256",
            }
        )
        endpoint = str(discovery["authorization_endpoint"])
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}", pending

    async def finish(self, code: str, redirect_uri: str, pending: Pending) -> Identity:
        """Exchange the code and verify the ID token; the signed-in user with their groups."""
        discovery = await self.discovery()
        secret = self.settings.client_secret.get_secret_value() if self.settings.client_secret else None
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": pending.verifier,
            "client_id": self.settings.client_id,
        }
        auth = httpx.BasicAuth(self.settings.client_id, secret) if secret is not None else httpx.USE_CLIENT_DEFAULT
        try:
            response = await self._client.post(
                str(discovery["token_endpoint"]), data=form, auth=auth, headers={"Accept": "application/json"}
            )
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as e:
            raise OidcError(f"the identity provider cannot be reached ({type(e).__name__})") from e
        if response.status_code != 200:
            logger.warning(
                "oidc: the token endpoint refused the code: %s %s", response.status_code, response.text[:300]
            )
            raise OidcError("the identity provider refused the sign-in")
        try:
            id_token = response.json()["id_token"]
        except (ValueError, KeyError, TypeError, RecursionError):
            raise OidcError("the identity provider sent no ID token") from None
        if not isinstance(id_token, str) or len(id_token) > MAX_DOCUMENT_BYTES:
            raise OidcError("the identity provider sent no usable ID token")
        claims = await self.verify(str(id_token), pending.nonce)
        return self.identity(claims)

    async def _key(self, kid: str | None) -> jwt.PyJWK:
        fresh = time.monotonic() - self._keys_read_at < JWKS_TTL
        if fresh and kid is not None and kid in self._keys:
            return self._keys[kid]
        # An unknown key id means the provider rotated its keys: read them again. ID tokens only come from the
        # provider's own token endpoint (never from the browser), so nobody else can make us read them often.
        discovery = await self.discovery()
        data = await self._get_json(str(discovery["jwks_uri"]))
        keys: dict[str, jwt.PyJWK] = {}
        for entry in data.get("keys", []) if isinstance(data.get("keys"), list) else []:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            try:
                key = jwt.PyJWK.from_dict(entry)
            except jwt.PyJWTError:
                continue
            keys[str(entry.get("kid", ""))] = key
        self._keys, self._keys_read_at = keys, time.monotonic()
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        if kid is None or kid not in self._keys:
            raise OidcError("the ID token is signed with a key the identity provider does not publish")
        return self._keys[kid]

    async def verify(self, id_token: str, nonce: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError:
            raise OidcError("the ID token is malformed") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise OidcError(f"the ID token's algorithm {str(algorithm)[:20]!r} is not accepted")
        kid = header.get("kid")
        key = await self._key(kid if isinstance(kid, str) else None)
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key=key.key,
                algorithms=[algorithm],
                audience=self.settings.client_id,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except (jwt.PyJWTError, TypeError, ValueError) as e:  # a key of another family than `alg`: TypeError
            raise OidcError(f"the ID token is not valid: {e}") from None
        audience = claims.get("aud")
        if isinstance(audience, list) and len(audience) > 1 and claims.get("azp") != self.settings.client_id:
            raise OidcError("the ID token was issued to another client")
        if not isinstance(claims.get("nonce"), str) or not secrets.compare_digest(claims["nonce"], nonce):
            raise OidcError("the ID token's nonce is not this sign-in's")
        return claims

    def identity(self, claims: dict[str, Any]) -> Identity:
        name = claims.get(self.settings.username_claim)
        if not isinstance(name, str) or not name or len(name) > 256 or any(ord(c) < 32 for c in name):
            raise OidcError(f"the ID token has no usable {self.settings.username_claim!r} claim")
        if name == "anonymous":
            raise OidcError("the user name 'anonymous' is reserved")
        raw = claims.get(self.settings.groups_claim, [])
        listed = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
        named = sorted({g for g in listed if isinstance(g, str) and g and len(g) <= MAX_GROUP_NAME})
        if len(named) > MAX_GROUPS:
            logger.warning("oidc: %s is in %d groups; the first %d (by name) count", name, len(named), MAX_GROUPS)
        groups = frozenset(named[:MAX_GROUPS])
        return Identity("user", self.settings.username_prefix + name, groups=groups, source="oidc")
