"""Storage backends: one implementation per module, chosen by name."""

from __future__ import annotations

from typing import Any

from storage_backends.base import (
    FileInfo,
    InvalidPath,
    PathNotFound,
    StorageBackend,
    StorageError,
    StorageFull,
    StorageUnavailable,
    Writer,
)

__all__ = [
    "FileInfo",
    "InvalidPath",
    "PathNotFound",
    "StorageBackend",
    "StorageError",
    "StorageFull",
    "StorageUnavailable",
    "Writer",
    "create_backend",
]


def create_backend(kind: str, options: dict[str, Any]) -> StorageBackend:
    if kind == "filesystem":
        from storage_backends.filesystem import FilesystemBackend

        return FilesystemBackend(**options)
    if kind == "s3":
        from storage_backends.s3 import S3Backend, S3Options

        return S3Backend(S3Options(**options))
    if kind == "memory":
        from storage_backends.memory import MemoryBackend

        return MemoryBackend(**options)
    raise ValueError(f"unknown storage backend: {kind!r}")
