"""Bearer tokens (JWT, Docker token spec): signing keys, issuing, and verifying with the algorithm pinned per key.

Each key is known by its `kid` (libtrust's key id, as Distribution computes it), so a rotated-out key can stay
trusted until its tokens expire. A token whose header names an algorithm other than its key's (`none`, or an HMAC
keyed with the public key) is refused, as is one for another audience (service), expired, or not yet valid.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from registry import paths
from registry.auth.access import Identity
from registry.auth.settings import ExternalIssuerSettings, TokenSettings
from storage_backends import StorageBackend

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey
LEEWAY_SECONDS = 10
REFRESH_USE = "refresh"
PERSONAL_TOKEN_CLAIM = "moorage_pat"
GROUPS_CLAIM = "moorage_groups"
SOURCE_CLAIM = "moorage_source"
CI_TOKEN_CLAIM = "moorage_ci"  # the CI token's record id: its revocation ends the tokens issued to it at once
KIND_CLAIM = "moorage_kind"
CREDENTIAL_CLAIM = "moorage_cred"  # an htpasswd user's tokens: the mark of the password they were got with
_CURVE_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


class KeyFileError(Exception):
    """A key file that cannot be used."""


class InvalidToken(Exception):
    """Why a token was refused; the text is for the server log, never for the client."""


def algorithm_for(key: PrivateKey | PublicKey) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        try:
            return _CURVE_ALGORITHMS[key.curve.name]
        except KeyError:
            raise KeyFileError(f"unsupported elliptic curve {key.curve.name}") from None
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise KeyFileError(f"RSA key of {key.key_size} bits: at least 2048 needed")
        return "RS256"
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise KeyFileError(f"unsupported key type {type(key).__name__}")


def key_id(public_key: PublicKey) -> str:
    """libtrust's key id (what Distribution matches `kid` against): the SHA-256 of the DER public key, first 240
    bits in base32, in groups of four."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    text = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(text[i : i + 4] for i in range(0, len(text), 4))


def load_private_key(data: bytes, source: str) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{source}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"{source}: unsupported key type {type(key).__name__}")
    algorithm_for(key)
    return key


def load_public_keys(data: bytes, source: str) -> list[PublicKey]:
    """Every public key in a PEM file: public keys and certificates (a bundle may hold several)."""
    keys: list[PublicKey] = []
    try:
        for cert in x509.load_pem_x509_certificates(data) if b"CERTIFICATE" in data else []:
            keys.append(_public(cert.public_key(), source))
        if b"PUBLIC KEY" in data:
            keys.append(_public(serialization.load_pem_public_key(data), source))
    except ValueError as e:
        raise KeyFileError(f"{source}: unreadable PEM ({e})") from None
    if not keys:
        raise KeyFileError(f"{source}: no public key or certificate in it")
    return keys


def _public(key: Any, source: str) -> PublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise KeyFileError(f"{source}: unsupported key type {type(key).__name__}")
    algorithm_for(key)
    return key


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"{what} {path}: {e.strerror or e}") from None


