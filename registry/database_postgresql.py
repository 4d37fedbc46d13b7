"""The PostgreSQL engine of the metadata database (registry/database.py says what an engine is): a psycopg pool,
the SQL translated to PostgreSQL's spelling, and every psycopg error raised again as `DatabaseError`. Imported only
when a `database.url` names a PostgreSQL database."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg.abc import Buffer
from psycopg.types.string import StrDumper
from psycopg_pool import ConnectionPool

from registry import database
from registry.database import DatabaseError, Dialect, Sql, redacted, to_postgresql


class _PostgresSql:
    __slots__ = ("_connection",)

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        return self._connection.execute(to_postgresql(sql), tuple(parameters))

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> Any:
        rows = [tuple(row) for row in parameters]
        cursor = self._connection.cursor()
        if rows:
            cursor.executemany(to_postgresql(sql), rows)
        return cursor


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """psycopg's errors (the pool's timeouts are among them) as `DatabaseError`, the message unchanged."""
    try:
        yield
    except psycopg.Error as e:
        raise DatabaseError(str(e)) from e


class _TextDumper(StrDumper):
    """A string as `text`, a NUL (which `text` cannot hold: the query failed, answered 503) as U+FFFD: what the
    index stores in its place (registry/index/database.py `_text`), so that a search holding one finds what it
    would on SQLite."""

    def dump(self, obj: str) -> Buffer | None:
        return super().dump(obj.replace("\x00", "\ufffd") if "\x00" in obj else obj)


def _configure(connection: psycopg.Connection[Any]) -> None:
    # Strings as `text` (psycopg's default leaves their type to the server, which cannot choose among the
    # overloads of length() or strpos() for an untyped parameter).
    connection.adapters.register_dumper(str, _TextDumper)


class PostgresEngine:
    dialect: Dialect = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = redacted(url)
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            url,
            min_size=1,
            max_size=database.POOL_SIZE,
            kwargs={"autocommit": True, "connect_timeout": int(database.CONNECT_TIMEOUT_SECONDS)},
            configure=_configure,
            timeout=database.CONNECT_TIMEOUT_SECONDS,
            open=False,
            name="moorage-index",
        )
        try:
            with _translated():
                self._pool.open(wait=True, timeout=database.CONNECT_TIMEOUT_SECONDS)
        except BaseException:
            self._pool.close()  # or its workers would go on trying to connect
            raise

    def read(self, sql: str, parameters: Sequence[Any] = (), *, wait: float | None = None) -> list[Any]:
        with _translated(), self._pool.connection(timeout=wait) as connection:
            return connection.execute(to_postgresql(sql), tuple(parameters)).fetchall()

    @contextlib.contextmanager
    def transaction(self, lock: str | None = None) -> Iterator[Sql]:
        # What the caller's block raises comes through here too: a statement's error, as the commit's.
        with _translated(), self._pool.connection() as connection, connection.transaction():
            if lock is not None:
                connection.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (lock,))
            yield _PostgresSql(connection)

    def table_exists(self, db: Sql, table: str) -> bool:
        row = db.execute("SELECT to_regclass(?) IS NOT NULL", (table,)).fetchone()
        return bool(row[0])

    def has_column(self, db: Sql, table: str, column: str) -> bool:
        row = db.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = ? "
            "AND column_name = ?",
            (table, column),
        ).fetchone()
        return row is not None

    def healthy(self) -> bool:
        return True  # nothing of a server's database is ours to replace

    def close(self) -> None:
        self._pool.close()
