"""Bad bearer tokens, made the ways attackers make them: tampered claims, `alg: none`, an HMAC keyed with the public
key, a foreign key, and good signatures over bad claims (expired, another audience)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from registry.auth.bearer import PrivateKey, algorithm_for, key_id


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims_of(token: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(unb64(token.split(".")[1]))
    return payload


def claims(
    service: str, access: list[dict[str, Any]], *, sub: str = "alice", issuer: str = "moorage"
) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": issuer, "sub": sub, "aud": service, "exp": now + 300, "nbf": now - 1, "iat": now, "access": access}


def tampered(token: str, **changes: Any) -> str:
    """The token with its payload changed and its signature kept."""
    header, _, signature = token.split(".")
    payload = claims_of(token)
    payload.update(changes)
    return f"{header}.{b64(json.dumps(payload).encode())}.{signature}"


def alg_none(payload: dict[str, Any], kid: str) -> str:
    header = {"alg": "none", "typ": "JWT", "kid": kid}
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}."


def hmac_with_public_key(payload: dict[str, Any], key: PrivateKey) -> str:
    """The classic confusion: HS256 keyed with the public key's PEM, which a careless verifier would accept."""
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": key_id(key.public_key())}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def signed(payload: dict[str, Any], key: PrivateKey, *, kid: str | None = None) -> str:
    return jwt.encode(
        payload, key, algorithm=algorithm_for(key), headers={"kid": kid or key_id(key.public_key()), "typ": "JWT"}
    )


def foreign_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def read_signing_key(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key
