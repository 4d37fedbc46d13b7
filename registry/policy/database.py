"""The policy tables of the metadata database: access rules, repository visibility, quotas, personal access tokens,
the groups of users who signed in through a directory or an identity provider, and the audit log of admin changes.

Unlike the index, nothing here can be derived from storage: the SQLite file is never replaced when unreadable, and
with PostgreSQL every replica shares the tables. Every change bumps `policy_version` in its own transaction and
writes its audit entry there too, so a change is never without its entry; each process polls that one row and
reloads the rules when it moves (registry/policy/service.py). Blocking calls: callers run them on threads.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.auth.settings import AccessRule
from registry.database import Engine, Sql, SqliteEngine, postgres_engine

SCHEMA = """
CREATE TABLE IF NOT EXISTS policy_version (id INTEGER PRIMARY KEY, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS access_rules (
    id TEXT PRIMARY KEY, repository TEXT NOT NULL, users TEXT NOT NULL, groups_ TEXT NOT NULL, actions TEXT NOT NULL,
    created_at REAL NOT NULL, created_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS visibility (
    repository TEXT PRIMARY KEY, public INTEGER NOT NULL, updated_at REAL NOT NULL, updated_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS quotas (
    repository TEXT PRIMARY KEY, bytes INTEGER NOT NULL, updated_at REAL NOT NULL, updated_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS quota_pending (
    repository TEXT NOT NULL, blob TEXT NOT NULL, size INTEGER NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (repository, blob)
);
CREATE TABLE IF NOT EXISTS personal_tokens (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL, hash TEXT NOT NULL, scopes TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL, last_used REAL, owner_source TEXT NOT NULL DEFAULT 'htpasswd'
);
CREATE INDEX IF NOT EXISTS personal_tokens_by_owner ON personal_tokens (owner);
CREATE TABLE IF NOT EXISTS known_users (
    name TEXT PRIMARY KEY, source TEXT NOT NULL, groups_ TEXT NOT NULL, seen_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_log (
    id TEXT PRIMARY KEY, at REAL NOT NULL, actor TEXT NOT NULL, address TEXT NOT NULL, action TEXT NOT NULL,
    target TEXT NOT NULL, detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_by_time ON audit_log (at, id)
"""
_SCHEMA_LOCK = "moorage-policy-schema"
VERSION_WAIT_SECONDS = 1.0
_QUOTA_LOCK = "moorage-quota:"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes an admin change, and from where: what its audit entry says."""

    name: str
    address: str = ""


@dataclass(frozen=True, slots=True)
class StoredRule:
    id: str
    rule: AccessRule
    created_at: float
    created_by: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "repository": self.rule.repository,
            "users": list(self.rule.users),
            "groups": list(self.rule.groups),
            "actions": list(self.rule.actions),
            "created_at": self.created_at,
            "created_by": self.created_by,
            "source": "api",
        }


@dataclass(frozen=True, slots=True)
class StoredSetting:
    """A repository glob's visibility (`value` 1 public, 0 private) or quota (`value` bytes)."""

    repository: str
    value: int
    updated_at: float
    updated_by: str


@dataclass(frozen=True, slots=True)
class StoredToken:
    id: str
    owner: str
    name: str
    hash: str
    scopes: tuple[str, ...]
    created_at: float
    expires_at: float | None
    last_used: float | None
    owner_source: str = "htpasswd"  # where its owner signs in: a user of the same name elsewhere is not its owner

    def expired(self, now: float | None = None) -> bool:
        return self.expires_at is not None and (now or time.time()) >= self.expires_at

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "owner": self.owner,
            "name": self.name,
            "scopes": list(self.scopes),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "last_used": self.last_used,
            "owner_source": self.owner_source,
        }


@dataclass(frozen=True, slots=True)
class KnownUser:
    """A user who signed in through a directory or an identity provider: where, with which groups, when last."""

    name: str
    source: str
    groups: frozenset[str]
    seen_at: float


SOURCE_RANK = {"oidc": 1, "ldap": 2, "htpasswd": 3}
"""Whose claim to a name wins: an operator's file over a directory over an identity provider (whose names users
may sometimes choose)."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: str
    at: float
    actor: str
    address: str
    action: str
    target: str
    detail: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "actor": self.actor,
            "address": self.address,
            "action": self.action,
            "target": self.target,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class PolicySnapshot:
    version: int
    rules: tuple[StoredRule, ...] = ()
    visibility: tuple[StoredSetting, ...] = ()
    quotas: tuple[StoredSetting, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class Counted:
    """What the index counts for a repository: its logical bytes, and which blobs of interest its manifests
    reference (those are in the logical bytes already)."""

    logical: int
    referenced: frozenset[str]


def new_id() -> str:
    return secrets.token_hex(8)


class PolicyDatabase:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        with engine.transaction(lock=_SCHEMA_LOCK) as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            if not engine.has_column(db, "personal_tokens", "owner_source"):  # made by an earlier build
                db.execute("ALTER TABLE personal_tokens ADD COLUMN owner_source TEXT NOT NULL DEFAULT 'htpasswd'")
            if not db.execute("SELECT 1 FROM policy_version WHERE id = 1").fetchall():
                db.execute("INSERT INTO policy_version (id, version) VALUES (1, 1)")

    @classmethod
    def open(cls, target: Path | str) -> PolicyDatabase:
        """In the PostgreSQL database at a URL, or the SQLite file at a path."""
        if isinstance(target, str):
            return cls(postgres_engine(target))
        return cls(SqliteEngine(target))

    def close(self) -> None:
        self.engine.close()

    # --- what every process follows

    def version(self) -> int:
        # Asked every quarter of a second: never held long by a database that is down (a shutdown waits for it).
        return int(self.engine.read("SELECT version FROM policy_version WHERE id = 1", wait=VERSION_WAIT_SECONDS)[0][0])

    def snapshot(self) -> PolicySnapshot:
        with self.engine.transaction() as db:  # one consistent view, version included
            version = int(db.execute("SELECT version FROM policy_version WHERE id = 1").fetchone()[0])
            rules = db.execute(
                "SELECT id, repository, users, groups_, actions, created_at, created_by FROM access_rules "
                "ORDER BY created_at, id"
            ).fetchall()
            visibility = db.execute(
                "SELECT repository, public, updated_at, updated_by FROM visibility ORDER BY repository"
            ).fetchall()
            quotas = db.execute(
                "SELECT repository, bytes, updated_at, updated_by FROM quotas ORDER BY repository"
            ).fetchall()
        return PolicySnapshot(
            version,
            tuple(
                StoredRule(
                    str(row[0]),
                    # As stored: checked when it was added (a later release's stricter checks must not drop it).
                    AccessRule.model_construct(
                        repository=str(row[1]),
                        users=json.loads(row[2]),
                        groups=json.loads(row[3]),
                        actions=json.loads(row[4]),
                    ),
                    float(row[5]),
                    str(row[6]),
                )
                for row in rules
            ),
            tuple(StoredSetting(str(r[0]), int(r[1]), float(r[2]), str(r[3])) for r in visibility),
            tuple(StoredSetting(str(r[0]), int(r[1]), float(r[2]), str(r[3])) for r in quotas),
        )

    # --- admin changes: each bumps the version and writes its audit entry in the same transaction

    @staticmethod
    def _changed(db: Sql, actor: Actor, action: str, target: str, detail: dict[str, Any]) -> None:
        db.execute("UPDATE policy_version SET version = version + 1 WHERE id = 1")
        PolicyDatabase._audit(db, actor, action, target, detail)

    @staticmethod
    def _audit(db: Sql, actor: Actor, action: str, target: str, detail: dict[str, Any]) -> None:
        db.execute(
            "INSERT INTO audit_log (id, at, actor, address, action, target, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (new_id(), time.time(), actor.name, actor.address, action, target, json.dumps(detail, sort_keys=True)),
        )

    def record(self, actor: Actor, action: str, target: str, detail: dict[str, Any]) -> None:
        """An audit entry for an admin action that changes nothing here (a repository deleted, a GC run)."""
        with self.engine.transaction() as db:
            self._audit(db, actor, action, target, detail)

    def add_rule(self, rule: AccessRule, actor: Actor) -> StoredRule:
        stored = StoredRule(new_id(), rule, time.time(), actor.name)
        with self.engine.transaction() as db:
            db.execute(
                "INSERT INTO access_rules (id, repository, users, groups_, actions, created_at, created_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    stored.id,
                    rule.repository,
                    json.dumps(rule.users),
                    json.dumps(rule.groups),
                    json.dumps(rule.actions),
                    stored.created_at,
                    actor.name,
                ),
            )
            self._changed(db, actor, "access-rule.create", stored.id, stored.as_dict())
        return stored

    def delete_rule(self, rule_id: str, actor: Actor) -> bool:
        with self.engine.transaction() as db:
            rows = db.execute(
                "DELETE FROM access_rules WHERE id = ? RETURNING repository, users, groups_, actions", (rule_id,)
            ).fetchall()
            if not rows:
                return False
            repository, users, groups, actions = rows[0]
            detail = {
                "repository": repository,
                "users": json.loads(users),
                "groups": json.loads(groups),
                "actions": json.loads(actions),
            }
            self._changed(db, actor, "access-rule.delete", rule_id, detail)
        return True

    def set_setting(self, table: str, repository: str, value: int, actor: Actor) -> StoredSetting:
        """A visibility (`table` "visibility", value 1 public / 0 private) or a quota ("quotas", value bytes)."""
        column = _SETTING_COLUMNS[table]
        now = time.time()
        with self.engine.transaction() as db:
            db.execute(
                f"INSERT INTO {table} (repository, {column}, updated_at, updated_by) VALUES (?, ?, ?, ?) "
                f"ON CONFLICT (repository) DO UPDATE SET {column} = excluded.{column}, "
                "updated_at = excluded.updated_at, updated_by = excluded.updated_by",
                (repository, value, now, actor.name),
            )
            self._changed(db, actor, f"{_SETTING_NAMES[table]}.set", repository, {column: value})
        return StoredSetting(repository, value, now, actor.name)

    def delete_setting(self, table: str, repository: str, actor: Actor) -> bool:
        if table not in _SETTING_COLUMNS:
            raise ValueError(f"unknown setting table {table!r}")
        with self.engine.transaction() as db:
            rows = db.execute(f"DELETE FROM {table} WHERE repository = ? RETURNING repository", (repository,))
            if not rows.fetchall():
                return False
            self._changed(db, actor, f"{_SETTING_NAMES[table]}.delete", repository, {})
        return True

    # --- personal access tokens (read on every use: a revocation holds at once on every replica)

    def add_token(self, token: StoredToken, actor: Actor) -> None:
        with self.engine.transaction() as db:
            db.execute(
                "INSERT INTO personal_tokens (id, owner, name, hash, scopes, created_at, expires_at, last_used, "
                "owner_source) VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?)",
                (
                    token.id,
                    token.owner,
                    token.name,
                    token.hash,
                    json.dumps(token.scopes),
                    token.created_at,
                    token.expires_at,
                    token.owner_source,
                ),
            )
            self._audit(db, actor, "token.create", token.id, {"owner": token.owner, "name": token.name})

    def token(self, token_id: str) -> StoredToken | None:
        rows = self.engine.read(
            "SELECT id, owner, name, hash, scopes, created_at, expires_at, last_used, owner_source "
            "FROM personal_tokens WHERE id = ?",
            (token_id,),
        )
        return _token(rows[0]) if rows else None

    def tokens(self, owner: str | None) -> list[StoredToken]:
        columns = "id, owner, name, hash, scopes, created_at, expires_at, last_used, owner_source"
        if owner is None:
            rows = self.engine.read(f"SELECT {columns} FROM personal_tokens ORDER BY created_at, id")
        else:
            rows = self.engine.read(
                f"SELECT {columns} FROM personal_tokens WHERE owner = ? ORDER BY created_at, id", (owner,)
            )
        return [_token(row) for row in rows]

    def delete_token(self, token_id: str, actor: Actor) -> bool:
        with self.engine.transaction() as db:
            rows = db.execute("DELETE FROM personal_tokens WHERE id = ? RETURNING owner, name", (token_id,)).fetchall()
            if not rows:
                return False
            self._audit(db, actor, "token.revoke", token_id, {"owner": rows[0][0], "name": rows[0][1]})
        return True

    def token_used(self, token_id: str, at: float) -> None:
        with self.engine.transaction() as db:
            db.execute("UPDATE personal_tokens SET last_used = ? WHERE id = ?", (at, token_id))

    # --- users who signed in through a directory or an identity provider: their groups, for their tokens

    def remember_user(self, name: str, source: str, groups: frozenset[str]) -> bool:
        """Record a sign-in; False (nothing written) when a source that ranks higher (SOURCE_RANK) holds the name."""
        with self.engine.transaction(lock="moorage-user:" + name) as db:
            rows = db.execute("SELECT source FROM known_users WHERE name = ?", (name,)).fetchall()
            if rows and SOURCE_RANK.get(str(rows[0][0]), 0) > SOURCE_RANK.get(source, 0):
                return False
            db.execute(
                "INSERT INTO known_users (name, source, groups_, seen_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET source = excluded.source, groups_ = excluded.groups_, "
                "seen_at = excluded.seen_at",
                (name, source, json.dumps(sorted(groups)), time.time()),
            )
        return True

    def known_user(self, name: str) -> KnownUser | None:
        rows = self.engine.read("SELECT source, groups_, seen_at FROM known_users WHERE name = ?", (name,))
        if not rows:
            return None
        source, groups, seen_at = rows[0]
        return KnownUser(name, str(source), frozenset(json.loads(groups)), float(seen_at))

    # --- the audit log

    def audit_entries(self, limit: int, before: tuple[float, str] | None = None) -> list[AuditEntry]:
        """Newest first; `before` (at, id) continues a page."""
        columns = "id, at, actor, address, action, target, detail"
        if before is None:
            rows = self.engine.read(f"SELECT {columns} FROM audit_log ORDER BY at DESC, id DESC LIMIT ?", (limit,))
        else:
            rows = self.engine.read(
                f"SELECT {columns} FROM audit_log WHERE at < ? OR (at = ? AND id < ?) ORDER BY at DESC, id DESC "
                "LIMIT ?",
                (before[0], before[0], before[1], limit),
            )
        return [
            AuditEntry(str(r[0]), float(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), json.loads(r[6]))
            for r in rows
        ]

    # --- quota reservations: blobs stored in a repository that no manifest of its references yet

    def reserve(
        self, repository: str, blob: str, size: int, limit: int, counted: Counted, expire_before: float
    ) -> tuple[int | None, bool]:
        """Count `blob` (`size` bytes) against `repository`'s `limit` unless that would pass it: (the usage that
        leaves no room, or None; whether this call counted it: False when it was counted already). `counted` is what
        the index said just before; reservations made since by others count in full. Serialized per repository on
        every replica, so two pushes racing for the last bytes cannot both pass."""
        with self.engine.transaction(lock=_QUOTA_LOCK + repository) as db:
            db.execute("DELETE FROM quota_pending WHERE repository = ? AND at < ?", (repository, expire_before))
            referenced = counted.referenced
            stale = [(repository, b) for b in referenced]
            if stale:
                db.executemany("DELETE FROM quota_pending WHERE repository = ? AND blob = ?", stale)
            pending = {
                str(row[0]): int(row[1])
                for row in db.execute(
                    "SELECT blob, size FROM quota_pending WHERE repository = ?", (repository,)
                ).fetchall()
            }
            if blob in referenced or blob in pending:
                return None, False
            current = counted.logical + sum(pending.values())
            if current + size > limit:
                return current, False
            db.execute(
                "INSERT INTO quota_pending (repository, blob, size, at) VALUES (?, ?, ?, ?)",
                (repository, blob, size, time.time()),
            )
            return None, True

    def pending_bytes(self, repository: str, expire_before: float) -> dict[str, int]:
        rows = self.engine.read(
            "SELECT blob, size FROM quota_pending WHERE repository = ? AND at >= ?", (repository, expire_before)
        )
        return {str(row[0]): int(row[1]) for row in rows}

    def release(self, repository: str, blob: str) -> None:
        with self.engine.transaction() as db:
            db.execute("DELETE FROM quota_pending WHERE repository = ? AND blob = ?", (repository, blob))


_SETTING_COLUMNS = {"visibility": "public", "quotas": "bytes"}
_SETTING_NAMES = {"visibility": "visibility", "quotas": "quota"}


def _token(row: Any) -> StoredToken:
    return StoredToken(
        id=str(row[0]),
        owner=str(row[1]),
        name=str(row[2]),
        hash=str(row[3]),
        scopes=tuple(json.loads(row[4])),
        created_at=float(row[5]),
        expires_at=float(row[6]) if row[6] is not None else None,
        last_used=float(row[7]) if row[7] is not None else None,
        owner_source=str(row[8]),
    )
