"""CI tokens: named, scoped, optionally expiring secrets for pipelines, kept in storage as SHA-256 hashes.

The secret is 256 random bits, so a fast hash is enough (no dictionary to guess from); the record is read from
storage on every use, so every replica sees a new or revoked token at once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass

from registry import paths
from registry.auth.access import Grant, Identity, Scope, ScopeError
from storage_backends import PathNotFound, StorageBackend

SECRET_PREFIX = "moorage_ci_"
SECRET_BYTES = 32
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")


class CiTokenError(Exception):
    pass


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name)) and name != "anonymous"


def looks_like_secret(password: str) -> bool:
    return password.startswith(SECRET_PREFIX)


def _hash(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _timestamp(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z") if value else None


def _parse_time(value: object) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass(frozen=True)
class CiToken:
    name: str
    id: str
    hash: str
    grants: tuple[Grant, ...]
    created_at: dt.datetime
    expires_at: dt.datetime | None

    def expired(self, now: dt.datetime | None = None) -> bool:
        return self.expires_at is not None and (now or _now()) >= self.expires_at

    def identity(self) -> Identity:
        return Identity("ci", self.name, self.grants, self.id)

    def to_json(self) -> bytes:
        record = {
            "name": self.name,
            "id": self.id,
            "hash": self.hash,
            "scopes": [str(grant) for grant in self.grants],
            "created_at": _timestamp(self.created_at),
            "expires_at": _timestamp(self.expires_at),
        }
        return json.dumps(record, indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes) -> CiToken:
        try:
            record = json.loads(data)
            created = _parse_time(record["created_at"])
            return cls(
                name=str(record["name"]),
                id=str(record["id"]),
                hash=str(record["hash"]),
                grants=tuple(Grant.from_scope(Scope.parse(text)) for text in record["scopes"]),
                created_at=created or _now(),
                expires_at=_parse_time(record.get("expires_at")),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise CiTokenError(f"unreadable CI token record: {e}") from None


def parse_grants(scopes: list[str]) -> tuple[Grant, ...]:
    try:
        grants = tuple(Grant.from_scope(scope) for scope in Scope.parse_many(scopes))
    except ScopeError as e:
        raise CiTokenError(str(e)) from None
    if not grants:
        raise CiTokenError("a CI token needs at least one scope (--scope 'repository:NAME:pull,push')")
    return grants


class CiTokenStore:
    def __init__(self, backend: StorageBackend) -> None:
        self.backend = backend

    async def create(self, name: str, scopes: list[str], lifetime: dt.timedelta | None = None) -> tuple[CiToken, str]:
        """A new token and its secret (shown once; only its hash is kept)."""
        if not valid_name(name):
            raise CiTokenError(f"invalid token name {name!r}: letters, digits, '.', '_', '-'; at most 128")
        grants = parse_grants(scopes)
        secret = SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
        created = _now().replace(microsecond=0)
        token = CiToken(
            name=name,
            id=secrets.token_hex(8),
            hash=_hash(secret),
            grants=grants,
            created_at=created,
            expires_at=created + lifetime if lifetime else None,
        )
        if not await self.backend.put_content(paths.ci_token(name), token.to_json(), exclusive=True):
            raise CiTokenError(f"a token named {name!r} exists already (revoke it first)")
        return token, secret

    async def get(self, name: str) -> CiToken | None:
        if not valid_name(name):
            return None
        try:
            data = await self.backend.get_content(paths.ci_token(name))
        except PathNotFound:
            return None
        return CiToken.from_json(data)

    async def list(self) -> list[CiToken]:
        try:
            entries = await self.backend.list(paths.CI_TOKENS)
        except PathNotFound:
            return []
        tokens = []
        for entry in entries:
            name = entry.path.rsplit("/", 1)[-1].removesuffix(".json")
            token = None if entry.is_dir else await self.get(name)
            if token is not None:
                tokens.append(token)
        return tokens

    async def revoke(self, name: str) -> bool:
        if await self.get(name) is None:
            return False
        await self.backend.delete(paths.ci_token(name))
        return True

    async def authenticate(self, name: str, secret: str) -> Identity | None:
        """The token's identity when `secret` is its secret and it has not expired; None otherwise."""
        token = await self.get(name)
        if token is None or token.expired():
            return None
        if not hmac.compare_digest(token.hash.encode(), _hash(secret).encode()):
            return None
        return token.identity()

    async def still_valid(self, name: str, token_id: str) -> bool:
        """For bearer tokens issued to a CI token: is that very token still there (not revoked, not replaced)?"""
        token = await self.get(name)
        return token is not None and token.id == token_id and not token.expired()
