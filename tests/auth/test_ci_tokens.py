"""CI tokens in storage: created once with a secret shown once, hashed, listed, revoked, expiring."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from registry import paths
from registry.auth.ci_tokens import SECRET_PREFIX, CiTokenError, CiTokenStore
from storage_backends import StorageBackend, create_backend


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[StorageBackend]:
    backend = create_backend("filesystem", {"root": tmp_path, "fsync": False})
    await backend.start()
    yield backend
    await backend.aclose()


async def test_create_authenticate_revoke(backend: StorageBackend) -> None:
    store = CiTokenStore(backend)
    token, secret = await store.create("ci-app", ["repository:team/app:pull,push"])
    assert secret.startswith(SECRET_PREFIX) and len(secret) > 40
    stored = await backend.get_content(paths.ci_token("ci-app"))
    assert secret.encode() not in stored and token.hash.encode() in stored
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


async def test_names_are_unique_and_valid(backend: StorageBackend) -> None:
    store = CiTokenStore(backend)
    await store.create("ci", ["repository:a:pull"])
    with pytest.raises(CiTokenError, match="exists"):
        await store.create("ci", ["repository:a:pull"])
    for bad in ("../x", "a/b", "", "anonymous", "a:b"):
        with pytest.raises(CiTokenError, match="invalid token name"):
            await store.create(bad, ["repository:a:pull"])


async def test_scopes_are_required_and_checked(backend: StorageBackend) -> None:
    store = CiTokenStore(backend)
    with pytest.raises(CiTokenError, match="at least one scope"):
        await store.create("ci", [])
    with pytest.raises(CiTokenError, match="invalid scope"):
        await store.create("ci", ["registry:catalog:*"])
    token, _ = await store.create("ci", ["repository:a:pull repository:b/*:*"])
    assert [str(g) for g in token.grants] == ["repository:a:pull", "repository:b/*:pull,push,delete"]


async def test_expired_tokens_are_refused(backend: StorageBackend) -> None:
    store = CiTokenStore(backend)
    token, secret = await store.create("ci", ["repository:a:pull"], dt.timedelta(seconds=60))
    assert token.expires_at is not None
    assert await store.authenticate("ci", secret) is not None
    assert token.expired(token.expires_at + dt.timedelta(seconds=1))
    expired = token.to_json().replace(
        token.expires_at.isoformat().replace("+00:00", "Z").encode(), b"2000-01-01T00:00:00Z"
    )
    await backend.put_content(paths.ci_token("ci"), expired)
    assert await store.authenticate("ci", secret) is None
    assert not await store.still_valid("ci", token.id)
