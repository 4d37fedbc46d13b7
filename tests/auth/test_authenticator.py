"""The authenticator's memory: one bcrypt check for many concurrent requests, remembered until the file changes."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from registry.auth import htpasswd as htpasswd_module
from registry.auth.authenticator import Authenticator, AuthFailed
from registry.settings import Settings
from storage_backends import StorageBackend, create_backend

from .test_htpasswd import bcrypt_entry


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[StorageBackend]:
    backend = create_backend("filesystem", {"root": tmp_path / "data", "fsync": False})
    await backend.start()
    yield backend
    await backend.aclose()


def encoded(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
async def authenticator(tmp_path: Path, backend: StorageBackend) -> Authenticator:
    path = tmp_path / "htpasswd"
    path.write_text(bcrypt_entry("alice", "pw") + "\n")
    settings = Settings.model_validate({"auth": {"htpasswd": {"path": str(path)}}})
    made = Authenticator(settings, backend)
    await made.start()
    return made


async def test_one_check_for_concurrent_requests_then_remembered(
    authenticator: Authenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert authenticator.htpasswd is not None
    calls = 0
    verify = authenticator.htpasswd.verified_mark

    async def counting(user: str, password: str) -> str | None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return await verify(user, password)

    monkeypatch.setattr(authenticator.htpasswd, "verified_mark", counting)
    identities = await asyncio.gather(*(authenticator.basic(encoded("alice", "pw"), "a") for _ in range(8)))
    assert {identity.name for identity in identities} == {"alice"} and calls == 1
    await authenticator.basic(encoded("alice", "pw"), "a")
    assert calls == 1
    results = await asyncio.gather(
        *(authenticator.basic(encoded("alice", "bad"), "a") for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(result, AuthFailed) for result in results) and calls == 2


async def test_a_changed_file_forgets_remembered_logins(
    authenticator: Authenticator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(htpasswd_module, "RECHECK_SECONDS", 0.0)
    assert (await authenticator.basic(encoded("alice", "pw"), "a")).name == "alice"
    path = tmp_path / "htpasswd"
    path.write_text(bcrypt_entry("alice", "new") + "\n")
    os.utime(path, ns=(1, 1))
    with pytest.raises(AuthFailed):
        await authenticator.basic(encoded("alice", "pw"), "a")


async def test_empty_basic_credentials_are_anonymous(authenticator: Authenticator) -> None:
    identity = await authenticator.basic(encoded("", ""), "a")
    assert not identity.authenticated
    for bad in ("!!!", base64.b64encode(b"no-colon").decode()):
        with pytest.raises(AuthFailed, match="malformed"):
            await authenticator.basic(bad, "a")
