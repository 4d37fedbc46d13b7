"""Change records in storage: read when first seen, once more when settled, skipped when this process applied them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from registry import paths
from registry.index.changes import Change, ChangeLog, merged, position_at, time_of
from storage_backends import StorageBackend, create_backend


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[StorageBackend]:
    store = create_backend("filesystem", {"root": str(tmp_path / "data"), "fsync": False})
    await store.start()
    yield store
    await store.aclose()


async def test_unsettled_records_are_read_once_and_again_when_settled(backend: StorageBackend) -> None:
    writer, reader = ChangeLog(backend, 3600, 3600), ChangeLog(backend, 3600, 3600)
    await writer.append("team/a")
    await writer.append("team/b")
    changed, position = await reader.read("")
    assert names(changed) == {"team/a", "team/b"}
    changed, later = await reader.read(position)
    assert changed == [] and later >= position
    # The same records, settled now (as if an hour had passed): read once more, and the position moves past them.
    reader.settle = 0
    changed, settled_position = await reader.read(position)
    assert names(changed) == {"team/a", "team/b"} and settled_position > position
    assert (await reader.read(settled_position))[0] == []


async def test_what_a_process_applied_itself_is_not_read_back(backend: StorageBackend) -> None:
    log = ChangeLog(backend, 0, 3600)
    log.applied(await log.append("team/mine"))
    await ChangeLog(backend, 0, 3600).append("team/theirs")
    assert names((await log.read(""))[0]) == {"team/theirs"}


async def test_prune_and_bad_records(backend: StorageBackend) -> None:
    log = ChangeLog(backend, 0, 3600)
    await log.append("team/a")
    await backend.put_content(paths.index_change(f"{position_at(1.0)}-x"), b"Not A Name!")
    await backend.put_content(paths.index_change(f"{position_at(2.0)}-y"), b'{"repository": "Bad Name"}')
    assert names((await log.read(""))[0]) == {"team/a"}
    assert await log.prune() == 2  # only the one from 1970
    log.retention = 0
    assert await log.prune() == 1
    assert [info async for info in backend.walk(paths.INDEX_CHANGES)] == []


def names(changes: list[Change]) -> set[str]:
    return {change.repository for change in changes}


async def test_records_carry_the_tags_and_manifests_they_change(backend: StorageBackend) -> None:
    writer, reader = ChangeLog(backend, 0, 3600), ChangeLog(backend, 0, 3600)
    await writer.append(Change("team/a", {"v1", "latest"}, {"sha256:" + "a" * 64}))
    await writer.append(Change("team/a", {"v2"}))
    await writer.append("team/b")  # a name alone: the whole repository (GC, repository deletion, older records)
    changes = merged((await reader.read(""))[0])
    assert changes["team/a"] == Change("team/a", {"v1", "v2", "latest"}, {"sha256:" + "a" * 64})
    assert changes["team/b"].whole
    assert Change.decode(b'{"repository": "team/c"}').whole  # no lists: not a record of rows


def test_positions_are_times() -> None:
    assert time_of(position_at(1234.5)) == pytest.approx(1234.5)
    assert time_of(f"{position_at(10)}-abc") == pytest.approx(10)