async def stored_signing_key(backend: StorageBackend) -> PrivateKey:
    """The generated key every replica shares: the first process to start creates it, the others read it."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    await backend.put_content(paths.TOKEN_SIGNING_KEY, pem, exclusive=True)
    return load_private_key(await backend.get_content(paths.TOKEN_SIGNING_KEY), paths.TOKEN_SIGNING_KEY)


@dataclass(frozen=True)
class VerificationKey:
    key: Any  # a public key, or a PyJWK's key
    algorithms: tuple[str, ...]


@dataclass(frozen=True)
class Issued:
    token: str
    expires_in: int
    issued_at: str


class TokenAuthority:
    """Issues access and refresh tokens with one signing key; verifies them with it and the previous keys."""

    def __init__(self, settings: TokenSettings, signing_key: PrivateKey) -> None:
        self.settings = settings
        self.service = settings.service
        self.issuer = settings.issuer
        self.signing_key = signing_key
        self.algorithm = algorithm_for(signing_key)
        self.kid = key_id(signing_key.public_key())
        self.keys: dict[str, VerificationKey] = {self.kid: VerificationKey(signing_key.public_key(), (self.algorithm,))}
        for path in settings.previous_keys:
            for public in load_public_keys(_read(path, "auth.token.previous_keys"), str(path)):
                self.keys.setdefault(key_id(public), VerificationKey(public, (algorithm_for(public),)))
        self.external = ExternalIssuer(settings.external) if settings.external else None

    @classmethod
    async def create(cls, settings: TokenSettings, backend: StorageBackend) -> TokenAuthority:
        if settings.signing_key is not None:
            key = load_private_key(_read(settings.signing_key, "auth.token.signing_key"), str(settings.signing_key))
        else:
            key = await stored_signing_key(backend)
        return cls(settings, key)

    def _sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.signing_key, algorithm=self.algorithm, headers={"kid": self.kid, "typ": "JWT"})

    def _base_claims(self, identity: Identity, lifetime: float) -> tuple[dict[str, Any], int]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": identity.name,
            "aud": self.service,
            "exp": now + int(lifetime),
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_urlsafe(16),
            KIND_CLAIM: identity.kind,
        }
        if identity.kind == "ci":
            claims[CI_TOKEN_CLAIM] = identity.token_id
        elif identity.token_id:
            claims[PERSONAL_TOKEN_CLAIM] = identity.token_id
        if identity.groups:
            claims[GROUPS_CLAIM] = sorted(identity.groups)
        if identity.source:
            claims[SOURCE_CLAIM] = identity.source
        if identity.credential:
            claims[CREDENTIAL_CLAIM] = identity.credential
        return claims, now

    def issue(self, identity: Identity, access: list[dict[str, Any]]) -> Issued:
        claims, now = self._base_claims(identity, self.settings.expiry)
        claims["access"] = access
        issued_at = dt.datetime.fromtimestamp(now, dt.UTC).isoformat().replace("+00:00", "Z")
        return Issued(self._sign(claims), int(self.settings.expiry), issued_at)

    def issue_refresh(self, identity: Identity) -> str:
        claims, _ = self._base_claims(identity, self.settings.refresh_expiry)
        claims["token_use"] = REFRESH_USE
        return self._sign(claims)

    def verify(self, token: str, *, refresh: bool = False) -> dict[str, Any]:
        """The claims of a valid token of ours (an access token, or with `refresh` a refresh token)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise InvalidToken(f"malformed token: {e}") from None
        kid = header.get("kid")
        known = self.keys.get(kid) if isinstance(kid, str) else None
        if known is None:
            if self.external is not None and not refresh:
                return self.external.verify(token, header, self.service)
            raise InvalidToken(f"unknown key id {kid!r}")
        claims = _decode(token, known, audience=self.service, issuer=self.issuer)
        if (claims.get("token_use") == REFRESH_USE) != refresh:
            raise InvalidToken("a refresh token used as an access token, or the other way round")
        return claims


class ExternalIssuer:
    """Tokens of another issuer, checked with its public keys (a PEM file, or a JWKS file)."""

    def __init__(self, settings: ExternalIssuerSettings) -> None:
        self.issuer = settings.issuer
        algorithms = tuple(settings.algorithms)
        self.keys: dict[str | None, VerificationKey] = {}
        if settings.public_key is not None:
            data = _read(settings.public_key, "auth.token.external.public_key")
            for public in load_public_keys(data, str(settings.public_key)):
                allowed = tuple(a for a in algorithms if _compatible(a, public)) or (algorithm_for(public),)
                self.keys[key_id(public)] = VerificationKey(public, allowed)
        else:
            assert settings.jwks is not None
            data = _read(settings.jwks, "auth.token.external.jwks")
            try:
                keyset = jwt.PyJWKSet.from_dict(json.loads(data))
            except (ValueError, jwt.PyJWTError) as e:
                raise KeyFileError(f"auth.token.external.jwks {settings.jwks}: {e}") from None
            for jwk in keyset.keys:
                allowed = tuple(a for a in algorithms if _compatible(a, jwk.key))
                if jwk.algorithm_name and jwk.algorithm_name in algorithms:
                    allowed = (jwk.algorithm_name,)
                if allowed:
                    self.keys[jwk.key_id] = VerificationKey(jwk.key, allowed)
        if not self.keys:
            raise KeyFileError("auth.token.external: no usable key for the configured algorithms")

    def verify(self, token: str, header: dict[str, Any], audience: str) -> dict[str, Any]:
        kid = header.get("kid")
        known = self.keys.get(kid) if isinstance(kid, str) else None
        if known is None and len(self.keys) == 1 and kid is None:
            known = next(iter(self.keys.values()))
        if known is None:
            raise InvalidToken(f"unknown key id {kid!r}")
        claims = _decode(token, known, audience=audience, issuer=self.issuer)
        if claims.get("token_use") == REFRESH_USE:
            raise InvalidToken("a refresh token used as an access token")
        claims[KIND_CLAIM] = "external"
        return claims


def _compatible(algorithm: str, key: Any) -> bool:
    if algorithm.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey)
    if algorithm.startswith("ES"):
        return isinstance(key, ec.EllipticCurvePublicKey) and _CURVE_ALGORITHMS.get(key.curve.name) == algorithm
    if algorithm == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey)
    return False


def _decode(token: str, known: VerificationKey, *, audience: str, issuer: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            known.key,
            algorithms=list(known.algorithms),
            audience=audience,
            issuer=issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "iat", "aud", "iss"], "verify_signature": True},
        )
    except jwt.PyJWTError as e:
        raise InvalidToken(f"{type(e).__name__}: {e}") from None
    if not isinstance(claims.get("sub", ""), str):
        raise InvalidToken("sub is not a string")
    return claims
