"""Storage accounting: what each repository would take alone (logical) and what the registry stores (physical).

A repository's logical size counts each blob its manifests reference once (config, layers, child manifests and the
manifests themselves); the registry's logical size adds those up, its physical size counts each blob once however
many repositories share it: the difference is what layer dedup saves.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from registry import paths
from registry.digests import Digest
from registry.errors import ErrorCode, RegistryError
from registry.names import validate_name
from registry.store.inventory import READS_AT_ONCE, Inventory, read_blobs, read_manifests, read_repositories
from registry.store.registry import Registry
from storage_backends import PathNotFound


@dataclass(frozen=True, slots=True)
class RepositoryUsage:
    name: str
    manifests: int
    tags: int
    blobs: int
    logical_bytes: int
    quota_bytes: int | None = None  # the repository's quota, when it has one (registry/policy/quotas.py)
    quota_warning: bool = False  # past `policy.quota_warning` of it

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "manifests": self.manifests,
            "tags": self.tags,
            "blobs": self.blobs,
            "logical_bytes": self.logical_bytes,
        }
        if self.quota_bytes is not None:
            body["quota_bytes"] = self.quota_bytes
            body["quota_warning"] = self.quota_warning
        return body


class QuotaLimits(Protocol):
    def limit_of(self, repository: str) -> int | None:
        """The repository's quota in bytes, or None."""
        ...


def with_quotas(usage: StorageUsage, quota_of: Callable[[str], int | None], warning_at: float) -> StorageUsage:
    """`usage` with each repository's quota (`quota_of`: its limit in bytes, or None)."""
    rows = []
    for row in usage.repositories:
        limit = quota_of(row.name)
        if limit is not None:
            row = dataclasses.replace(row, quota_bytes=limit, quota_warning=row.logical_bytes >= limit * warning_at)
        rows.append(row)
    usage.repositories = rows
    return usage


@dataclass(slots=True)
class StorageUsage:
    repositories: list[RepositoryUsage] = field(default_factory=list)
    physical_bytes: int = 0
    stored_bytes: int | None = None

    @property
    def logical_bytes(self) -> int:
        return sum(r.logical_bytes for r in self.repositories)

    @property
    def saved_bytes(self) -> int:
        return self.logical_bytes - self.physical_bytes

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "repositories": [r.as_dict() for r in self.repositories],
            "logical_bytes": self.logical_bytes,
            "physical_bytes": self.physical_bytes,
            "dedup_saved_bytes": self.saved_bytes,
        }
        if self.stored_bytes is not None:
            body["stored_bytes"] = self.stored_bytes
            body["unreferenced_bytes"] = max(self.stored_bytes - self.physical_bytes, 0)
        return body


async def measure(
    registry: Registry, only: str | None = None, visible: Callable[[str], bool] | None = None
) -> StorageUsage:
    """Usage of every repository `visible` admits (all when None), or of `only`; NAME_UNKNOWN if `only` is not
    a repository. `stored_bytes` (every blob, garbage included) is given only when nothing is left out."""
    if only is not None:
        validate_name(only)
    inventory = Inventory()
    await read_repositories(registry, inventory, only=only)
    names = sorted(n for n, c in inventory.repositories.items() if c.is_repository and (visible is None or visible(n)))
    if only is not None and only not in names:
        raise RegistryError(ErrorCode.NAME_UNKNOWN, detail={"name": only})
    await read_manifests(registry, inventory, [d for n in names for d in inventory.repositories[n].revisions])
    referenced = {n: inventory.referenced_by(n) for n in names}
    everything = set().union(*referenced.values()) if referenced else set()
    usage = StorageUsage()
    if only is None and visible is None:
        await read_blobs(registry, inventory)
        sizes = {d: size for d, (size, _) in inventory.blobs.items()}
        usage.stored_bytes = sum(sizes.values())
    else:
        sizes = await _stat_sizes(registry, everything)
    for name in names:
        present = [d for d in referenced[name] if d in sizes]
        contents = inventory.repositories[name]
        usage.repositories.append(
            RepositoryUsage(
                name=name,
                manifests=len(contents.revisions),
                tags=len(contents.tag_links),
                blobs=len(present),
                logical_bytes=sum(sizes[d] for d in present),
            )
        )
    usage.physical_bytes = sum(sizes[d] for d in everything if d in sizes)
    return usage


async def _stat_sizes(registry: Registry, digests: set[Digest]) -> dict[Digest, int]:
    limit = asyncio.Semaphore(READS_AT_ONCE)
    sizes: dict[Digest, int] = {}

    async def stat(digest: Digest) -> None:
        async with limit:
            with contextlib.suppress(PathNotFound):  # the stored size, as it is: a blob GC set aside stays aside
                sizes[digest] = (await registry.backend.stat(paths.blob_data(digest))).size

    await asyncio.gather(*(stat(d) for d in digests))
    return sizes


def readable_size(count: int) -> str:
    """1536 -> "1.5 KiB"."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
