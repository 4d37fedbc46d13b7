"""The metadata database's engines at their boundary: what PostgreSQL refuses reaches the callers as `DatabaseError`,
one of `DATABASE_ERRORS`, whatever psycopg called it (tests/test_startup_imports.py: psycopg is loaded only for a
PostgreSQL database)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from registry import database as database_module
from registry.database import DATABASE_ERRORS, DatabaseError, Engine, postgres_engine
from tests.postgres_server import PostgresServer


@pytest.fixture
def engine(postgres_server: PostgresServer) -> Iterator[Engine]:
    url = postgres_server.new_database()
    engine = postgres_engine(url)
    yield engine
    engine.close()
    postgres_server.drop_database(url)


def test_postgresql_errors_are_database_errors(engine: Engine) -> None:
    with pytest.raises(DatabaseError) as refused:
        engine.read("SELECT x FROM no_such_table")
    assert isinstance(refused.value.__cause__, psycopg.errors.UndefinedTable)
    assert "no_such_table" in str(refused.value)
    assert isinstance(refused.value, DATABASE_ERRORS)

    with engine.transaction() as db:
        db.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
        db.execute("INSERT INTO t VALUES (?)", (1,))
    with pytest.raises(DatabaseError) as duplicate, engine.transaction() as db:  # a statement's error
        db.execute("INSERT INTO t VALUES (?)", (2,))
        db.execute("INSERT INTO t VALUES (?)", (1,))
    assert isinstance(duplicate.value.__cause__, psycopg.errors.UniqueViolation)
    assert engine.read("SELECT x FROM t") == [(1,)]  # rolled back: 2 is not there

    with pytest.raises(ZeroDivisionError), engine.transaction() as db:  # the caller's own errors pass unchanged
        db.execute("INSERT INTO t VALUES (?)", (3,))
        raise ZeroDivisionError
    assert engine.read("SELECT x FROM t") == [(1,)]


def test_an_unreachable_postgresql_is_a_database_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(database_module, "CONNECT_TIMEOUT_SECONDS", 1.0)
    with pytest.raises(DatabaseError) as unreachable:
        postgres_engine("postgresql://moorage@127.0.0.1:9/none")
    assert isinstance(unreachable.value.__cause__, psycopg.Error)
