"""The filesystem backend's listings while entries vanish under them (a tag deleted while GC or the tags list reads
the directory): the entries that remain are all listed, none fails the listing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from storage_backends.filesystem import WALK_BATCH, FilesystemBackend


async def test_an_entry_removed_between_the_directory_read_and_its_stat_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = FilesystemBackend(tmp_path / "storage")
    for name in ("a", "b", "c", "d"):
        await backend.put_content(f"repo/tags/{name}/current/link", name.encode())
    stat_of_entry = FilesystemBackend._entry_fields

    def vanishing(entry: os.DirEntry[str]) -> tuple[int, object, bool]:
        if entry.name in ("b", "d"):
            for leaf in ("current/link", "current", ""):
                target = os.path.join(entry.path, leaf) if leaf else entry.path
                (os.unlink if leaf.endswith("link") else os.rmdir)(target)
        return stat_of_entry(entry)  # type: ignore[return-value]

    monkeypatch.setattr(FilesystemBackend, "_entry_fields", staticmethod(vanishing))
    listed = await backend.list("repo/tags")
    assert [info.path for info in listed] == ["repo/tags/a", "repo/tags/c"]
    walked = [info.path async for info in backend.walk("repo")]
    assert walked == ["repo/tags/a/current/link", "repo/tags/c/current/link"]
    await backend.aclose()


def make_files(root: Path, keys: list[str]) -> None:
    for key in keys:
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


async def test_a_walk_longer_than_its_batches_keeps_key_order_and_start_after(tmp_path: Path) -> None:
    """The walk reads a subtree on a worker thread in batches (WALK_BATCH): the order and `start_after` hold across
    the batches' edges."""
    backend = FilesystemBackend(tmp_path / "storage")
    keys = [f"w/{i % 7}/{i:05d}" for i in range(2 * WALK_BATCH + 300)] + ["w/3-x", "w/3/zz/leaf", "w/30"]
    make_files(tmp_path / "storage", keys)
    expected = sorted(keys)  # S3's order: the full keys' lexical order
    assert [info.path async for info in backend.walk("w")] == expected
    for cut in (0, WALK_BATCH - 1, WALK_BATCH, 3000, len(expected) - 1):
        walked = [info.path async for info in backend.walk("w", expected[cut])]
        assert walked == expected[cut + 1 :], cut
    assert [info.path async for info in backend.walk("w/3")] == [k for k in expected if k.startswith("w/3/")]
    await backend.aclose()


async def test_directories_removed_during_a_walk_are_skipped(tmp_path: Path) -> None:
    backend = FilesystemBackend(tmp_path / "storage")
    keys = [f"w/a/{i:05d}" for i in range(WALK_BATCH + 10)] + [f"w/b/{i}" for i in range(10)] + ["w/c/last"]
    make_files(tmp_path / "storage", keys)
    walked = []
    async for info in backend.walk("w"):
        walked.append(info.path)
        if len(walked) == 1:
            shutil.rmtree(tmp_path / "storage" / "w" / "b")  # while the walk's first batch is being consumed
    assert walked[-1] == "w/c/last" and not any(path.startswith("w/b/") for path in walked)
    await backend.aclose()
