"""The index in an SQLite file (WAL mode: several processes share it, readers never wait for the writer).

Blocking calls: the async side (registry/index/sqlite.py) runs them on threads. One connection writes, one reads,
each behind its own lock, so a rebuild's writes never hold up a catalog page.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import math
import re
import sqlite3
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from registry.database import (
    DATABASE_ERRORS,
    Dialect,
    Engine,
    EngineCorrupt,
    Sql,
    SqliteEngine,
    glob_pattern,
    postgres_engine,
    remove_files,
)
from registry.index.base import (
    BrowseOrder,
    ManifestRecord,
    RepositoryRow,
    RepositorySnapshot,
    RepositorySummary,
    SearchHit,
    SearchQuery,
    TagRecord,
    TagSummary,
)
from registry.index.query import rank_sql
from registry.media_types import INDEXES

# 2: push-time indexes for updates by row; 3: listing counters, blobs; 4: reference counts; 5: every reference GC
# follows (children, lenient blobs), subjects, GC's review queues (an older file is rebuilt)
SCHEMA_VERSION = 5
DESCRIPTION_KEYS = ("org.opencontainers.image.description", "description")
_BATCH = 500  # digests per `IN (...)`: well under SQLite's limit on bound parameters
RARE_LABEL_ROWS = 20_000  # a label on fewer rows than this drives a filter search from its own index
FULL_GC_NEEDED = "gc_full_needed"  # meta: why the next collection must mark over storage ("" once one has)
MAX_KEPT_WALK = 10_000  # manifests one review may walk through to find what keeps a manifest
_TABLES = (
    "meta",
    "repositories",
    "manifests",
    "tags",
    "labels",
    "platforms",
    "blobs",
    "repository_blobs",
    "blob_refs",
    "gc_blob_review",
    "gc_blob_links",
    "gc_manifest_review",
)
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS repositories (
    name TEXT PRIMARY KEY,
    description TEXT,
    pushed_at REAL,
    pulls INTEGER NOT NULL DEFAULT 0,
    tag_count INTEGER NOT NULL DEFAULT 0,
    size INTEGER NOT NULL DEFAULT 0,
    logical INTEGER NOT NULL DEFAULT 0,
    added INTEGER NOT NULL DEFAULT 0,
    removed INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS manifests (
    repository TEXT NOT NULL,
    digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    artifact_type TEXT,
    size INTEGER NOT NULL,
    platforms TEXT NOT NULL,
    created TEXT,
    labels TEXT NOT NULL,
    pushed_at REAL NOT NULL,
    blobs TEXT NOT NULL DEFAULT '[]',
    manifest_bytes INTEGER NOT NULL DEFAULT 0,
    subject TEXT,
    PRIMARY KEY (repository, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS manifests_by_subject ON manifests (repository, subject);
CREATE TABLE IF NOT EXISTS tags (
    repository TEXT NOT NULL,
    tag TEXT NOT NULL,
    digest TEXT NOT NULL,
    pushed_at REAL NOT NULL,
    pulls INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (repository, tag)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tags_by_digest ON tags (repository, digest);
CREATE INDEX IF NOT EXISTS tags_by_push ON tags (repository, pushed_at);
CREATE INDEX IF NOT EXISTS manifests_by_push ON manifests (repository, pushed_at);
CREATE INDEX IF NOT EXISTS repositories_by_push ON repositories (pushed_at);
CREATE TABLE IF NOT EXISTS labels (
    repository TEXT NOT NULL, digest TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS labels_by_key ON labels (key, value);
CREATE INDEX IF NOT EXISTS labels_by_manifest ON labels (repository, digest);
CREATE TABLE IF NOT EXISTS platforms (repository TEXT NOT NULL, digest TEXT NOT NULL, platform TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS platforms_by_name ON platforms (platform);
CREATE INDEX IF NOT EXISTS platforms_by_manifest ON platforms (repository, digest);
CREATE TABLE IF NOT EXISTS blobs (
    repository TEXT NOT NULL, digest TEXT NOT NULL, blob TEXT NOT NULL, size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS blobs_by_blob ON blobs (blob, repository);
CREATE INDEX IF NOT EXISTS blobs_by_manifest ON blobs (repository, digest);
CREATE TABLE IF NOT EXISTS repository_blobs (
    repository TEXT NOT NULL, blob TEXT NOT NULL, size INTEGER NOT NULL, refs INTEGER NOT NULL,
    PRIMARY KEY (repository, blob)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blob_refs (
    blob TEXT PRIMARY KEY, size INTEGER NOT NULL, repositories INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gc_blob_review (blob TEXT PRIMARY KEY, since REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS gc_blob_review_by_time ON gc_blob_review (since);
CREATE TABLE IF NOT EXISTS gc_blob_links (
    blob TEXT NOT NULL, repository TEXT NOT NULL, PRIMARY KEY (blob, repository)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gc_manifest_review (
    repository TEXT NOT NULL, digest TEXT NOT NULL, since REAL NOT NULL, due REAL NOT NULL,
    PRIMARY KEY (repository, digest)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS gc_manifest_review_by_time ON gc_manifest_review (due);
"""
_MANIFEST_COLUMNS = (
    "digest, media_type, artifact_type, size, platforms, created, labels, pushed_at, blobs, manifest_bytes, subject"
)
_SET_META = "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
_PER_MANIFEST = ("manifests", "labels", "platforms")  # and `blobs`, through the reference counts
# What one record may hold: enough for any real image, bounded for the rest (a 4 MiB config of labels).
INT64_MAX = 2**63 - 1
MAX_TEXT = 4096
MAX_LABELS = 512
MAX_PLATFORMS = 256
_SURROGATE = re.compile("[\ud800-\udfff]")


class IndexCorrupt(Exception):
    """The file is not a usable index: delete it and build a new one."""


class SchemaNewer(Exception):
    """The shared database was upgraded by a newer release."""


def _pull_counts(engine: Engine, db: Sql) -> tuple[list[Any], list[Any]]:
    """The pull counts of an index of an older schema: (repository, pulls) and (repository, tag, pulls)."""
    repositories: list[Any] = []
    tags: list[Any] = []
    if engine.has_column(db, "repositories", "pulls"):
        repositories = db.execute("SELECT name, pulls FROM repositories WHERE pulls > 0").fetchall()
    if engine.has_column(db, "tags", "pulls"):
        tags = db.execute("SELECT repository, tag, pulls FROM tags WHERE pulls > 0").fetchall()
    return repositories, tags


