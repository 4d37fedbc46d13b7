"""Repository deletion: the repository's manifests, tags, links and uploads go now; its unique blobs at the next GC."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from registry import paths
from registry.errors import ErrorCode, RegistryError
from registry.gc.inventory import Inventory, read_repositories
from registry.gc.settings import ImmutableTagRule, rule_protecting
from registry.names import validate_name
from registry.store.registry import Registry
from registry.store.tags import tag_immutable


@dataclass(frozen=True, slots=True)
class DeletedRepository:
    name: str
    tags: int
    manifests: int

    def as_dict(self) -> dict[str, str | int]:
        return {"name": self.name, "tags": self.tags, "manifests": self.manifests}


async def _remove(registry: Registry, name: str) -> None:
    """Tags, then blob links, then manifests, then upload sessions; then tags and manifests once more.

    A manifest PUT racing the deletion re-checks its blob links after writing its revision and tags (see
    ManifestStore.put). If that re-check comes after the links went, the PUT fails and takes back what it wrote;
    if it came before, its writes came before the second pass, which removes them. Either way no tag or manifest
    is left whose layers are gone: the push fails, or it happened before the deletion."""
    backend = registry.backend
    await backend.delete(paths.tags_dir(name))
    for area in paths.repository_areas(name):
        await backend.delete(area)
    await backend.delete(paths.tags_dir(name))
    await backend.delete(paths.manifest_revisions_dir(name))


async def delete_repository(
    registry: Registry, name: str, immutable: Sequence[ImmutableTagRule] = (), *, force: bool = False
) -> DeletedRepository:
    """NAME_UNKNOWN when there is no such repository; DENIED when it holds an immutable tag (unless `force`).
    Repositories nested under the name (`name/sub`) are not touched."""
    validate_name(name)
    if not await registry.repositories.exists(name):
        raise RegistryError(ErrorCode.NAME_UNKNOWN, detail={"name": name})
    tags = await registry.tags.all(name)
    if not force:
        for tag in tags:
            rule = rule_protecting(list(immutable), name, tag)
            if rule is not None:
                raise tag_immutable(name, tag, rule.describe(), "deleted (so neither can its repository)")
    inventory = Inventory()
    await read_repositories(registry, inventory, only=name)
    revisions = len(inventory.repository(name).revisions)
    await _remove(registry, name)
    registry.blobs.forget_repository(name)
    if registry.index is not None:
        await registry.index.repository_changed(name)
    return DeletedRepository(name, len(tags), revisions)
