"""GC's eviction of pull-through cache repositories (registry/proxy): those no client pulled for their upstream's
`evict_after`, and the least recently pulled ones of an upstream over its `max_bytes`.

The cache records each cached repository (`paths.proxy_cached`, naming its upstream) and rewrites a second record
while the repository is pulled (`paths.proxy_used`, at most every so often): the later of the two times says when it
was last used. An evicted repository is deleted through the store (its events reach the index, webhooks and metrics;
a pull racing the deletion either fails or refetches), and its records go with it. Its blobs are then unreferenced,
and GC collects them like any other: in the same run for the mark over storage, after the grace period for GC
driven by the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from registry import paths
from registry.digests import Digest
from registry.errors import RegistryError
from registry.store.inventory import Inventory, read_repositories
from registry.store.registry import Registry
from storage_backends import PathNotFound

logger = logging.getLogger("moorage.gc")


@dataclass(slots=True)
class _Cached:
    upstream: str = ""
    used: float = 0.0


async def cached_repositories(registry: Registry) -> dict[str, _Cached]:
    """Every cached repository with its upstream and when it was last used (one listing of the records)."""
    found: dict[str, _Cached] = {}
    try:
        async for info in registry.backend.walk(paths.PROXY_CACHED):
            parsed = paths.parse_proxy_record(info.path)
            if parsed is None:
                continue
            name, kind = parsed
            entry = found.setdefault(name, _Cached())
            entry.used = max(entry.used, info.modified.timestamp())
            if kind == "_upstream":
                with contextlib.suppress(PathNotFound):
                    entry.upstream = (await registry.backend.get_content(info.path)).decode("utf-8", "replace")
                    entry.upstream = entry.upstream.partition("\n")[0].strip()
    except PathNotFound:
        return {}
    return {name: entry for name, entry in found.items() if entry.upstream}


BUDGET_SPARES_SECONDS = 600.0
"""A repository pulled this recently is never evicted for a size budget (it is likely being pulled or filled)."""


async def evict_unused(
    registry: Registry,
    evictions: Mapping[str, float],
    now: float,
    dry_run: bool,
    budgets: Mapping[str, int] | None = None,
) -> list[str]:
    """Delete (unless `dry_run`) the cached repositories unused for their upstream's time, then, for an upstream
    over its size budget, its least recently used ones until it is within it; their names."""
    budgets = budgets or {}
    if not evictions and not budgets:
        return []
    cached = await cached_repositories(registry)
    evicted: list[str] = []
    for name, entry in sorted(cached.items()):
        after = evictions.get(entry.upstream)
        if after is not None and now - entry.used >= after:
            evicted.append(name)
            await _evict(registry, name, f"unused for {now - entry.used:.0f}s", dry_run)
    for upstream, budget in sorted(budgets.items()):
        kept = sorted(
            ((entry.used, name) for name, entry in cached.items() if entry.upstream == upstream and name not in evicted)
        )
        sizes = {name: await repository_bytes(registry, name) for _, name in kept}
        total = sum(sizes.values())
        for used, name in kept:  # least recently used first
            if total <= budget:
                break
            if now - used < BUDGET_SPARES_SECONDS:
                continue
            evicted.append(name)
            total -= sizes[name]
            await _evict(registry, name, f"{upstream} over its {budget} bytes", dry_run)
    return evicted


async def repository_bytes(registry: Registry, name: str) -> int:
    """The bytes of the blobs and manifests `name` links (one listing of its areas, a stat per blob)."""
    inventory = Inventory()
    await read_repositories(registry, inventory, only=name)
    contents = inventory.repositories.get(name)
    if contents is None:
        return 0

    async def size(digest: Digest) -> int:
        try:
            return (await registry.backend.stat(paths.blob_data(digest))).size
        except PathNotFound:
            return 0

    return sum(await asyncio.gather(*(size(d) for d in {*contents.layer_links, *contents.revisions})))


async def _evict(registry: Registry, name: str, why: str, dry_run: bool) -> None:
    if dry_run:
        return
    with contextlib.suppress(RegistryError):  # gone already (`moorage repo rm`): its records go all the same
        await registry.repositories.delete(name, force=True)
    for record in (paths.proxy_cached(name), paths.proxy_used(name)):  # not the records of names under it
        with contextlib.suppress(PathNotFound):
            await registry.backend.delete(record)
    logger.info("gc: evicted the cached repository %s (%s)", name, why)
