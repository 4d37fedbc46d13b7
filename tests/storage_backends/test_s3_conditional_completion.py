"""S3: an exclusive multipart write whose conditional completion fails while another writer's completion of the same
key went through (moto answers 500 there, real S3 may answer 409 ConditionalRequestConflict rather than 412) lost
the race like a 412 would say: `commit()` is False and nothing is left behind; without such a key the error stands."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from storage_backends import StorageBackend, StorageUnavailable
from storage_backends.s3 import S3Backend
from tests.storage_backends.conftest import HARNESSES, BackendHarness

MIB = 1024 * 1024


@pytest.fixture
async def s3(request: pytest.FixtureRequest) -> AsyncIterator[BackendHarness]:
    async with HARNESSES["s3"](request) as made:
        try:
            yield made
        finally:
            await made.backend.aclose()


def failing_completion(backend: StorageBackend, before: Any = None) -> None:
    """Make the next CompleteMultipartUpload fail as moto does, after `before()` ran (another writer wins)."""
    assert isinstance(backend, S3Backend)
    original = backend.call

    async def call(fn: Any, /, **kwargs: Any) -> Any:
        if fn.__name__ == "complete_multipart_upload":
            backend.call = original  # type: ignore[method-assign]
            if before is not None:
                await before()
            raise StorageUnavailable("s3 complete_multipart_upload: 500: Internal Server Error")
        return await original(fn, **kwargs)

    backend.call = call  # type: ignore[method-assign]


async def test_a_failed_conditional_completion_of_a_taken_key_lost_the_race(s3: BackendHarness) -> None:
    backend = s3.backend
    writer = await backend.writer("race/blob", exclusive=True)
    await writer.write(b"x" * (16 * MIB + 1))  # past the part size: a multipart upload

    async def other_writer_wins() -> None:
        assert await backend.put_content("race/blob", b"the winner") is True

    failing_completion(backend, other_writer_wins)
    assert await writer.commit() is False
    assert await backend.get_content("race/blob") == b"the winner"
    assert await s3.leftovers() == []


async def test_a_failed_completion_without_such_a_key_is_an_error(s3: BackendHarness) -> None:
    backend = s3.backend
    writer = await backend.writer("lonely/blob", exclusive=True)
    await writer.write(b"y" * (16 * MIB + 1))
    failing_completion(backend)
    with pytest.raises(StorageUnavailable):
        await writer.commit()
    assert not await backend.exists("lonely/blob")
    assert await s3.leftovers() == []


async def test_exclusive_writes_are_atomic_only_where_the_store_honours_the_condition(s3: BackendHarness) -> None:
    """What the upload store asks before trusting a running hash for a single chunk (UploadStore._publish)."""
    backend = s3.backend
    assert isinstance(backend, S3Backend)
    assert backend.conditional_writes is True  # the harness's moto honours If-None-Match: * (moto_launcher.py)
    assert backend.exclusive_writes is True
    backend.conditional_writes = False  # as `storage.s3.conditional_writes: false`, or a store the probe found not to
    assert backend.exclusive_writes is False


async def test_gc_leaves_a_multipart_write_in_progress_alone(s3: BackendHarness) -> None:
    """GC aborts multipart uploads abandoned for longer than its limit, not one just begun (a blob commit's copy,
    before its first part). moto listed every upload as begun in 2010, so GC aborted those: the launcher
    (tests/moto_launcher.py) lists their real start."""
    backend = s3.backend
    assert isinstance(backend, S3Backend)
    key = backend.key("x/y")
    started = await backend.call(backend.client.create_multipart_upload, Bucket=backend.bucket, Key=key)
    assert await backend.purge_abandoned_writes(3600.0) == 0
    await backend.call(
        backend.client.abort_multipart_upload, Bucket=backend.bucket, Key=key, UploadId=started["UploadId"]
    )
