"""Issuing and verifying bearer tokens: pinned algorithms, audience, expiry, kid, rotation, external issuers."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from registry import paths
from registry.auth.access import ANONYMOUS_IDENTITY, Identity
from registry.auth.bearer import KIND_CLAIM, InvalidToken, KeyFileError, TokenAuthority, key_id, load_private_key
from registry.auth.settings import ExternalIssuerSettings, TokenSettings
from storage_backends import StorageBackend, create_backend

from .forge import alg_none, claims, claims_of, foreign_key, hmac_with_public_key, signed, tampered

ACCESS = [{"type": "repository", "name": "team/app", "actions": ["pull"]}]
ALICE = Identity("user", "alice")


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[StorageBackend]:
    backend = create_backend("filesystem", {"root": tmp_path / "data", "fsync": False})
    await backend.start()
    yield backend
    await backend.aclose()


@pytest.fixture
async def authority(backend: StorageBackend) -> TokenAuthority:
    return await TokenAuthority.create(TokenSettings(enabled=True, service="registry.test"), backend)


async def test_issued_tokens_follow_the_token_spec(authority: TokenAuthority) -> None:
    issued = authority.issue(ALICE, ACCESS)
    header = jwt.get_unverified_header(issued.token)
    assert header == {"alg": "ES256", "typ": "JWT", "kid": authority.kid}
    payload = claims_of(issued.token)
    assert payload["iss"] == "moorage" and payload["sub"] == "alice" and payload["aud"] == "registry.test"
    assert payload["access"] == ACCESS and payload["exp"] - payload["iat"] == 300 == issued.expires_in
    assert {"nbf", "jti"} <= set(payload)
    assert authority.verify(issued.token)["access"] == ACCESS
    assert claims_of(authority.issue(ANONYMOUS_IDENTITY, []).token)["sub"] == ""


async def test_kid_is_libtrust_style(authority: TokenAuthority) -> None:
    groups = authority.kid.split(":")
    assert len(groups) == 12 and all(len(group) == 4 for group in groups)


async def test_every_replica_shares_the_generated_key(backend: StorageBackend, authority: TokenAuthority) -> None:
    again = await TokenAuthority.create(TokenSettings(enabled=True, service="registry.test"), backend)
    assert again.kid == authority.kid
    assert again.verify(authority.issue(ALICE, ACCESS).token)
    assert b"PRIVATE KEY" in await backend.get_content(paths.TOKEN_SIGNING_KEY)


async def test_bad_tokens_are_refused(authority: TokenAuthority) -> None:
    good = authority.issue(ALICE, ACCESS).token
    key = authority.signing_key
    service = authority.service
    bad = {
        "tampered": tampered(good, access=[{"type": "repository", "name": "secret", "actions": ["push"]}]),
        "tampered subject": tampered(good, sub="admin"),
        "alg none": alg_none(claims(service, ACCESS), authority.kid),
        "hmac keyed with the public key": hmac_with_public_key(claims(service, ACCESS), key),
        "expired": signed({**claims(service, ACCESS), "exp": int(time.time()) - 120}, key),
        "not yet valid": signed({**claims(service, ACCESS), "nbf": int(time.time()) + 600}, key),
        "wrong audience": signed(claims("another-registry", ACCESS), key),
        "wrong issuer": signed(claims(service, ACCESS, issuer="someone"), key),
        "foreign key, our kid": signed(claims(service, ACCESS), foreign_key(), kid=authority.kid),
        "foreign key": signed(claims(service, ACCESS), foreign_key()),
        "no expiry": signed({k: v for k, v in claims(service, ACCESS).items() if k != "exp"}, key),
        "garbage": "not.a.token",
        "refresh token as access token": authority.issue_refresh(ALICE),
    }
    for name, token in bad.items():
        with pytest.raises(InvalidToken):
            authority.verify(token)
            pytest.fail(f"{name}: accepted")


async def test_refresh_tokens_only_refresh(authority: TokenAuthority) -> None:
    refresh = authority.issue_refresh(ALICE)
    assert authority.verify(refresh, refresh=True)["sub"] == "alice"
    with pytest.raises(InvalidToken):
        authority.verify(authority.issue(ALICE, ACCESS).token, refresh=True)


async def test_configured_key_and_previous_keys(tmp_path: Path, backend: StorageBackend) -> None:
    old = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    new = ec.generate_private_key(ec.SECP384R1())
    old_pem, new_pem, old_public = tmp_path / "old.pem", tmp_path / "new.pem", tmp_path / "old.pub"
    for path, key in ((old_pem, old), (new_pem, new)):
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    old_public.write_bytes(
        old.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    before = await TokenAuthority.create(TokenSettings(enabled=True, signing_key=old_pem), backend)
    assert before.algorithm == "RS256"
    token = before.issue(ALICE, ACCESS).token
    after = await TokenAuthority.create(
        TokenSettings(enabled=True, signing_key=new_pem, previous_keys=[old_public]), backend
    )
    assert after.algorithm == "ES384" and after.kid != before.kid
    assert after.verify(token)["sub"] == "alice"  # rotated out, still trusted until it expires
    assert after.verify(after.issue(ALICE, ACCESS).token)
    without_old = await TokenAuthority.create(TokenSettings(enabled=True, signing_key=new_pem), backend)
    with pytest.raises(InvalidToken):
        without_old.verify(token)


def test_weak_or_unreadable_keys_are_refused(tmp_path: Path) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = small.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(KeyFileError, match="2048"):
        load_private_key(pem, "small.pem")
    with pytest.raises(KeyFileError, match="PEM"):
        load_private_key(b"nonsense", "bad.pem")


async def test_external_issuer_with_a_public_key(tmp_path: Path, backend: StorageBackend) -> None:
    issuer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = tmp_path / "issuer.pem"
    public.write_bytes(
        issuer_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    external = ExternalIssuerSettings(issuer="https://auth.example", public_key=public, algorithms=["RS256"])
    authority = await TokenAuthority.create(TokenSettings(enabled=True, service="reg", external=external), backend)
    token = signed(claims("reg", ACCESS, issuer="https://auth.example"), issuer_key)
    verified = authority.verify(token)
    assert verified[KIND_CLAIM] == "external" and verified["access"] == ACCESS
    for bad in (
        signed(claims("reg", ACCESS, issuer="moorage"), issuer_key),  # its key, another issuer's name
        signed(claims("other", ACCESS, issuer="https://auth.example"), issuer_key),
        alg_none(claims("reg", ACCESS, issuer="https://auth.example"), key_id(issuer_key.public_key())),
        hmac_with_public_key(claims("reg", ACCESS, issuer="https://auth.example"), issuer_key),
    ):
        with pytest.raises(InvalidToken):
            authority.verify(bad)


async def test_external_issuer_with_a_jwks_file(tmp_path: Path, backend: StorageBackend) -> None:
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(issuer_key.public_key()))
    jwk.update({"kid": "key-1", "alg": "ES256", "use": "sig"})
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    external = ExternalIssuerSettings(issuer="idp", jwks=jwks)
    authority = await TokenAuthority.create(TokenSettings(enabled=True, service="reg", external=external), backend)
    good = signed(claims("reg", ACCESS, issuer="idp"), issuer_key, kid="key-1")
    assert authority.verify(good)["sub"] == "alice"
    with pytest.raises(InvalidToken):
        authority.verify(signed(claims("reg", ACCESS, issuer="idp"), foreign_key(), kid="key-1"))


def test_external_issuer_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        ExternalIssuerSettings(issuer="x")
    with pytest.raises(ValueError, match="public-key algorithms"):
        ExternalIssuerSettings(issuer="x", jwks=tmp_path / "j", algorithms=["HS256"])
