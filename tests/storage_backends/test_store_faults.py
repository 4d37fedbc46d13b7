"""Backends facing a store that is full, gone or refusing us: typed errors, and nothing half-written left behind.

The filesystem runs on a real, small tmpfs (tests/tmpfs.py) that really answers ENOSPC; S3 on the session's moto
server, with the bucket deleted under the backend and created again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from storage_backends import PathNotFound, StorageError, StorageFull, StorageUnavailable
from storage_backends.filesystem import ROOT_MISSING, TMP_DIR, FilesystemBackend, _translated
from storage_backends.s3 import ACCESS_DENIED, BUCKET_GONE, PreconditionFailed, S3Backend, S3Options, _storage_error
from tests.s3_server import MotoServer
from tests.tmpfs import MiB, fill, free_bytes, small_tmpfs

TMPFS_SIZE = 4 * MiB


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "tmpfs", TMPFS_SIZE) as path:
        yield path


@pytest.fixture
async def fs(mount: Path) -> AsyncIterator[FilesystemBackend]:
    backend = FilesystemBackend(mount / "store")
    yield backend
    await backend.aclose()


def leftovers(backend: FilesystemBackend) -> list[str]:
    return sorted(os.listdir(os.path.join(backend.root, TMP_DIR)))


async def test_writer_out_of_space_mid_stream_leaves_nothing(fs: FilesystemBackend, mount: Path) -> None:
    writer = await fs.writer("blobs/big/data")
    with pytest.raises(StorageFull):
        for _ in range(8):  # 8 MiB into 4
            await writer.write(b"x" * MiB)
    await writer.cancel()
    assert leftovers(fs) == []
    assert not await fs.exists("blobs/big/data")
    # Space was never taken for good: the same write fits once it is smaller than the disk.
    async with await fs.writer("blobs/big/data") as writer:
        await writer.write(b"y" * MiB)
        assert await writer.commit()
    assert await fs.get_content("blobs/big/data") == b"y" * MiB


async def test_buffered_bytes_that_do_not_fit_fail_the_commit_and_leave_nothing(fs: FilesystemBackend) -> None:
    """A small write sits in the file's buffer; the disk fills; commit flushes it: ENOSPC there, temp file removed
    (the buffered close failed again in cancel and used to leave a 0-byte temporary file behind)."""
    filler = fill(Path(fs.root) / "filler")
    writer = await fs.writer("repositories/r/_uploads/u/chunks/0")
    await writer.write(b"z" * 1000)
    with pytest.raises(StorageFull):
        await writer.commit()
    await writer.cancel()
    assert leftovers(fs) == []
    assert not await fs.exists("repositories/r/_uploads/u/chunks/0")
    filler.unlink()
    async with await fs.writer("repositories/r/_uploads/u/chunks/0", exclusive=True) as writer:
        await writer.write(b"z" * 1000)
        assert await writer.commit()


async def test_put_content_and_copy_out_of_space(fs: FilesystemBackend) -> None:
    await fs.put_content("a/source", b"s" * (5 * MiB // 2))
    with pytest.raises(StorageFull):
        await fs.put_content("a/too-big", b"t" * (3 * MiB))
    with pytest.raises(StorageFull):
        await fs.copy("a/source", "a/copy")
    assert leftovers(fs) == []
    assert not await fs.exists("a/too-big") and not await fs.exists("a/copy")
    assert await fs.get_content("a/source") == b"s" * (5 * MiB // 2)
    await fs.delete("a/source")
    await fs.put_content("a/too-big", b"t" * (3 * MiB))
    assert (await fs.stat("a/too-big")).size == 3 * MiB


async def test_free_bytes_follow_the_disk(fs: FilesystemBackend, mount: Path) -> None:
    before = await fs.free_bytes()
    assert before is not None and 0 < before <= TMPFS_SIZE
    assert before == free_bytes(mount)
    await fs.put_content("big", b"b" * (2 * MiB))
    after = await fs.free_bytes()
    assert after is not None and before - after >= 2 * MiB


async def test_a_missing_root_is_unavailable_not_not_found(tmp_path: Path) -> None:
    root = tmp_path / "store"
    backend = FilesystemBackend(root)
    await backend.put_content("repositories/r/link", b"sha256:x")
    await backend.check()
    shutil.rmtree(root)
    for read in (backend.get_content, backend.stat, backend.list):
        with pytest.raises(StorageUnavailable) as raised:
            await read("repositories/r/link")
        assert raised.value.reason == ROOT_MISSING
    with pytest.raises(StorageUnavailable):
        await anext(aiter(backend.reader("repositories/r/link")))
    with pytest.raises(StorageUnavailable):
        await backend.put_content("repositories/r/link", b"x")
    with pytest.raises(StorageUnavailable):
        await backend.writer("repositories/r/chunk")
    with pytest.raises(StorageUnavailable) as raised:
        await backend.check()
    assert raised.value.reason == ROOT_MISSING
    # The volume comes back (empty): the backend carries on, its temporary directory made anew.
    root.mkdir()
    await backend.check()
    with pytest.raises(PathNotFound):
        await backend.get_content("repositories/r/link")
    async with await backend.writer("repositories/r/chunk") as writer:
        await writer.write(b"back")
        assert await writer.commit()
    assert await backend.get_content("repositories/r/chunk") == b"back"
    assert leftovers(backend) == []


@pytest.mark.parametrize(
    ("number", "kind"),
    [
        (errno.ENOSPC, StorageFull),
        (errno.EDQUOT, StorageFull),
        (errno.EIO, StorageUnavailable),
        (errno.EROFS, StorageUnavailable),
        (errno.EACCES, StorageUnavailable),
        (errno.ENOENT, None),
        (errno.EEXIST, None),
    ],
)
def test_os_errors_that_speak_of_the_store(number: int, kind: type[StorageError] | None) -> None:
    translated = _translated(OSError(number, os.strerror(number)))
    assert type(translated) is kind if kind is not None else translated is None


# -- S3 ------------------------------------------------------------------------------------------------------------


def client_error(code: str, status: int) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": "..."}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "PutObject")


@pytest.mark.parametrize(
    ("code", "status", "kind", "reason"),
    [
        ("NoSuchBucket", 404, StorageUnavailable, BUCKET_GONE),
        ("AccessDenied", 403, StorageUnavailable, ACCESS_DENIED),
        ("InvalidAccessKeyId", 403, StorageUnavailable, ACCESS_DENIED),
        ("SignatureDoesNotMatch", 403, StorageUnavailable, ACCESS_DENIED),
        ("403", 403, StorageUnavailable, ACCESS_DENIED),  # a HEAD: no body, so no code
        ("XMinioStorageFull", 507, StorageFull, None),
        ("SlowDown", 503, StorageUnavailable, None),
        ("NoSuchKey", 404, PathNotFound, None),
        ("404", 404, PathNotFound, None),
        ("PreconditionFailed", 412, PreconditionFailed, None),
        # Not a full store: one request too large.
        ("EntityTooLarge", 400, StorageError, None),
    ],
)
def test_s3_errors_by_code(code: str, status: int, kind: type[StorageError], reason: str | None) -> None:
    error = _storage_error(client_error(code, status), "put_object", {"Key": "k"})
    assert type(error) is kind
    if reason is not None:
        assert isinstance(error, StorageUnavailable) and error.reason == reason


@pytest.fixture
async def s3(s3_server: MotoServer) -> AsyncIterator[tuple[S3Backend, str]]:
    bucket = s3_server.new_bucket()
    backend = S3Backend(S3Options(**s3_server.storage_settings(bucket)["s3"]))
    await backend.start()
    yield backend, bucket
    await backend.aclose()
    with contextlib.suppress(ClientError):  # a test may have left it deleted
        s3_server.drop_bucket(bucket)


async def test_s3_bucket_deleted_under_the_backend(s3: tuple[S3Backend, str], s3_server: MotoServer) -> None:
    backend, bucket = s3
    await backend.put_content("repositories/r/_manifests/tags/v1/current/link", b"sha256:x")
    await backend.check()
    s3_server.drop_bucket(bucket)

    with pytest.raises(StorageUnavailable) as raised:
        await backend.check()
    assert raised.value.reason == BUCKET_GONE
    # Every read answers "gone", never "no such key": a pull must not be told the manifest is unknown.
    path = "repositories/r/_manifests/tags/v1/current/link"
    with pytest.raises(StorageUnavailable):
        await backend.get_content(path)
    with pytest.raises(StorageUnavailable):
        await backend.stat(path)
    with pytest.raises(StorageUnavailable):
        await backend.exists(path)
    with pytest.raises(StorageUnavailable):
        await backend.list("repositories/r/_manifests/tags")
    with pytest.raises(StorageUnavailable):
        await anext(aiter(backend.reader(path)))
    with pytest.raises(StorageUnavailable):
        await backend.put_content(path, b"sha256:y")
    writer = await backend.writer("blobs/x/data")
    await writer.write(b"w" * 100)
    with pytest.raises(StorageUnavailable):
        await writer.commit()

    s3_server.client().create_bucket(Bucket=bucket)
    await backend.check()
    assert not await backend.exists(path)
    await backend.put_content(path, b"sha256:z")
    assert await backend.get_content(path) == b"sha256:z"
