"""Linking and moving on the filesystem while the source's directory is deleted: a completion links a session's chunk
while a concurrent completion of the same session deletes the session. `makedirs` then fails with FileExistsError
(its mkdir saw the directory, its check found it gone) or the link with FileNotFoundError; either way the answer is
"no such source" (PathNotFound), never a raw OSError that a handler would turn into a 500."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from storage_backends.base import PathNotFound
from storage_backends.filesystem import FilesystemBackend


async def test_a_link_whose_source_and_target_directory_vanish_says_the_source_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = FilesystemBackend(tmp_path / "storage", fsync=False)
    await backend.put_content("_uploads/u1/chunks/0", b"chunk")
    real_makedirs = os.makedirs

    def makedirs_racing_a_delete(name: str, mode: int = 0o777, exist_ok: bool = False) -> None:
        # What the race does to makedirs: mkdir finds the session directory, which a delete then renames away
        # before makedirs checks that it is a directory.
        shutil.rmtree(tmp_path / "storage" / "_uploads" / "u1", ignore_errors=True)
        raise FileExistsError(17, "File exists", name)

    monkeypatch.setattr(os, "makedirs", makedirs_racing_a_delete)
    with pytest.raises(PathNotFound):
        await backend.link("_uploads/u1/chunks/0", "_uploads/u1/publishing/p1")
    monkeypatch.setattr(os, "makedirs", real_makedirs)
    await backend.aclose()


async def test_a_link_or_move_from_a_missing_source_into_a_blocked_directory_is_path_not_found(tmp_path: Path) -> None:
    backend = FilesystemBackend(tmp_path / "storage", fsync=False)
    await backend.put_content("a/b", b"a file where a directory would go")
    with pytest.raises(PathNotFound):
        await backend.link("gone", "a/b/c")
    with pytest.raises(PathNotFound):
        await backend.move("gone", "a/b/c", exclusive=True)
    await backend.aclose()


async def test_a_link_to_a_blocked_directory_from_a_present_source_is_not_path_not_found(tmp_path: Path) -> None:
    """With the source there, a blocked target directory is a storage fault, not a missing source."""
    backend = FilesystemBackend(tmp_path / "storage", fsync=False)
    await backend.put_content("a/b", b"a file where a directory would go")
    await backend.put_content("src", b"x")
    with pytest.raises(OSError) as caught:
        await backend.link("src", "a/b/c")
    assert not isinstance(caught.value, PathNotFound)
    assert await backend.get_content("src") == b"x"
    await backend.aclose()
