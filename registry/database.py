"""The metadata database: an SQLite file (the default: one machine, any number of processes) or a PostgreSQL
database (`database.url`: any number of replicas). The metadata index and the webhook queue keep their tables there.
SQL is written once, in the dialect both understand, with `?` placeholders; the PostgreSQL engine translates the
few spellings that differ:

    ?                         %s (psycopg's placeholder; a literal % is doubled)
    instr(a, b)               strpos(a, b)
    min(max(x, lo), hi)       LEAST(GREATEST(x, lo), hi)
    INTEGER, REAL             BIGINT, DOUBLE PRECISION
    WITHOUT ROWID             (nothing)
    GLOB                      ~ (the pattern becomes a regular expression: `glob_pattern`)

and a write transaction may name a lock (a repository, an endpoint), which PostgreSQL takes as an advisory lock for
the transaction: replicas changing the same thing take turns, as SQLite's single writer does anyway. Blocking calls:
callers run them on threads.
"""

from __future__ import annotations

import contextlib
import functools
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from registry.database_postgresql import PostgresEngine

Dialect = Literal["sqlite", "postgresql"]


class DatabaseError(Exception):
    """A PostgreSQL error: psycopg's, raised again as this at the engine's boundary (registry/database_postgresql.py),
    so that neither this module nor its callers import psycopg (~0.1 s of every process's start, for a database
    most installations do not use)."""


DATABASE_ERRORS = (sqlite3.Error, DatabaseError)
POOL_SIZE = 10
CONNECT_TIMEOUT_SECONDS = 5.0


class Sql(Protocol):
    """What the index's statements run on inside a transaction (an sqlite3 connection is one)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...


class EngineCorrupt(Exception):
    """The database is not usable as it is (a corrupt SQLite file): replace it."""


class Engine(Protocol):
    dialect: Dialect
    where: str
    """For messages: the file, or the database without its password."""

    def read(self, sql: str, parameters: Sequence[Any] = (), *, wait: float | None = None) -> list[Any]:
        """`wait`: at most so long for a connection (PostgreSQL; default CONNECT_TIMEOUT_SECONDS)."""
        ...

    def transaction(self, lock: str | None = None) -> contextlib.AbstractContextManager[Sql]: ...

    def table_exists(self, db: Sql, table: str) -> bool: ...

    def has_column(self, db: Sql, table: str, column: str) -> bool: ...

    def healthy(self) -> bool: ...

    def close(self) -> None: ...


def glob_pattern(dialect: Dialect, pattern: str) -> str:
    """A shell pattern (`*`, `?`, `[...]`) as the dialect's GLOB operand (a regular expression for PostgreSQL)."""
    if dialect == "sqlite":
        return pattern
    out = ["^"]
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end]
            negate = body.startswith("^")
            body = body[1:] if negate else body
            body = body.replace("\\", "\\\\").replace("[", "\\[")
            out.append("[" + ("^" if negate else "") + body + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out) + "$"


class SqliteEngine:
    dialect: Dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.where = str(path)
        self._writer = _connect(path)
        self._reader = _connect(path)
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        try:
            self._writer.execute("PRAGMA journal_mode=WAL")
            self._writer.execute("PRAGMA synchronous=NORMAL")
            if self._writer.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
        except sqlite3.DatabaseError as e:
            self.close()
            raise EngineCorrupt(f"{path}: {e}") from e

    def read(self, sql: str, parameters: Sequence[Any] = (), *, wait: float | None = None) -> list[Any]:
        with self._read_lock:
            return self._reader.execute(sql, tuple(parameters)).fetchall()

    @contextlib.contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[Sql]:
        with self._write_lock:  # one writer per file: BEGIN IMMEDIATE serializes the processes too
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            self._writer.execute("COMMIT")

    def table_exists(self, db: Sql, table: str) -> bool:
        row = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
        return row is not None

    def has_column(self, db: Sql, table: str, column: str) -> bool:
        return any(row[1] == column for row in db.execute(f"PRAGMA table_info({table})").fetchall())

    def healthy(self) -> bool:
        try:
            with self._read_lock:
                return bool(self._reader.execute("PRAGMA quick_check").fetchone()[0] == "ok")
        except sqlite3.OperationalError:
            return True  # busy or locked: not the file's fault
        except sqlite3.DatabaseError:
            return False

    def close(self) -> None:
        # After any read or transaction under way on another thread (a follower's poll at shutdown): closing a
        # connection sqlite3 is using crashes the process; one closed first only makes later calls fail.
        with self._write_lock, self._read_lock:
            self._writer.close()
            self._reader.close()


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA busy_timeout=30000")
    return db


def remove_files(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + suffix).unlink()


@functools.lru_cache(maxsize=1024)
def to_postgresql(sql: str) -> str:
    """The index's SQL in PostgreSQL's spelling (see the module's docstring)."""
    translated = sql.replace("%", "%%").replace("?", "%s")
    translated = translated.replace("instr(", "strpos(").replace("min(max(", "LEAST(GREATEST(")
    translated = translated.replace(" WITHOUT ROWID", "").replace(" GLOB ", " ~ ")
    translated = re.sub(r"\bINTEGER\b", "BIGINT", translated)
    return re.sub(r"\bREAL\b", "DOUBLE PRECISION", translated)


def redacted(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


class _SharedPostgres:
    """A handle on a process's one pool for a database; the pool closes with its last handle."""

    dialect: Dialect = "postgresql"

    def __init__(self, engine: PostgresEngine) -> None:
        self.engine = engine
        self.where = engine.where
        self._closed = False

    def read(self, sql: str, parameters: Sequence[Any] = (), *, wait: float | None = None) -> list[Any]:
        return self.engine.read(sql, parameters, wait=wait)

    def transaction(self, lock: str | None = None) -> contextlib.AbstractContextManager[Sql]:
        return self.engine.transaction(lock)

    def table_exists(self, db: Sql, table: str) -> bool:
        return self.engine.table_exists(db, table)

    def has_column(self, db: Sql, table: str, column: str) -> bool:
        return self.engine.has_column(db, table, column)

    def healthy(self) -> bool:
        return self.engine.healthy()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with _SHARED_LOCK:
            engine, handles = _SHARED[self.engine.url]
            if handles > 1:
                _SHARED[self.engine.url] = (engine, handles - 1)
                return
            del _SHARED[self.engine.url]
        engine.close()


_SHARED: dict[str, tuple[PostgresEngine, int]] = {}
_SHARED_LOCK = threading.Lock()


def postgres_engine(url: str) -> Engine:
    """The process's pool for the database at `url`, shared by the index, the webhook queue and the failed-login
    counts (one pool each would hold three times the connections); close the handle when done."""
    from registry.database_postgresql import PostgresEngine

    with _SHARED_LOCK:
        found = _SHARED.get(url)
        engine = found[0] if found is not None else PostgresEngine(url)
        _SHARED[url] = (engine, (found[1] if found is not None else 0) + 1)
    return _SharedPostgres(engine)
