"""S3: copies conditional on the source's identity (CopySourceIfMatch), which uploads use to publish a chunk only
while it is the object looked at. moto ignores the condition, so the backend must find that out at start and not
rely on it; a store that honours it is emulated here by answering 412 for a copy whose condition does not hold, as
S3 does (for CopyObject and for each UploadPartCopy)."""

from __future__ import annotations

from typing import Any

import pytest

from storage_backends import SourceChanged
from storage_backends import s3 as s3_module
from storage_backends.s3 import PreconditionFailed, S3Backend
from tests.storage_backends.conftest import BackendHarness


def honouring_copy_conditions(backend: S3Backend) -> list[str]:
    """Make the store answer 412 when a copy's CopySourceIfMatch differs from the source's ETag; the operations
    that carried a condition are listed in what this returns."""
    original, conditioned = backend.call, []

    async def call(fn: Any, /, **kwargs: Any) -> Any:
        if "CopySourceIfMatch" in kwargs:
            conditioned.append(fn.__name__)
            source = kwargs["CopySource"]
            head = await original(backend.client.head_object, Bucket=source["Bucket"], Key=source["Key"])
            if head["ETag"] != kwargs["CopySourceIfMatch"]:
                raise PreconditionFailed(source["Key"])
        return await original(fn, **kwargs)

    backend.call = call  # type: ignore[method-assign]
    return conditioned


async def test_moto_ignoring_the_condition_is_found_at_start(s3: BackendHarness) -> None:
    backend = s3.backend
    assert isinstance(backend, S3Backend)
    await backend.start()
    assert backend.copies_if_match is False
    assert not await backend.exists("moorage/conditional-copy-probe")  # the probe's copy went through: removed


async def test_a_store_honouring_the_condition_is_found_at_start(s3: BackendHarness) -> None:
    backend = s3.backend
    assert isinstance(backend, S3Backend)
    honouring_copy_conditions(backend)
    await backend.start()
    assert backend.copies_if_match is True
    assert not await backend.exists("moorage/conditional-copy-probe")


@pytest.mark.parametrize("exclusive", [False, True], ids=["copy-object", "multipart-copy"])
async def test_a_conditional_copy_of_a_replaced_source_copies_nothing(
    s3: BackendHarness, exclusive: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exclusive copies go in parts (CompleteMultipartUpload's If-None-Match): every part carries the condition, so
    a source replaced between two parts stops the copy too."""
    backend = s3.backend
    assert isinstance(backend, S3Backend)
    conditioned = honouring_copy_conditions(backend)
    await backend.start()
    conditioned.clear()  # the probe's
    monkeypatch.setattr(s3_module, "COPY_PART_SIZE", 5 * 1024 * 1024)  # two parts
    await backend.put_content("c/src", b"a" * (6 * 1024 * 1024))
    looked = await backend.stat("c/src")
    assert await backend.copy("c/src", "c/dst", exclusive=exclusive, if_match=looked.etag) is True
    assert await backend.get_content("c/dst") == b"a" * (6 * 1024 * 1024)
    assert set(conditioned) == {"upload_part_copy" if exclusive else "copy_object"}
    await backend.put_content("c/src", b"b" * (6 * 1024 * 1024))
    with pytest.raises(SourceChanged):
        await backend.copy("c/src", "c/other", exclusive=exclusive, if_match=looked.etag)
    assert not await backend.exists("c/other")
    assert await s3.leftovers() == []
