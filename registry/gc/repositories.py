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
    # Tags first, then revisions and links (the reverse of a push), then upload sessions.
    await registry.backend.delete(paths.tags_dir(name))
    for area in paths.repository_areas(name):
        await registry.backend.delete(area)
    registry.blobs.forget_repository(name)
    if registry.index is not None:
        await registry.index.repository_changed(name)
    return DeletedRepository(name, len(tags), revisions)
