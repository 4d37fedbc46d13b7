"""The filesystem backend's listings while entries vanish under them (a tag deleted while GC or the tags list reads
the directory): the entries that remain are all listed, none fails the listing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storage_backends.filesystem import FilesystemBackend


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
