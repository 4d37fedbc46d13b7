"""The `postgres_server` fixture itself: a real server, a fresh database per test, reachable on 127.0.0.1 only."""

from __future__ import annotations

import socket

import psycopg
import pytest

from tests.postgres_server import PostgresServer


def test_a_new_database_answers_queries(postgres_server: PostgresServer) -> None:
    url = postgres_server.new_database()
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT current_database(), current_user, 6 * 7, pg_encoding_to_char(encoding)"
                               " FROM pg_database WHERE datname = current_database()").fetchone()  # fmt: skip
        assert row == (url.rsplit("/", 1)[1], "moorage", 42, "UTF8")
    finally:
        postgres_server.drop_database(url)


def test_two_new_databases_are_isolated(postgres_server: PostgresServer) -> None:
    first, second = postgres_server.new_database(), postgres_server.new_database()
    try:
        assert first != second
        with psycopg.connect(first) as conn:
            conn.execute("CREATE TABLE things (name text)")
            conn.execute("INSERT INTO things VALUES ('only in the first')")
        with psycopg.connect(second) as conn:
            assert conn.execute("SELECT to_regclass('things')").fetchone() == (None,)
            conn.execute("CREATE TABLE things (name text)")
            assert conn.execute("SELECT count(*) FROM things").fetchone() == (0,)
        with psycopg.connect(first) as conn:
            assert conn.execute("SELECT name FROM things").fetchall() == [("only in the first",)]
    finally:
        postgres_server.drop_database(first)
        postgres_server.drop_database(second)


def test_a_database_with_an_open_connection_can_be_dropped(postgres_server: PostgresServer) -> None:
    url = postgres_server.new_database()
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url) as held:
        held.execute("SELECT 1")
        postgres_server.drop_database(name)
        with pytest.raises(psycopg.OperationalError):
            held.execute("SELECT 1")
    with psycopg.connect(postgres_server.url(), autocommit=True) as admin:
        assert admin.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone() == (0,)
    with pytest.raises(psycopg.OperationalError, match="does not exist"):
        psycopg.connect(url).close()
    postgres_server.drop_database(name)  # dropping it again is no error


def _connects(host: str, port: int, family: socket.AddressFamily = socket.AF_INET) -> bool:
    with socket.socket(family) as s:
        s.settimeout(2)
        try:
            s.connect((host, port))
        except OSError:
            return False
        return True


def test_the_server_listens_on_127_0_0_1_only(postgres_server: PostgresServer) -> None:
    with psycopg.connect(postgres_server.url(), autocommit=True) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert conn.execute("SELECT host(inet_server_addr())").fetchone() == ("127.0.0.1",)
    assert _connects("127.0.0.1", postgres_server.port)
    # Another loopback address (all of 127/8 reaches lo on Linux), IPv6 loopback and this host's own addresses: none.
    assert not _connects("127.0.0.2", postgres_server.port)
    if socket.has_ipv6:
        assert not _connects("::1", postgres_server.port, socket.AF_INET6)
    try:
        own = {str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    except OSError:
        own = set()
    for address in own - {"127.0.0.1"}:
        assert not _connects(address, postgres_server.port), address
