"""A small tmpfs for full-disk tests: a real filesystem that runs out of space (ENOSPC), mounted for one test.

Mounting needs root (CI runs the tests as root). Where it cannot be mounted the test fails, saying why: a full-disk
test that quietly did not run would prove nothing.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

MiB = 1024 * 1024


@contextlib.contextmanager
def small_tmpfs(path: Path, size: int) -> Iterator[Path]:
    """Mount a tmpfs of `size` bytes at `path` (created if need be); unmount it (lazily, if busy) on exit."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.fail("the full-disk tests mount a small tmpfs and need root: run them as root (CI does)", pytrace=False)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs at {path}: {mounted.stderr.strip()}", pytrace=False)
    try:
        yield path
    finally:
        # -l: a server that has not quite exited must not leave the mount behind.
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def free_bytes(path: Path) -> int:
    usage = os.statvfs(path)
    return usage.f_bavail * usage.f_frsize


def fill(path: Path, leave: int = 0) -> Path:
    """A file at `path` that takes all the free space of its filesystem but `leave` bytes; delete it to free it."""
    target = max(free_bytes(path.parent) - leave, 0)
    block = b"\0" * MiB
    with path.open("wb", buffering=0) as f:
        written = 0
        while written < target:
            try:
                written += f.write(block[: min(len(block), target - written)]) or 0
            except OSError:  # ENOSPC: full already
                break
    return path


def files_under(root: Path) -> list[str]:
    """Every regular file below `root`, relative to it, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
