from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres_server import PACKAGE, PostgresServer, postgres_bin_dir
from tests.s3_server import MotoServer


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto S3 server for the session; each test takes a fresh bucket with `s3_server.new_bucket()`."""
    server = MotoServer(Path(tmp_path_factory.mktemp("moto")) / "moto.log")
    server.start()
    yield server
    server.stop()


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
