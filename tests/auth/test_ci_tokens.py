"""CI tokens in storage, or in the shared database (PostgreSQL): created once with a secret shown once, hashed,
listed, revoked, expiring; tokens an older deployment left in storage keep working after the move to PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from registry import database as database_module
from registry.auth.ci_tokens import (
    SECRET_PREFIX,
    CiTokenError,
    CiTokenStore,
    DatabaseTokenRecords,
    StorageTokenRecords,
    TokenRecords,
)
from registry.database import postgres_engine
from storage_backends import StorageBackend, StorageUnavailable, create_backend
from tests.postgres_server import PostgresServer


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[StorageBackend]:
    backend = create_backend("filesystem", {"root": tmp_path, "fsync": False})
    await backend.start()
    yield backend
    await backend.aclose()


@pytest.fixture(params=["storage", "postgresql"])
def records(request: pytest.FixtureRequest, backend: StorageBackend) -> Iterator[TokenRecords]:
    if request.param == "storage":
        yield StorageTokenRecords(backend)
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.new_database()
    records = DatabaseTokenRecords(lambda: postgres_engine(url), StorageTokenRecords(backend))
    yield records
    records.close()
    server.drop_database(url)


async def overwrite(records: TokenRecords, name: str, record: bytes) -> None:
    """Replace a token's record behind the store's back (a test of what it makes of a record it reads)."""
    await records.remove(name)
    assert await records.add(name, record)


async def test_create_authenticate_revoke(records: TokenRecords) -> None:
    store = CiTokenStore(records)
    token, secret = await store.create("ci-app", ["repository:team/app:pull,push"])
    assert secret.startswith(SECRET_PREFIX) and len(secret) > 40
    stored = await records.get("ci-app")
    assert stored is not None and secret.encode() not in stored and token.hash.encode() in stored
    identity = await store.authenticate("ci-app", secret)
    assert identity is not None and identity.kind == "ci" and identity.name == "ci-app"
    assert [str(g) for g in identity.grants] == ["repository:team/app:pull,push"]
    assert await store.authenticate("ci-app", secret + "x") is None
    assert await store.authenticate("other", secret) is None
    assert [t.name for t in await store.list()] == ["ci-app"]
    assert await store.revoke("ci-app")
    assert await store.authenticate("ci-app", secret) is None
    assert not await store.revoke("ci-app")
    assert await store.list() == []


async def test_names_are_unique_and_valid(records: TokenRecords) -> None:
    store = CiTokenStore(records)
    await store.create("ci", ["repository:a:pull"])
    with pytest.raises(CiTokenError, match="exists"):
        await store.create("ci", ["repository:a:pull"])
    for bad in ("../x", "a/b", "", "anonymous", "a:b"):
        with pytest.raises(CiTokenError, match="invalid token name"):
            await store.create(bad, ["repository:a:pull"])


async def test_scopes_are_required_and_checked(records: TokenRecords) -> None:
    store = CiTokenStore(records)
    with pytest.raises(CiTokenError, match="at least one scope"):
        await store.create("ci", [])
    with pytest.raises(CiTokenError, match="invalid scope"):
        await store.create("ci", ["registry:catalog:*"])
    token, _ = await store.create("ci", ["repository:a:pull repository:b/*:*"])
    assert [str(g) for g in token.grants] == ["repository:a:pull", "repository:b/*:pull,push,delete"]


async def test_expired_tokens_are_refused(records: TokenRecords) -> None:
    store = CiTokenStore(records)
    token, secret = await store.create("ci", ["repository:a:pull"], dt.timedelta(seconds=60))
    assert token.expires_at is not None
    assert await store.authenticate("ci", secret) is not None
    assert token.expired(token.expires_at + dt.timedelta(seconds=1))
    expired = token.to_json().replace(
        token.expires_at.isoformat().replace("+00:00", "Z").encode(), b"2000-01-01T00:00:00Z"
    )
    await overwrite(records, "ci", expired)
    assert await store.authenticate("ci", secret) is None
    assert not await store.still_valid("ci", token.id)


async def test_tokens_left_in_storage_keep_working_in_the_database(
    backend: StorageBackend, postgres_server: PostgresServer
) -> None:
    before, secret = await CiTokenStore(StorageTokenRecords(backend)).create("old-ci", ["repository:a:pull"])
    url = postgres_server.new_database()
    records = DatabaseTokenRecords(lambda: postgres_engine(url), StorageTokenRecords(backend))
    try:
        store = CiTokenStore(records)
        identity = await store.authenticate("old-ci", secret)
        assert identity is not None and identity.name == "old-ci"
        with pytest.raises(CiTokenError, match="exists"):
            await store.create("old-ci", ["repository:b:pull"])  # its name stays taken
        await store.create("new-ci", ["repository:b:pull"])
        assert [t.name for t in await store.list()] == ["new-ci", "old-ci"]
        assert await CiTokenStore(StorageTokenRecords(backend)).get("new-ci") is None  # new ones: the database
        assert await store.revoke("old-ci")
        assert await store.authenticate("old-ci", secret) is None
        assert [t.name for t in await store.list()] == ["new-ci"]
        assert before.id
    finally:
        records.close()
        postgres_server.drop_database(url)


async def test_a_database_that_cannot_be_reached_is_unavailable_not_an_error(
    backend: StorageBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database_module, "CONNECT_TIMEOUT_SECONDS", 1.0)  # how long the pool tries: not the point
    unreachable = "postgresql://moorage@127.0.0.1:9/nothing"  # the discard port: nothing listens there
    store = CiTokenStore(DatabaseTokenRecords(lambda: postgres_engine(unreachable), StorageTokenRecords(backend)))
    with pytest.raises(StorageUnavailable, match="CI tokens") as refused:
        await store.authenticate("ci", SECRET_PREFIX + "x")
    assert refused.value.reason == "the metadata database cannot be reached"  # what a client is told (503)