class Database:
    """The index's tables, in SQLite (`open`) or PostgreSQL (`connect`): see registry/database.py."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect: Dialect = engine.dialect
        self.where = engine.where
        try:
            self._prepare()
        except sqlite3.DatabaseError as e:
            engine.close()
            raise IndexCorrupt(f"{engine.where}: {e}") from e
        except BaseException:
            engine.close()
            raise

    @classmethod
    def open(cls, path: Path) -> Database:
        """The index in the SQLite file at `path`; a corrupt file is replaced by an empty index (a rebuild fills
        it)."""
        try:
            return cls(SqliteEngine(path))
        except (IndexCorrupt, EngineCorrupt):
            remove_files(path)
            return cls(SqliteEngine(path))

    @classmethod
    def connect(cls, url: str) -> Database:
        """The index in the PostgreSQL database at `url` (`postgresql://user:password@host:port/database`)."""
        return cls(postgres_engine(url))

    def _prepare(self) -> None:
        # One process at a time creates or replaces the schema (PostgreSQL: under an advisory lock).
        with self.engine.transaction(lock="moorage-index-schema") as db:
            version = self._schema_version(db)
            if version is not None and version > SCHEMA_VERSION and self.dialect == "postgresql":
                # Shared by every replica: a newer release's tables are never dropped by an older one (during a
                # rolling update the old replicas wait, not ready, instead of undoing the upgrade).
                raise SchemaNewer(
                    f"{self.where} holds schema {version}, newer than this release's {SCHEMA_VERSION}: "
                    "upgrade this replica"
                )
            kept: tuple[list[Any], list[Any]] = ([], [])
            if version is not None and version != SCHEMA_VERSION:
                kept = _pull_counts(self.engine, db)
                for table in _TABLES:
                    db.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            # Pull counts are the one thing storage does not hold: they outlive the rebuild a new schema needs
            # (the rebuild replaces these placeholder rows and keeps their counts; storage drops the gone ones).
            if kept[0] or kept[1]:
                db.executemany("INSERT INTO repositories (name, pulls) VALUES (?, ?)", kept[0])
                db.executemany(
                    "INSERT INTO tags (repository, tag, digest, pushed_at, pulls) VALUES (?, ?, '', 0, ?)", kept[1]
                )
            if version != SCHEMA_VERSION:
                # New or rebuilt: GC's review queues know nothing of what came before, so the first collection
                # marks over storage (registry/gc/modes.py).
                db.execute(_SET_META, (FULL_GC_NEEDED, f"schema {SCHEMA_VERSION} created"))
            db.execute(_SET_META, ("schema", str(SCHEMA_VERSION)))

    def healthy(self) -> bool:
        return self.engine.healthy()

    def answers(self) -> bool:
        """Whether the database server answers a trivial query now."""
        try:
            return bool(self.engine.read("SELECT 1"))
        except DATABASE_ERRORS:
            return False

    def _schema_version(self, db: Sql) -> int | None:
        if not self.engine.table_exists(db, "meta"):
            return None
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        return int(row[0]) if row is not None and str(row[0]).isdigit() else 0

    def close(self) -> None:
        self.engine.close()

    def _transaction(self, lock: str | None = None) -> contextlib.AbstractContextManager[Sql]:
        """A write transaction; `lock` (a repository's name) makes writers of the same repository take turns."""
        return self.engine.transaction(lock)

    def _read(self, sql: str, parameters: Iterable[Any] = ()) -> list[Any]:
        return self.engine.read(sql, tuple(parameters))

    # Meta: schema version, the storage's index epoch, the position in the change records.

    def get_meta(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, values: Mapping[str, str]) -> None:
        with self._transaction() as db:
            db.executemany(_SET_META, list(values.items()))

    def claim(self, key: str, owner: str, seconds: float) -> bool:
        """Take (or renew) the lease `key` for `seconds` unless another owner holds it; whether `owner` holds it."""
        now = time.time()
        with self._transaction(lock=f"meta:{key}") as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row is not None:
                holder, _, until = str(row[0]).rpartition("@")
                if holder != owner and float(until or 0) > now:
                    return False
            db.execute(_SET_META, (key, f"{owner}@{now + seconds}"))
        return True

    def advance(self, key: str, value: int) -> bool:
        """Move the counter `key` up to `value` unless it is there (or past it) already; whether this call moved it:
        of any number of processes asking for one value, exactly one wins (GC's scheduled slots)."""
        text = f"{value:020d}"
        with self._transaction(lock=f"meta:{key}") as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row is not None and str(row[0]) >= text:
                return False
            db.execute(_SET_META, (key, text))
        return True

    def release(self, key: str, owner: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM meta WHERE key = ? AND value LIKE ?", (key, f"{owner}@%"))

    # Writes.

    def known_manifests(self, name: str) -> dict[str, ManifestRecord]:
        rows = self._read(f"SELECT {_MANIFEST_COLUMNS} FROM manifests WHERE repository = ?", (name,))
        return {row[0]: _manifest(row) for row in rows}

    def replace(self, name: str, snapshot: RepositorySnapshot | None) -> None:
        """Make the index hold `snapshot` for `name` (None: the repository is gone). Pull counts are kept."""
        snapshot = storable(snapshot) if snapshot is not None else None
        with self._transaction(lock=name) as db:
            pulls = dict(db.execute("SELECT tag, pulls FROM tags WHERE repository = ? AND pulls > 0", (name,)))
            released: list[str] = []
            _drop_all_references(db, name, released)
            for table in (*_PER_MANIFEST, "tags"):
                db.execute(f"DELETE FROM {table} WHERE repository = ?", (name,))
            if snapshot is None:
                db.execute("DELETE FROM repositories WHERE name = ?", (name,))
                db.execute("DELETE FROM gc_manifest_review WHERE repository = ?", (name,))
                _review_unreferenced(db, name, released)
                return
            manifests = {m.digest: m for m in snapshot.manifests}
            logical = _insert_manifests(db, name, snapshot.manifests)
            db.executemany(
                "INSERT INTO tags (repository, tag, digest, pushed_at, pulls) VALUES (?, ?, ?, ?, ?)",
                [(name, t.tag, t.digest, t.pushed_at, pulls.get(t.tag, 0)) for t in snapshot.tags],
            )
            _review_unreferenced(db, name, released)
            db.execute(
                "DELETE FROM gc_manifest_review WHERE repository = ? AND NOT EXISTS (SELECT 1 FROM manifests m "
                "WHERE m.repository = gc_manifest_review.repository AND m.digest = gc_manifest_review.digest)",
                (name,),
            )
            # Read whole: every untagged manifest is up for review (a review that finds it kept postpones it).
            db.execute(
                "INSERT INTO gc_manifest_review (repository, digest, since, due) "
                "SELECT repository, digest, pushed_at, pushed_at FROM manifests m WHERE m.repository = ? "
                "AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repository = m.repository AND t.digest = m.digest) "
                "ON CONFLICT (repository, digest) DO UPDATE SET since = excluded.since, due = excluded.due",
                (name,),
            )
            pushed = [t.pushed_at for t in snapshot.tags] + [m.pushed_at for m in snapshot.manifests]
            db.execute(
                "INSERT INTO repositories (name, description, pushed_at, tag_count, size, logical) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET description = excluded.description, "
                "pushed_at = excluded.pushed_at, tag_count = excluded.tag_count, size = excluded.size, "
                "logical = excluded.logical, added = repositories.added + 1, removed = repositories.removed + 1",
                (
                    name,
                    _description(snapshot, manifests),
                    max(pushed, default=None),
                    len(snapshot.tags),
                    min(sum(_counted_size(m.media_type, m.size) for m in snapshot.manifests), INT64_MAX),
                    min(logical, INT64_MAX),
                ),
            )

    def manifests_by_digest(self, name: str, digests: list[str]) -> dict[str, ManifestRecord]:
        found: dict[str, ManifestRecord] = {}
        for start in range(0, len(digests), _BATCH):
            batch = digests[start : start + _BATCH]
            rows = self._read(
                f"SELECT {_MANIFEST_COLUMNS} FROM manifests WHERE repository = ? "
                f"AND digest IN ({','.join('?' * len(batch))})",
                (name, *batch),
            )
            found.update((row[0], _manifest(row)) for row in rows)
        return found

    def indexes_listing(self, name: str, digests: list[str]) -> list[str]:
        """The indexes of `name` whose references include one of `digests` (their children, as far as the index
        knows): what changes with them."""
        found: set[str] = set()
        kinds = sorted(INDEXES)
        for start in range(0, len(digests), _BATCH):
            batch = digests[start : start + _BATCH]
            rows = self._read(
                # No DISTINCT: with it SQLite walks the repository's rows in digest order (blobs_by_manifest)
                # instead of looking the digests up (blobs_by_blob).
                "SELECT b.digest FROM blobs b JOIN manifests m ON m.repository = b.repository "
                f"AND m.digest = b.digest WHERE b.repository = ? AND b.blob IN ({','.join('?' * len(batch))}) "
                f"AND b.digest <> b.blob AND m.media_type IN ({','.join('?' * len(kinds))})",
                (name, *batch, *kinds),
            )
            found.update(row[0] for row in rows)
        return sorted(found)

    def tags_pointing_at(self, name: str, digests: list[str]) -> list[str]:
        found: list[str] = []
        for start in range(0, len(digests), _BATCH):
            batch = digests[start : start + _BATCH]
            rows = self._read(
                f"SELECT tag FROM tags WHERE repository = ? AND digest IN ({','.join('?' * len(batch))})",
                (name, *batch),
            )
            found += [row[0] for row in rows]
        return found

    def apply(
        self, name: str, tags: Mapping[str, TagRecord | None], manifests: Mapping[str, ManifestRecord | None]
    ) -> bool:
        """Write exactly the rows of these tags and manifests (None: gone), then the repository's own row (its
        description only when a manifest that has or had one was touched). Returns whether the repository still
        has tags or manifests here (without, the caller asks storage whether the repository is gone)."""
        manifests = {_text(d): _storable_manifest(m) if m is not None else None for d, m in manifests.items()}
        tags = {_text(t): dataclasses.replace(r, tag=_text(r.tag)) if r is not None else None for t, r in tags.items()}
        with self._transaction(lock=name) as db:
            previous = [
                row[0]
                for tag in tags
                for row in db.execute("SELECT digest FROM tags WHERE repository = ? AND tag = ?", (name, tag))
            ]
            touched = sorted({*manifests, *previous, *(r.digest for r in tags.values() if r is not None)})
            described_before = _describes(db, name, touched)
            # The listing's counters move by what these rows change, so no write reads the whole repository.
            tag_delta = sum(record is not None for record in tags.values()) - len(previous)
            # What GC's reachability verdicts depend on: a write that adds a tag or a manifest may keep what was not
            # kept; one that removes or moves a tag, or removes a manifest, may let go of what was kept.
            added = any(r is not None for r in tags.values()) or any(m is not None for m in manifests.values())
            removed = (
                bool(previous) or any(r is None for r in tags.values()) or any(m is None for m in manifests.values())
            )
            size_delta = logical_delta = 0
            released: list[str] = []
            # What may no tag reach any more: the manifests these rows name, and those a deleted one kept (its
            # children, its referrers).
            reviewed = set(touched)
            for digest, record in manifests.items():
                old = db.execute(
                    "SELECT media_type, size FROM manifests WHERE repository = ? AND digest = ?", (name, digest)
                ).fetchone()
                if old is not None:
                    size_delta -= _counted_size(old[0], old[1])
                    if record is None:
                        reviewed.update(_kept_by(db, name, digest))
                        db.execute("DELETE FROM gc_manifest_review WHERE repository = ? AND digest = ?", (name, digest))
                if record is None:
                    # Its own data too, even if the index never saw it (pushed and deleted before the index looked).
                    released.append(digest)
                logical_delta -= _drop_references(db, name, digest, released)
                for table in _PER_MANIFEST:
                    db.execute(f"DELETE FROM {table} WHERE repository = ? AND digest = ?", (name, digest))
                if record is not None:
                    logical_delta += _insert_manifests(db, name, [record])
                    size_delta += _counted_size(record.media_type, record.size)
            for tag, tag_record in tags.items():
                if tag_record is None:
                    db.execute("DELETE FROM tags WHERE repository = ? AND tag = ?", (name, tag))
                else:
                    db.execute(
                        "INSERT INTO tags (repository, tag, digest, pushed_at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (repository, tag) DO UPDATE SET digest = excluded.digest, "
                        "pushed_at = excluded.pushed_at",
                        (name, tag_record.tag, tag_record.digest, tag_record.pushed_at),
                    )
            pushed_at = db.execute(
                "SELECT MAX(at) FROM (SELECT MAX(pushed_at) AS at FROM tags WHERE repository = ? "
                "UNION ALL SELECT MAX(pushed_at) FROM manifests WHERE repository = ?) AS pushes",
                (name, name),
            ).fetchone()[0]
            current = db.execute(
                "SELECT description, tag_count, size, logical FROM repositories WHERE name = ?", (name,)
            ).fetchone()
            if current is None or described_before or _describes(db, name, touched):
                description = _description_of(db, name)
            else:
                description = current[0]
            # The counters move by this write's rows (read under the repository's lock), within 64 bits whatever
            # sizes hostile manifests declare.
            counters = (0, 0, 0) if current is None else (int(current[1]), int(current[2]), int(current[3]))
            tag_count, size, logical = (
                _clamp(counters[0] + tag_delta),
                _clamp(counters[1] + size_delta),
                _clamp(counters[2] + logical_delta),
            )
            db.execute(
                "INSERT INTO repositories (name, description, pushed_at, tag_count, size, logical) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET description = excluded.description, "
                "pushed_at = excluded.pushed_at, tag_count = excluded.tag_count, size = excluded.size, "
                "logical = excluded.logical, added = repositories.added + ?, removed = repositories.removed + ?",
                (name, description, pushed_at, tag_count, size, logical, int(added), int(removed)),
            )
            _review_unreferenced(db, name, released)
            _review_untagged(db, name, reviewed)
            return pushed_at is not None

    def names(self) -> set[str]:
        return {row[0] for row in self._read("SELECT name FROM repositories")}

    def add_pulls(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Count pulls by (repository, tag): a tag's own count, and its repository's (pulls by digest: tag "")."""
        by_repository: dict[str, int] = {}
        for (name, _), n in counts.items():
            by_repository[name] = by_repository.get(name, 0) + n
        with self._transaction() as db:
            db.executemany(
                "UPDATE repositories SET pulls = pulls + ? WHERE name = ?", [(n, k) for k, n in by_repository.items()]
            )
            db.executemany(
                "UPDATE tags SET pulls = pulls + ? WHERE repository = ? AND tag = ?",
                [(n, name, _text(tag)) for (name, tag), n in counts.items() if tag],
            )

    # GC's review queues (registry/gc/reviews.py).

    def review_pushed(self, pushed: Iterable[tuple[str, str]]) -> None:
        """Queue blobs just pushed or mounted, (blob, repository): a blob no manifest comes to reference is garbage
        once the grace period has passed."""
        now = time.time()
        with self._transaction() as db:
            for blob, name in sorted(set(pushed)):
                _queue_blob(db, _text(blob), _text(name), now)

    def due_blobs(self, since_before: float, after: tuple[float, str], limit: int) -> list[tuple[str, float]]:
        """(blob, since) of the queued blobs released before `since_before`, the oldest first, after the row
        `after` (since, blob) of the previous page."""
        rows = self._read(
            "SELECT blob, since FROM gc_blob_review WHERE since <= ? AND (since, blob) > (?, ?) "
            "ORDER BY since, blob LIMIT ?",
            (since_before, *after, limit),
        )
        return [(str(row[0]), float(row[1])) for row in rows]

    def referenced(self, blobs: list[str]) -> set[str]:
        """Which of these blobs some manifest of some repository references."""
        found: set[str] = set()
        for start in range(0, len(blobs), _BATCH):
            batch = blobs[start : start + _BATCH]
            rows = self._read(f"SELECT blob FROM blob_refs WHERE blob IN ({','.join('?' * len(batch))})", batch)
            found.update(str(row[0]) for row in rows)
        return found

    def blob_links(self, blob: str) -> list[str]:
        """The repositories that may still link `blob` (pushed or mounted there, or referenced there before)."""
        return sorted(str(row[0]) for row in self._read("SELECT repository FROM gc_blob_links WHERE blob = ?", (blob,)))

    def postpone_blob(self, blob: str, since: float) -> None:
        with self._transaction() as db:
            db.execute("UPDATE gc_blob_review SET since = ? WHERE blob = ? AND since < ?", (since, blob, since))

    def forget_blob(self, blob: str, since: float | None = None, *, links: bool = True) -> None:
        """Drop `blob`'s review (only if nothing queued it again after `since`, when given), and with `links` the
        repositories that may link it (once the blob is gone and their links with it; a blob still in use keeps
        them, for when it goes)."""
        with self._transaction() as db:
            if since is None:
                db.execute("DELETE FROM gc_blob_review WHERE blob = ?", (blob,))
            elif (
                db.execute(
                    "DELETE FROM gc_blob_review WHERE blob = ? AND since <= ? RETURNING blob", (blob, since)
                ).fetchone()
                is None
            ):
                return
            if links:
                db.execute("DELETE FROM gc_blob_links WHERE blob = ?", (blob,))

    def due_manifests(self, now: float, limit: int) -> list[tuple[str, str, float, float]]:
        """(repository, digest, pushed at, due) of the queued manifests due by `now`, the earliest first."""
        rows = self._read(
            "SELECT repository, digest, since, due FROM gc_manifest_review WHERE due <= ? "
            "ORDER BY due, repository, digest LIMIT ?",
            (now, limit),
        )
        return [(str(row[0]), str(row[1]), float(row[2]), float(row[3])) for row in rows]

    def postpone_manifest(self, name: str, digest: str, due: float, was: float | None = None) -> None:
        """Look at the manifest again at `due` (only if its row is still due at `was`, when given: a write that
        queued it again meanwhile made it due now, and that stands)."""
        with self._transaction() as db:
            if was is None:
                db.execute(
                    "UPDATE gc_manifest_review SET due = ? WHERE repository = ? AND digest = ?", (due, name, digest)
                )
            else:
                db.execute(
                    "UPDATE gc_manifest_review SET due = ? WHERE repository = ? AND digest = ? AND due = ?",
                    (due, name, digest, was),
                )

    def replace_meta(self, key: str, expected: str, value: str) -> bool:
        """Set `key` to `value` only if it still holds `expected`; whether it did."""
        with self._transaction(lock=f"meta:{key}") as db:
            row = db.execute(
                "UPDATE meta SET value = ? WHERE key = ? AND value = ? RETURNING key", (value, key, expected)
            ).fetchone()
        return row is not None

    def review_all_manifests(self) -> None:
        """Make every queued manifest due again at its own age (GC's rules changed)."""
        with self._transaction() as db:
            db.execute("UPDATE gc_manifest_review SET due = since WHERE due != since")

    def forget_manifest(self, name: str, digest: str, since: float | None = None) -> None:
        """Drop the review of a manifest (only the one pushed at `since`, when given: a push of it again meanwhile
        queued a review of its own)."""
        with self._transaction() as db:
            if since is None:
                db.execute("DELETE FROM gc_manifest_review WHERE repository = ? AND digest = ?", (name, digest))
            else:
                db.execute(
                    "DELETE FROM gc_manifest_review WHERE repository = ? AND digest = ? AND since = ?",
                    (name, digest, since),
                )

    def reviews_pending(self) -> tuple[int, int]:
        """(blobs, manifests) queued for review."""
        blobs = self._read("SELECT count(*) FROM gc_blob_review")[0][0]
        manifests = self._read("SELECT count(*) FROM gc_manifest_review")[0][0]
        return int(blobs), int(manifests)

    def manifest_kept(
        self,
        name: str,
        digest: str,
        young_after: float,
        limit: float,
        keep_referrers: bool,
        verdicts: dict[tuple[str, str], float] | None = None,
    ) -> float | None:
        """Until when something keeps manifest `digest` of `name`: a tag, a kept index listing it or (with
        `keep_referrers`) a kept subject, through any chain of those (for ever: `math.inf`), or a push after
        `young_after` on that chain (until that push is `limit` old); 0.0 when nothing keeps it, None when there is
        no such manifest. `verdicts` carries what earlier calls of one run found, so that a run over a chain of
        manifests walks it once."""
        verdicts = {} if verdicts is None else verdicts
        # What was found stands while no write could change it: "not kept" until a write adds a tag or a manifest
        # to the repository, "kept" until one removes or moves one (GC's own deletions leave "not kept" standing,
        # so a chain of untagged indexes is walked once).
        counts = self._read("SELECT added, removed FROM repositories WHERE name = ?", (name,))
        added, removed = (float(counts[0][0]), float(counts[0][1])) if counts else (-1.0, -1.0)
        if verdicts.get((name, "+")) != added:
            for key in [k for k, v in verdicts.items() if k[0] == name and v == 0.0 and k[1] not in ("+", "-")]:
                del verdicts[key]
            verdicts[(name, "+")] = added
        if verdicts.get((name, "-")) != removed:
            for key in [k for k, v in verdicts.items() if k[0] == name and v > 0.0 and k[1] not in ("+", "-")]:
                del verdicts[key]
            verdicts[(name, "-")] = removed
        pending, seen = [digest], set[str]()
        while pending:
            current = pending.pop()
            if current in seen:
                continue
            seen.add(current)
            known = verdicts.get((name, current))
            if known is not None:
                if known > 0:
                    verdicts[(name, digest)] = known
                    return known
                continue  # nothing keeps it, so nothing keeps what only it would keep
            if len(seen) > MAX_KEPT_WALK:
                return time.time() + limit  # a web this large: kept for now, looked at again later
            row = self._read(
                "SELECT pushed_at, subject, EXISTS (SELECT 1 FROM tags t WHERE t.repository = m.repository "
                "AND t.digest = m.digest) FROM manifests m WHERE m.repository = ? AND m.digest = ?",
                (name, current),
            )
            if not row:
                if current == digest:
                    return None
                continue
            pushed_at, subject, tagged = row[0]
            if tagged or float(pushed_at) > young_after:
                until = math.inf if tagged else float(pushed_at) + limit
                verdicts[(name, current)] = until
                verdicts[(name, digest)] = until
                return until
            # No DISTINCT (see indexes_listing): looked up by blobs_by_blob, not a walk of the repository's rows.
            pending += sorted(
                {
                    str(r[0])
                    for r in self._read(
                        "SELECT digest FROM blobs WHERE blob = ? AND repository = ? AND digest != ?",
                        (current, name, current),
                    )
                }
            )
            if keep_referrers and subject:
                pending.append(str(subject))
        # The walk saw everything that could keep `digest`: none of it is kept either.
        for visited in seen:
            verdicts[(name, visited)] = 0.0
        return 0.0

    def tag_times(self, name: str) -> dict[str, tuple[str, float]]:
        """tag -> (digest, pushed at) for every tag of `name`."""
        rows = self._read("SELECT tag, digest, pushed_at FROM tags WHERE repository = ?", (name,))
        return {str(row[0]): (str(row[1]), float(row[2])) for row in rows}

    def pushed_since(self, since: float) -> list[str]:
        """The repositories pushed to at or after `since`."""
        return [str(row[0]) for row in self._read("SELECT name FROM repositories WHERE pushed_at >= ?", (since,))]

    # Queries.

    def catalog(self, last: str | None, limit: int) -> list[str]:
        rows = self._read("SELECT name FROM repositories WHERE name > ? ORDER BY name LIMIT ?", (last or "", limit))
        return [row[0] for row in rows]

    def ranked(self, query: SearchQuery, after: tuple[int, str] | None, limit: int) -> list[tuple[int, str]]:
        """(rank, name) of the repositories matching `query`, best first, after `after`, at most `limit`."""
        where, parameters = _repository_conditions(query, self.dialect)
        if not query.terms:
            # Filters alone rank everything alike: name order. When a label is rare, its repositories are the few
            # candidates (sorted by name, no more); else the primary key's walk stops at the page's last match.
            start = after[1] if after else ""
            candidates = self._rare_label(query)
            if candidates is not None:
                driver, more = candidates
                rows = self._read(
                    f"WITH candidates AS MATERIALIZED ({driver}) SELECT name FROM candidates "
                    f"JOIN repositories ON name = candidates.repository WHERE {where} AND name > ? "
                    "ORDER BY name LIMIT ?",
                    [*more, *parameters, start, limit],
                )
            else:
                rows = self._read(
                    f"SELECT name FROM repositories WHERE {where} AND name > ? ORDER BY name LIMIT ?",
                    [*parameters, start, limit],
                )
            return [(0, str(row[0])) for row in rows]
        rank, rank_parameters = rank_sql("name", query.terms, self.dialect)
        sql = f"SELECT {rank} AS rank, name FROM repositories WHERE {where}"
        sql = f"SELECT rank, name FROM ({sql}) AS ranked WHERE (rank, name) > (?, ?) ORDER BY rank, name LIMIT ?"
        position = after or (-1, "")
        rows = self._read(sql, [*rank_parameters, *parameters, *position, limit])
        return [(int(row[0]), str(row[1])) for row in rows]

    def listed(
        self, query: SearchQuery, order: BrowseOrder, after: tuple[Any, str] | None, limit: int
    ) -> list[tuple[Any, RepositoryRow]]:
        """(sort key, row) of the repositories matching `query` in `order`, after the key `after`, at most
        `limit`: `relevance` ranks as the search does, `name` goes A to Z, the others largest first (ties by name)."""
        where, parameters = _repository_conditions(query, self.dialect)
        columns = "name, description, pushed_at, pulls, tag_count, size"
        if order == "relevance":
            rank, rank_parameters = rank_sql("name", query.terms, self.dialect)
            key = f"{rank}"
            parameters = [*rank_parameters, *parameters]
            position = "(key, name) > (?, ?)"
            ordering = "key, name"
        elif order == "name":
            key = "name"
            position = "name > ?"
            ordering = "name"
        else:
            key = _ORDER_COLUMNS[order]
            position = "(key < ? OR (key = ? AND name > ?))"
            ordering = "key DESC, name"
        sql = f"SELECT {key} AS key, {columns} FROM repositories WHERE {where}"
        sql = f"SELECT * FROM ({sql}) AS listed"
        if after is not None:
            sql += f" WHERE {position}"
            if order == "relevance":
                parameters += [after[0], after[1]]
            elif order == "name":
                parameters.append(after[1])
            else:
                parameters += [after[0], after[0], after[1]]
        sql += f" ORDER BY {ordering} LIMIT ?"
        rows = self._read(sql, [*parameters, limit])
        return [(row[0], RepositoryRow(*row[1:])) for row in rows]

    def sharing(self, name: str, blobs: list[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for start in range(0, len(blobs), _BATCH):
            batch = blobs[start : start + _BATCH]
            rows = self._read(
                "SELECT blob, count(DISTINCT repository) FROM blobs "
                f"WHERE blob IN ({','.join('?' * len(batch))}) AND repository != ? GROUP BY blob",
                (*batch, name),
            )
            counts.update((row[0], int(row[1])) for row in rows)
        return {blob: counts.get(blob, 0) for blob in blobs}

    def counted(self, name: str, blobs: list[str]) -> tuple[int, set[str]]:
        """Repository `name`'s logical bytes, and which of `blobs` its manifests reference (quotas)."""
        rows = self._read("SELECT logical FROM repositories WHERE name = ?", (name,))
        logical = int(rows[0][0]) if rows else 0
        found: set[str] = set()
        for start in range(0, len(blobs), _BATCH):
            batch = blobs[start : start + _BATCH]
            found.update(
                str(row[0])
                for row in self._read(
                    "SELECT blob FROM repository_blobs WHERE repository = ? "
                    f"AND blob IN ({','.join('?' * len(batch))})",
                    (name, *batch),
                )
            )
        return logical, found

    def logical_sizes(self) -> list[tuple[str, int]]:
        return [(str(row[0]), int(row[1])) for row in self._read("SELECT name, logical FROM repositories")]

    def physical_size(self) -> int:
        try:
            return int(self._read("SELECT coalesce(sum(size), 0) FROM blob_refs")[0][0])
        except sqlite3.OperationalError:  # SQLite's sum past 64 bits (hostile sizes): summed here instead
            return sum(int(row[0]) for row in self._read("SELECT size FROM blob_refs"))

    def physical_size_of(self, names: list[str]) -> int:
        """Bytes of the distinct blobs these repositories reference (for a caller who sees only them)."""
        sizes: dict[str, int] = {}
        for start in range(0, len(names), _BATCH):
            batch = names[start : start + _BATCH]
            rows = self._read(
                f"SELECT blob, size FROM repository_blobs WHERE repository IN ({','.join('?' * len(batch))})", batch
            )
            sizes.update(rows)
        return sum(sizes.values())

    def counts(self, name: str) -> tuple[int, int, int]:
        """(manifests, blobs, tags) of a repository."""
        manifests = self._read("SELECT count(*) FROM manifests WHERE repository = ?", (name,))[0][0]
        blobs = self._read("SELECT count(*) FROM repository_blobs WHERE repository = ?", (name,))[0][0]
        tags = self._read("SELECT tag_count FROM repositories WHERE name = ?", (name,))
        return int(manifests), int(blobs), int(tags[0][0]) if tags else 0

    def sharers(self, name: str, blobs: list[str]) -> dict[str, list[str]]:
        """For each of these blobs, the other repositories referencing it (for callers who may not see them all)."""
        found: dict[str, list[str]] = {}
        for start in range(0, len(blobs), _BATCH):
            batch = blobs[start : start + _BATCH]
            rows = self._read(
                "SELECT DISTINCT blob, repository FROM blobs "
                f"WHERE blob IN ({','.join('?' * len(batch))}) AND repository != ?",
                (*batch, name),
            )
            for blob, repository in rows:
                found.setdefault(blob, []).append(repository)
        return found

    def _rare_label(self, query: SearchQuery) -> tuple[str, list[Any]] | None:
        """The query's rarest `label:` part as SQL naming its repositories, when fewer than RARE_LABEL_ROWS rows
        carry it (counted through `labels_by_key`, no further than that); None when every label part is common."""
        best: tuple[int, str, list[Any]] | None = None
        for key, value in query.labels:
            condition, more = ("key = ?", [key]) if value is None else ("key = ? AND value = ?", [key, value])
            count = int(
                self._read(
                    f"SELECT count(*) FROM (SELECT 1 FROM labels WHERE {condition} LIMIT ?) AS capped",
                    [*more, RARE_LABEL_ROWS],
                )[0][0]
            )
            if count < RARE_LABEL_ROWS and (best is None or count < best[0]):
                best = (count, f"SELECT DISTINCT repository FROM labels WHERE {condition}", more)
        return (best[1], best[2]) if best is not None else None

    def rank_of(self, name: str, terms: tuple[str, ...]) -> int:
        """What `ranked` gives `name` (for a cursor naming a repository that may be gone meanwhile)."""
        rank, parameters = rank_sql("name", terms, self.dialect)
        return int(
            self._read(f"SELECT {rank} FROM (SELECT CAST(? AS TEXT) AS name) AS probe", [*parameters, name])[0][0]
        )

    def best_match(self, name: str, query: SearchQuery) -> tuple[ManifestRecord, tuple[str, ...]] | None:
        """The repository's manifest that matches `query` best (tagged first, then the latest) and its tags."""
        found = self.hits(query, [name])
        if not found or found[0].manifest is None:
            return None
        return found[0].manifest, found[0].tags

    def hits(self, query: SearchQuery, names: list[str]) -> list[SearchHit]:
        """`best_match` and `details` for a page of repositories in three statements, whatever the page's size (a
        statement each was 76 round trips for a page of 25 on PostgreSQL)."""
        if not names:
            return []
        marks = ",".join("?" * len(names))
        details = {
            row[0]: row[1:]
            for row in self._read(
                f"SELECT name, description, pushed_at, pulls FROM repositories WHERE name IN ({marks})", names
            )
        }
        conditions, parameters = _manifest_conditions(query, self.dialect)
        tagged = "EXISTS (SELECT 1 FROM tags t WHERE t.repository = m.repository AND t.digest = m.digest)"
        columns = ", ".join(f"m.{c.strip()}" for c in _MANIFEST_COLUMNS.split(","))
        best: dict[str, ManifestRecord] = {}
        for row in self._read(
            f"SELECT * FROM (SELECT m.repository AS repository_name, {columns}, row_number() OVER "
            f"(PARTITION BY m.repository ORDER BY {tagged} DESC, m.pushed_at DESC, m.digest) AS choice "
            f"FROM manifests m WHERE m.repository IN ({marks}) AND {conditions}) AS candidates WHERE choice = 1",
            [*names, *parameters],
        ):
            best[row[0]] = _manifest(row[1:-1])
        tags: dict[tuple[str, str], list[str]] = {}
        digests = sorted({m.digest for m in best.values()})
        if digests:
            for repository, digest, tag in self._read(
                f"SELECT repository, digest, tag FROM tags WHERE repository IN ({marks}) "
                f"AND digest IN ({','.join('?' * len(digests))}) ORDER BY tag",
                [*names, *digests],
            ):
                tags.setdefault((repository, digest), []).append(tag)
        found: list[SearchHit] = []
        for name in names:
            if name not in details:
                continue  # dropped since the candidates were read
            description, pushed_at, pulls = details[name]
            manifest = best.get(name)
            names_of = tags.get((name, manifest.digest), []) if manifest is not None else []
            if query.tags:
                names_of = [tag for tag in names_of if any(_glob(tag, pattern) for pattern in query.tags)]
            found.append(SearchHit(name, description, pushed_at, pulls, manifest, tuple(names_of)))
        return found

    def summary(self, name: str) -> RepositorySummary | None:
        rows = self._read("SELECT description, pushed_at, pulls FROM repositories WHERE name = ?", (name,))
        if not rows:
            return None
        description, pushed_at, pulls = rows[0]
        manifests = self.known_manifests(name)
        tags = tuple(
            TagSummary(tag, manifests[digest], at, tag_pulls)
            for tag, digest, at, tag_pulls in self._read(
                "SELECT tag, digest, pushed_at, pulls FROM tags WHERE repository = ? ORDER BY tag", (name,)
            )
            if digest in manifests
        )
        return RepositorySummary(name, description, pushed_at, pulls, len(manifests), tags)


def storable(snapshot: RepositorySnapshot) -> RepositorySnapshot:
    """`snapshot` as SQLite can hold it whatever the manifests said: integers within INTEGER's 64 bits, text
    without the unpaired surrogates UTF-8 cannot encode and at most MAX_TEXT long, bounded label and platform
    counts (the description's labels kept)."""
    return dataclasses.replace(
        snapshot,
        tags=tuple(dataclasses.replace(t, tag=_text(t.tag)) for t in snapshot.tags),
        manifests=tuple(_storable_manifest(m) for m in snapshot.manifests),
    )


def _storable_manifest(m: ManifestRecord) -> ManifestRecord:
    labels = dict(list(m.labels.items())[:MAX_LABELS])
    labels.update({key: m.labels[key] for key in DESCRIPTION_KEYS if key in m.labels})
    return dataclasses.replace(
        m,
        digest=_text(m.digest),
        media_type=_text(m.media_type),
        artifact_type=_text(m.artifact_type) if m.artifact_type is not None else None,
        size=min(max(m.size, 0), INT64_MAX),
        platforms=tuple(dict.fromkeys(_text(p) for p in m.platforms[:MAX_PLATFORMS])),
        created=_text(m.created) if m.created is not None else None,
        labels={_text(k): _text(v) for k, v in labels.items()},
        # Every reference, uncapped (a manifest's size bounds them): GC deletes what no row names.
        blobs=tuple({_text(b): min(max(n, 0), INT64_MAX) for b, n in m.blobs}.items()),
        manifest_bytes=min(max(m.manifest_bytes, 0), INT64_MAX),
        subject=_text(m.subject) if m.subject is not None else None,
    )


def _text(value: str) -> str:
    """`value` as both databases can hold it: bounded, without unpaired surrogates (UTF-8 cannot encode them) or
    NUL (PostgreSQL's text cannot hold it)."""
    value = value[:MAX_TEXT]
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    return value if value.isascii() else _SURROGATE.sub("\ufffd", value)


_ORDER_COLUMNS = {"pushed": "coalesce(pushed_at, 0)", "pulls": "pulls", "size": "size", "tags": "tag_count"}


def _repository_conditions(query: SearchQuery, dialect: Dialect) -> tuple[str, list[Any]]:
    """The WHERE clause over `repositories` that every part of `query` must meet."""
    where: list[str] = []
    parameters: list[Any] = []
    for term in query.terms:
        where.append("(instr(name, ?) > 0 OR instr(lower(coalesce(description, '')), ?) > 0)")
        parameters += [term, term]
    if query.filters_manifests:
        conditions, more = _manifest_conditions(query, dialect)
        where.append(f"EXISTS (SELECT 1 FROM manifests m WHERE m.repository = name AND {conditions})")
        parameters += more
    return " AND ".join(where) or "1 = 1", parameters


def _manifest_conditions(query: SearchQuery, dialect: Dialect) -> tuple[str, list[Any]]:
    where: list[str] = []
    parameters: list[Any] = []
    same = "x.repository = m.repository AND x.digest = m.digest"
    for key, value in query.labels:
        if value is None:
            where.append(f"EXISTS (SELECT 1 FROM labels x WHERE {same} AND x.key = ?)")
            parameters.append(key)
        else:
            where.append(f"EXISTS (SELECT 1 FROM labels x WHERE {same} AND x.key = ? AND x.value = ?)")
            parameters += [key, value]
    for platform in query.platforms:
        where.append(f"EXISTS (SELECT 1 FROM platforms x WHERE {same} AND (x.platform = ? OR x.platform GLOB ?))")
        parameters += [platform, glob_pattern(dialect, _glob_literal(platform) + "/*")]
    for artifact_type in query.artifact_types:
        where.append("m.artifact_type = ?")
        parameters.append(artifact_type)
    for pattern in query.tags:
        where.append(f"EXISTS (SELECT 1 FROM tags x WHERE {same} AND x.tag GLOB ?)")
        parameters.append(glob_pattern(dialect, pattern))
    return " AND ".join(where) or "1 = 1", parameters


def _glob_literal(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _glob(text: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(text, pattern)


def _manifest(row: Any) -> ManifestRecord:
    digest, media_type, artifact_type, size, platforms, created, labels, pushed_at, blobs, manifest_bytes, subject = row
    return ManifestRecord(
        digest,
        media_type,
        artifact_type,
        size,
        tuple(json.loads(platforms)),
        created,
        json.loads(labels),
        pushed_at,
        tuple((str(blob), int(blob_size)) for blob, blob_size in json.loads(blobs)),
        manifest_bytes,
        subject,
    )


def _clamp(value: int) -> int:
    return min(max(value, 0), INT64_MAX)


def _counted_size(media_type: str, size: int) -> int:
    """What a manifest adds to its repository's listed size: an image's bytes; an index adds none of its own (its
    children are counted as the images they are)."""
    return 0 if media_type in INDEXES else size


def _insert_manifests(db: Sql, name: str, manifests: Iterable[ManifestRecord]) -> int:
    """Insert these manifests' rows and count their references; returns what the repository's logical bytes grow."""
    manifests = list(manifests)
    db.executemany(
        f"INSERT INTO manifests (repository, {_MANIFEST_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                name,
                m.digest,
                m.media_type,
                m.artifact_type,
                m.size,
                json.dumps(m.platforms),
                m.created,
                json.dumps(m.labels),
                m.pushed_at,
                json.dumps(m.blobs),
                m.manifest_bytes,
                m.subject,
            )
            for m in manifests
        ],
    )
    db.executemany(
        "INSERT INTO labels (repository, digest, key, value) VALUES (?, ?, ?, ?)",
        [(name, m.digest, k, v) for m in manifests for k, v in m.labels.items()],
    )
    db.executemany(
        "INSERT INTO platforms (repository, digest, platform) VALUES (?, ?, ?)",
        [(name, m.digest, p.lower()) for m in manifests for p in m.platforms],
    )
    return sum(_add_references(db, name, m) for m in manifests)


# Reference counts. `blobs` holds what each manifest references (itself, its config, its layers); a repository's
# row in `repository_blobs` counts the manifests referencing a blob, a blob's row in `blob_refs` the repositories.
# A manifest written or removed moves only its own references' rows, so a repository's logical bytes (each blob
# once) and the registry's physical bytes (each blob once in all) are read, never summed over a repository.


def _references(m: ManifestRecord) -> dict[str, int]:
    found = {m.digest: m.manifest_bytes}
    for blob, size in m.blobs:
        found.setdefault(blob, size)
    return found


def _add_references(db: Sql, name: str, m: ManifestRecord) -> int:
    grown = 0
    references = _references(m)
    db.executemany(
        "INSERT INTO blobs (repository, digest, blob, size) VALUES (?, ?, ?, ?)",
        [(name, m.digest, blob, size) for blob, size in references.items()],
    )
    for blob, size in references.items():
        refs, counted = db.execute(
            "INSERT INTO repository_blobs (repository, blob, size, refs) VALUES (?, ?, ?, 1) "
            "ON CONFLICT (repository, blob) DO UPDATE SET refs = repository_blobs.refs + 1 RETURNING refs, size",
            (name, blob, size),
        ).fetchone()
        if refs == 1:
            grown += counted
            db.execute(
                "INSERT INTO blob_refs (blob, size, repositories) VALUES (?, ?, 1) "
                "ON CONFLICT (blob) DO UPDATE SET repositories = blob_refs.repositories + 1",
                (blob, size),
            )
    return grown


def _drop_references(db: Sql, name: str, digest: str, released: list[str]) -> int:
    """Forget what manifest `digest` of `name` references; returns what the repository's logical bytes shrink, and
    adds to `released` the blobs `name` references no more."""
    shrunk = 0
    blobs = [row[0] for row in db.execute("SELECT blob FROM blobs WHERE repository = ? AND digest = ?", (name, digest))]
    db.execute("DELETE FROM blobs WHERE repository = ? AND digest = ?", (name, digest))
    for blob in blobs:
        row = db.execute(
            "UPDATE repository_blobs SET refs = refs - 1 WHERE repository = ? AND blob = ? RETURNING refs, size",
            (name, blob),
        ).fetchone()
        if row is not None and row[0] <= 0:
            shrunk += row[1]
            db.execute("DELETE FROM repository_blobs WHERE repository = ? AND blob = ?", (name, blob))
            _release_blob(db, blob)
            released.append(blob)
    return shrunk


def _drop_all_references(db: Sql, name: str, released: list[str]) -> None:
    blobs = [row[0] for row in db.execute("SELECT blob FROM repository_blobs WHERE repository = ?", (name,))]
    for blob in blobs:
        _release_blob(db, blob)
    released += blobs
    db.execute("DELETE FROM repository_blobs WHERE repository = ?", (name,))
    db.execute("DELETE FROM blobs WHERE repository = ?", (name,))
    db.execute("UPDATE repositories SET logical = 0 WHERE name = ?", (name,))


def _release_blob(db: Sql, blob: str) -> None:
    row = db.execute(
        "UPDATE blob_refs SET repositories = repositories - 1 WHERE blob = ? RETURNING repositories", (blob,)
    ).fetchone()
    if row is not None and row[0] <= 0:
        db.execute("DELETE FROM blob_refs WHERE blob = ?", (blob,))


# GC's review queues. A blob that lost its last reference (or was pushed and may never get one) waits in
# `gc_blob_review` for the grace period, with the repositories that may still link it in `gc_blob_links`. A manifest
# that no tag may reach any more has a row in `gc_manifest_review` for as long as it exists: `due` is when GC looks
# at it next (its rule's age; never, while something keeps it or no rule removes it), and a write that may leave it
# unreachable (an untag, the removal of its index or subject) makes it due again. The GC worker
# (registry/gc/reviews.py) decides each one again when it is due: a row is a reason to look, never a verdict.


def _review_unreferenced(db: Sql, name: str, released: Iterable[str]) -> None:
    """For the blobs `name` stopped referencing in this write (a write may drop a reference and add it again: what
    counts is once it is done): `name` may still link one (GC drops that link when the blob goes, whichever
    repository lets it go last), and one that no manifest references any more is queued for review."""
    now = time.time()
    for blob in sorted(set(released)):
        if db.execute("SELECT 1 FROM repository_blobs WHERE repository = ? AND blob = ?", (name, blob)).fetchone():
            continue
        if db.execute("SELECT 1 FROM blob_refs WHERE blob = ?", (blob,)).fetchone() is None:
            _queue_blob(db, blob, name, now)
        else:
            db.execute(
                "INSERT INTO gc_blob_links (blob, repository) VALUES (?, ?) ON CONFLICT DO NOTHING", (blob, name)
            )


def _queue_blob(db: Sql, blob: str, name: str, now: float) -> None:
    db.execute(
        "INSERT INTO gc_blob_review (blob, since) VALUES (?, ?) ON CONFLICT (blob) DO UPDATE SET since = "
        "CASE WHEN excluded.since > gc_blob_review.since THEN excluded.since ELSE gc_blob_review.since END",
        (blob, now),
    )
    db.execute("INSERT INTO gc_blob_links (blob, repository) VALUES (?, ?) ON CONFLICT DO NOTHING", (blob, name))


def _kept_by(db: Sql, name: str, digest: str) -> list[str]:
    """The manifests of `name` that manifest `digest` keeps: what it references, and its referrers."""
    referenced = db.execute("SELECT blob FROM blobs WHERE repository = ? AND digest = ?", (name, digest)).fetchall()
    referrers = db.execute(
        "SELECT digest FROM manifests WHERE repository = ? AND subject = ?", (name, digest)
    ).fetchall()
    return [row[0] for row in [*referenced, *referrers]]


def _review_untagged(db: Sql, name: str, digests: Iterable[str]) -> None:
    """Queue the manifests among `digests` that are in `name` and that no tag names (their age is their push's)."""
    for digest in sorted(set(digests)):
        db.execute(
            "INSERT INTO gc_manifest_review (repository, digest, since, due) "
            "SELECT repository, digest, pushed_at, pushed_at FROM manifests m WHERE m.repository = ? AND m.digest = ? "
            "AND NOT EXISTS (SELECT 1 FROM tags t WHERE t.repository = m.repository AND t.digest = m.digest) "
            "ON CONFLICT (repository, digest) DO UPDATE SET since = excluded.since, due = excluded.due",
            (name, digest),
        )


_DESCRIPTION_RANK = "CASE l.key " + " ".join(f"WHEN '{k}' THEN {i}" for i, k in enumerate(DESCRIPTION_KEYS)) + " END"
_DESCRIPTION_KEYS_SQL = ",".join(f"'{k}'" for k in DESCRIPTION_KEYS)


def _describes(db: Sql, name: str, digests: list[str]) -> bool:
    """Whether any of these manifests carries a description label (only they can change the description)."""
    for start in range(0, len(digests), _BATCH):
        batch = digests[start : start + _BATCH]
        row = db.execute(
            f"SELECT 1 FROM labels l WHERE l.repository = ? AND l.digest IN ({','.join('?' * len(batch))}) "
            f"AND l.key IN ({_DESCRIPTION_KEYS_SQL}) AND l.value != '' LIMIT 1",
            (name, *batch),
        ).fetchone()
        if row is not None:
            return True
    return False


def _description_of(db: Sql, name: str) -> str | None:
    """`_description` in SQL, over the rows the index holds for `name`."""
    for sql in (
        "SELECT l.value FROM tags t JOIN labels l ON l.repository = t.repository AND l.digest = t.digest "
        f"WHERE t.repository = ? AND l.key IN ({_DESCRIPTION_KEYS_SQL}) AND l.value != '' "
        f"ORDER BY (t.tag != 'latest'), t.pushed_at DESC, t.tag, {_DESCRIPTION_RANK} LIMIT 1",
        "SELECT l.value FROM manifests m JOIN labels l ON l.repository = m.repository AND l.digest = m.digest "
        f"WHERE m.repository = ? AND l.key IN ({_DESCRIPTION_KEYS_SQL}) AND l.value != '' "
        f"ORDER BY m.pushed_at DESC, m.digest, {_DESCRIPTION_RANK} LIMIT 1",
    ):
        row = db.execute(sql, (name,)).fetchone()
        if row is not None:
            return str(row[0])
    return None


def _description(snapshot: RepositorySnapshot, manifests: Mapping[str, ManifestRecord]) -> str | None:
    """The first description found: `latest`'s, then the other tags' (the last pushed first), then untagged ones."""
    tags = sorted(snapshot.tags, key=lambda t: (t.tag != "latest", -t.pushed_at, t.tag))
    tagged = [manifests[t.digest] for t in tags if t.digest in manifests]
    rest = sorted(snapshot.manifests, key=lambda m: (-m.pushed_at, m.digest))
    for manifest in (*tagged, *rest):
        for key in DESCRIPTION_KEYS:
            if manifest.labels.get(key):
                return manifest.labels[key]
    return None
