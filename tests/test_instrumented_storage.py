"""The metrics wrapper around a storage backend: latency per operation, failures that are failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.instrumented_storage import InstrumentedBackend
from registry.metrics import Metrics
from storage_backends import PathNotFound, StorageUnavailable
from storage_backends.filesystem import FilesystemBackend


def sample(metrics: Metrics, name: str, operation: str) -> float:
    metrics.flush()
    value = metrics.registry.get_sample_value(name, {"backend": "filesystem", "operation": operation})
    return value or 0.0


async def test_calls_are_timed_and_only_real_failures_counted(tmp_path: Path) -> None:
    metrics = Metrics()
    backend = InstrumentedBackend(FilesystemBackend(tmp_path), metrics)
    await backend.put_content("a/b", b"data")
    assert await backend.get_content("a/b") == b"data"
    assert [chunk async for chunk in backend.reader("a/b")] == [b"data"]
    with pytest.raises(PathNotFound):
        await backend.get_content("missing")
    async with await backend.writer("a/c") as writer:
        await writer.write(b"x")
        assert await writer.commit()

    durations = "moorage_storage_operation_duration_seconds_count"
    errors = "moorage_storage_operation_errors_total"
    assert sample(metrics, durations, "put_content") == 1
    assert sample(metrics, durations, "get_content") == 2
    assert sample(metrics, durations, "reader") == 1
    assert sample(metrics, durations, "commit") == 1
    assert sample(metrics, errors, "get_content") == 0  # a missing path is an answer, not a failure

    async def broken(path: str) -> bytes:
        raise StorageUnavailable("down")

    backend.inner.get_content = broken  # type: ignore[method-assign]
    with pytest.raises(StorageUnavailable):
        await backend.get_content("a/b")
    assert sample(metrics, errors, "get_content") == 1
