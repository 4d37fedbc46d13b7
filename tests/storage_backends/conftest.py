"""Fixtures of the storage backend conformance suite.

Every test of `test_conformance.py` runs once per entry of `HARNESSES`. To put another backend under the
suite, write one factory function (like `filesystem_harness`) and add it to `HARNESSES`; nothing else changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest

from registry.instrumented_storage import InstrumentedBackend
from registry.metrics import Metrics
from storage_backends.base import StorageBackend
from storage_backends.filesystem import TMP_DIR, FilesystemBackend
from storage_backends.memory import MemoryBackend
from storage_backends.s3 import S3Backend, S3Options
from tests.s3_server import MotoServer


@dataclass(frozen=True)
class BackendHarness:
    """One backend under test, plus the few hooks that need to look behind the StorageBackend interface."""

    backend: StorageBackend
    #: Traces of unfinished or abandoned writes (temporary files, pending multipart uploads, ...). The suite
    #: checks there are none after commits, cancels, failed exclusive writes, copies, moves and deletes.
    leftovers: Callable[[], Awaitable[list[str]]]
    #: Make the `modified` time of the object at the given key strictly older than that of any later change.
    #: The filesystem sets the mtime a day back; a store that cannot set times may instead wait until its
    #: clock has moved past the object's time (S3 keeps whole seconds).
    backdate: Callable[[str], Awaitable[None]]
    #: Whether `redirect_url` hands out URLs (S3: presigned GETs) rather than None (serve it ourselves).
    redirects: bool = False


# A factory gets the test's FixtureRequest, so it can use other fixtures (tmp_path, a session-scoped S3
# server, ...), and is an async context manager: tear down after the yield. The fixture calls `aclose`.
HarnessFactory = Callable[[pytest.FixtureRequest], AbstractAsyncContextManager[BackendHarness]]


@contextlib.asynccontextmanager
async def filesystem_harness(request: pytest.FixtureRequest) -> AsyncIterator[BackendHarness]:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    backend = FilesystemBackend(tmp_path / "storage")

    async def leftovers() -> list[str]:
        return sorted(os.listdir(os.path.join(backend.root, TMP_DIR)))

    async def backdate(path: str) -> None:
        old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).timestamp()
        os.utime(os.path.join(backend.root, path), (old, old))

    yield BackendHarness(backend=backend, leftovers=leftovers, backdate=backdate, redirects=False)


@contextlib.asynccontextmanager
async def s3_harness(request: pytest.FixtureRequest) -> AsyncIterator[BackendHarness]:
    """A fresh bucket on the session's moto server, reached over real HTTP."""
    server: MotoServer = request.getfixturevalue("s3_server")
    bucket = server.new_bucket()
    options = {k: v for k, v in server.storage_settings(bucket)["s3"].items()}
    backend = S3Backend(S3Options(**options, redirect=True))
    await backend.start()
    raw = server.client()

    async def leftovers() -> list[str]:
        uploads = raw.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return sorted(f"multipart:{u['Key']}" for u in uploads)

    async def backdate(path: str) -> None:
        # S3 cannot set a modification time: wait until the store's clock (whole seconds) has moved on.
        modified = (await backend.stat(path)).modified
        wait = (modified + dt.timedelta(seconds=1.05) - dt.datetime.now(dt.UTC)).total_seconds()
        await asyncio.sleep(max(wait, 0.0))

    yield BackendHarness(backend=backend, leftovers=leftovers, backdate=backdate, redirects=True)
    server.drop_bucket(bucket)


@contextlib.asynccontextmanager
async def instrumented_harness(request: pytest.FixtureRequest) -> AsyncIterator[BackendHarness]:
    """The filesystem behind the registry's metrics wrapper: wrapping must not change any behaviour."""
    async with filesystem_harness(request) as inner:
        wrapped = InstrumentedBackend(inner.backend, Metrics())
        yield dataclasses.replace(inner, backend=wrapped)


@contextlib.asynccontextmanager
async def memory_harness(request: pytest.FixtureRequest) -> AsyncIterator[BackendHarness]:
    """The in-memory test double: it must behave as the real stores do."""
    backend = MemoryBackend()

    async def leftovers() -> list[str]:
        return backend.open_writes()

    async def backdate(path: str) -> None:
        backend.backdate(path, 86400)

    yield BackendHarness(backend=backend, leftovers=leftovers, backdate=backdate, redirects=False)


# ---- The one place that lists the backends under test. ----
HARNESSES: dict[str, HarnessFactory] = {
    "filesystem": filesystem_harness,
    "s3": s3_harness,
    "instrumented-filesystem": instrumented_harness,
    "memory": memory_harness,
}

_HARNESS_KEY = pytest.StashKey[BackendHarness]()


@pytest.fixture(params=list(HARNESSES))
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[StorageBackend]:
    """A fresh, empty backend of each kind in `HARNESSES`; the `harness` fixture gives its hooks."""
    async with HARNESSES[request.param](request) as made:
        request.node.stash[_HARNESS_KEY] = made
        try:
            yield made.backend
        finally:
            await made.backend.aclose()


@pytest.fixture
def harness(backend: StorageBackend, request: pytest.FixtureRequest) -> BackendHarness:
    """The hooks of the `backend` of the running test."""
    made: BackendHarness = request.node.stash[_HARNESS_KEY]
    assert made.backend is backend
    return made
