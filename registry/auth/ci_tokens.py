"""CI tokens: named, scoped, optionally expiring secrets for pipelines, kept as SHA-256 hashes: in the shared
metadata database with a PostgreSQL `database.url`, else in storage (which every replica shares as well).

The secret is 256 random bits, so a fast hash is enough (no dictionary to guess from); the record is read on every
use, so every replica sees a new or revoked token at once. Records written to storage before the registry moved to
PostgreSQL keep working: they are read (and revoked) where they are, and a new token cannot take their name.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from registry import paths
from registry.auth.access import Grant, Identity, Scope, ScopeError
from registry.database import DATABASE_ERRORS, Engine, postgres_engine
from storage_backends import PathNotFound, StorageBackend, StorageUnavailable

T = TypeVar("T")

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
                grants=tuple(Grant.from_scope(Scope.parse(text), check=False) for text in record["scopes"]),
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


class TokenRecords(Protocol):
    """Where token records live: each a JSON document under the token's name."""

    async def add(self, name: str, record: bytes) -> bool:
        """Store a new record; False when the name is taken."""
        ...

    async def get(self, name: str) -> bytes | None: ...

    async def names(self) -> list[str]: ...

    async def remove(self, name: str) -> None: ...

    def close(self) -> None:
        """Let go of what it holds (a database handle)."""
        ...


class StorageTokenRecords:
    def __init__(self, backend: StorageBackend) -> None:
        self.backend = backend

    async def add(self, name: str, record: bytes) -> bool:
        return await self.backend.put_content(paths.ci_token(name), record, exclusive=True)

    async def get(self, name: str) -> bytes | None:
        try:
            return await self.backend.get_content(paths.ci_token(name))
        except PathNotFound:
            return None

    async def names(self) -> list[str]:
        try:
            entries = await self.backend.list(paths.CI_TOKENS)
        except PathNotFound:
            return []
        return [entry.path.rsplit("/", 1)[-1].removesuffix(".json") for entry in entries if not entry.is_dir]

    async def remove(self, name: str) -> None:
        await self.backend.delete_file(paths.ci_token(name))

    def close(self) -> None:
        pass


UNREACHABLE = "the metadata database cannot be reached"
RECONNECT_SECONDS = 5.0
_TOKENS_SCHEMA = "CREATE TABLE IF NOT EXISTS ci_tokens (name TEXT PRIMARY KEY, record TEXT NOT NULL)"


class DatabaseTokenRecords:
    """In the shared database, over the records an older deployment left in storage (`legacy`)."""

    def __init__(self, connect: Callable[[], Engine], legacy: StorageTokenRecords) -> None:
        """`connect`: the database's engine, made at first use (a database down at start stops nothing)."""
        self.connect = connect
        self.legacy = legacy
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self._retry_at = 0.0

    def _connected(self) -> Engine:
        with self._lock:
            if time.monotonic() < self._retry_at:
                raise StorageUnavailable("CI tokens: the database failed a moment ago", UNREACHABLE)
            if self._engine is None:
                try:
                    engine = self.connect()
                    try:
                        with engine.transaction(lock="moorage-ci-tokens-schema") as db:
                            db.execute(_TOKENS_SCHEMA)
                    except BaseException:
                        engine.close()
                        raise
                except DATABASE_ERRORS:
                    self._retry_at = time.monotonic() + RECONNECT_SECONDS  # logins fail fast meanwhile
                    raise
                self._engine = engine
            return self._engine

    async def _run(self, fn: Callable[[Engine], T]) -> T:
        def run() -> T:
            engine = self._connected()
            try:
                return fn(engine)
            except DATABASE_ERRORS:
                with self._lock:  # the next logins answer at once instead of each waiting for the pool
                    self._retry_at = time.monotonic() + RECONNECT_SECONDS
                raise

        try:
            return await asyncio.to_thread(run)
        except DATABASE_ERRORS as e:
            raise StorageUnavailable(f"CI tokens: {e}", UNREACHABLE) from e

    async def add(self, name: str, record: bytes) -> bool:
        if await self.legacy.get(name) is not None:
            return False

        def insert(engine: Engine) -> bool:
            with engine.transaction() as db:
                row = db.execute(
                    "INSERT INTO ci_tokens (name, record) VALUES (?, ?) ON CONFLICT (name) DO NOTHING RETURNING name",
                    (name, record.decode()),
                ).fetchone()
            return row is not None

        return await self._run(insert)

    async def get(self, name: str) -> bytes | None:
        rows = await self._run(lambda engine: engine.read("SELECT record FROM ci_tokens WHERE name = ?", (name,)))
        if rows:
            return str(rows[0][0]).encode()
        return await self.legacy.get(name)

    async def names(self) -> list[str]:
        rows = await self._run(lambda engine: engine.read("SELECT name FROM ci_tokens"))
        return sorted({str(row[0]) for row in rows} | set(await self.legacy.names()))

    async def remove(self, name: str) -> None:
        def delete(engine: Engine) -> None:
            with engine.transaction() as db:
                db.execute("DELETE FROM ci_tokens WHERE name = ?", (name,))

        await self._run(delete)
        await self.legacy.remove(name)

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None


def token_records(backend: StorageBackend, database_url: str | None) -> TokenRecords:
    """The database's table with a PostgreSQL `database.url`, else storage."""
    if database_url is not None and database_url.startswith(("postgresql://", "postgres://")):
        return DatabaseTokenRecords(lambda: postgres_engine(database_url), StorageTokenRecords(backend))
    return StorageTokenRecords(backend)


class CiTokenStore:
    def __init__(self, records: TokenRecords) -> None:
        self.records = records

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
        if not await self.records.add(name, token.to_json()):
            raise CiTokenError(f"a token named {name!r} exists already (revoke it first)")
        return token, secret

    async def get(self, name: str) -> CiToken | None:
        if not valid_name(name):
            return None
        data = await self.records.get(name)
        return CiToken.from_json(data) if data is not None else None

    async def list(self) -> list[CiToken]:
        tokens = []
        for name in await self.records.names():
            token = await self.get(name)
            if token is not None:
                tokens.append(token)
        return tokens

    async def revoke(self, name: str) -> bool:
        if await self.get(name) is None:
            return False
        await self.records.remove(name)
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
