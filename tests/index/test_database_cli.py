"""`moorage database migrate` and `moorage database import`: the schema on demand, and an import from storage that
resumes where an interrupted one stopped (on SQLite and on PostgreSQL)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

import registry.index.local
from registry.admin import EXIT_FAILURE, EXIT_OK
from registry.app import create_app
from registry.index.cli import run_import, run_migrate
from registry.index.database import SCHEMA_VERSION, Database
from registry.index.local import IMPORT_CHECKPOINT, LocalIndex
from registry.settings import Settings
from tests.api.conftest import make_settings
from tests.api.helpers import push_image
from tests.postgres_server import PostgresServer


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    storage = {"filesystem": {"root": str(tmp_path / "data"), "fsync": False}}
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'index.sqlite'}"
        yield make_settings(storage, {"database": {"url": url}, "index": {"rebuild_concurrency": 1}})
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.new_database()
    yield make_settings(storage, {"database": {"url": url}, "index": {"rebuild_concurrency": 1}})
    server.drop_database(url)


def database(settings: Settings) -> Database:
    target = settings.database.target()
    return Database.open(target) if isinstance(target, Path) else Database.connect(str(target))


async def push_repositories(settings: Settings, count: int) -> None:
    storage = {"filesystem": {"root": str(settings.storage.filesystem.root)}}
    app = create_app(make_settings(storage, {"index": {"enabled": False}}))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as client:
            for i in range(count):
                await push_image(client, f"team/app{i:03d}", "v1", seed=str(i))


def imported(settings: Settings) -> set[str]:
    db = database(settings)
    try:
        return db.names()
    finally:
        db.close()


async def test_migrate_creates_the_schema(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_migrate(argparse.Namespace(), settings) == EXIT_OK
    assert f"schema version {SCHEMA_VERSION}" in capsys.readouterr().out
    db = database(settings)
    try:
        assert db.get_meta("schema") == str(SCHEMA_VERSION)
    finally:
        db.close()


async def test_an_interrupted_import_resumes(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(registry.index.local, "IMPORT_BATCH", 4)
    await push_repositories(settings, 10)
    refreshed: list[str] = []
    original = LocalIndex._refresh

    async def failing_after_six(self: LocalIndex, name: str, fresh: bool = False) -> bool:
        if len(refreshed) == 6:
            raise OSError("the storage went away")
        refreshed.append(name)
        return await original(self, name, fresh)

    monkeypatch.setattr(LocalIndex, "_refresh", failing_after_six)
    args = argparse.Namespace(fresh=False, quiet=True)
    assert await run_import(args, settings) == EXIT_FAILURE
    assert "run it again to resume" in capsys.readouterr().err
    assert len(imported(settings)) == 6

    refreshed.clear()

    async def counted(self: LocalIndex, name: str, fresh: bool = False) -> bool:
        refreshed.append(name)
        return await original(self, name, fresh)

    monkeypatch.setattr(LocalIndex, "_refresh", counted)
    assert await run_import(args, settings) == EXIT_OK
    assert "imported 10 repositories" in capsys.readouterr().out
    assert refreshed == [f"team/app{i:03d}" for i in range(4, 10)]  # the first batch of 4 was recorded done
    assert imported(settings) == {f"team/app{i:03d}" for i in range(10)}
    db = database(settings)
    try:
        assert db.get_meta(IMPORT_CHECKPOINT) == ""  # done: the next import starts over
    finally:
        db.close()
