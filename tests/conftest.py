from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import ldap_server as ldap_module
from tests import shared_tls
from tests.ldap_server import LdapServer
from tests.postgres_server import PACKAGE, PostgresServer, postgres_bin_dir
from tests.s3_server import MotoServer

shared_tls.install()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto S3 server for the session; each test takes a fresh bucket with `s3_server.new_bucket()`."""
    server = MotoServer(Path(tmp_path_factory.mktemp("moto")) / "moto.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def ldap_directory() -> Iterator[LdapServer]:
    """A real slapd with a fresh directory (tests/ldap_server.py: users alice, bob, carol, dave (locked); groups
    developers, admins, readers). It starts in tens of milliseconds, and tests change it."""
    missing = ldap_module.missing_tools()
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: apt-get install {ldap_module.PACKAGES} (./dev.sh test does)")
    with LdapServer() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One PostgreSQL server per test process; each test takes a fresh database with `postgres_server.new_database()`.

    Without the server binaries the tests fail, saying which package to install (`./dev.sh test` installs it), never
    skip: a skipped test proves nothing.
    """
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.fail(
            f"PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: apt-get install {PACKAGE}",
            pytrace=False,
        )
    server = PostgresServer(bin_dir, Path(tmp_path_factory.mktemp("postgres")) / "postgres.log")
    server.start()
    yield server
    server.stop()


# Tests that take 10 s or more (`--durations`), started first: with several test processes, one of them left for the
# end keeps a process busy alone while the others have finished.
SLOW_FIRST = (
    "tests/e2e/test_gc_race.py::",
    "tests/api/test_index_incremental.py::test_the_index_equals_a_rebuild_after_random_writes",
    "tests/e2e/test_auth.py::test_ci_token_with_the_companion_client_and_revoked_at_once",
    "tests/api/test_index_postgresql.py::",
    "tests/api/test_gc_races.py::",
    "tests/e2e/test_storage_faults.py::",
    "tests/e2e/test_postgresql_replicas.py::",
    "tests/e2e/test_proxy.py::",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def slow(item: pytest.Item) -> bool:
        return item.nodeid.startswith(SLOW_FIRST)

    items.sort(key=lambda item: not slow(item))  # stable: the rest keep their order
