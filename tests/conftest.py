from __future__ import annotations

import os
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

    Without the server binaries the tests fail in CI (CI must run them) and are skipped elsewhere, saying why.
    """
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        reason = f"PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: apt-get install {PACKAGE}"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    server = PostgresServer(bin_dir, Path(tmp_path_factory.mktemp("postgres")) / "postgres.log")
    server.start()
    yield server
    server.stop()
