"""GC's eviction of pull-through cache repositories (registry/proxy) no client pulled for their upstream's
`evict_after`.

The cache records each cached repository (`paths.proxy_cached`, naming its upstream) and rewrites a second record
while the repository is pulled (`paths.proxy_used`, at most every so often): the later of the two times says when it
was last used. An evicted repository is deleted through the store (its events reach the index, webhooks and metrics;
a pull racing the deletion either fails or refetches), and its records go with it. Its blobs are then unreferenced,
and GC collects them like any other: in the same run for the mark over storage, after the grace period for GC
driven by the database.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from registry import paths
from registry.errors import RegistryError
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


async def evict_unused(registry: Registry, evictions: Mapping[str, float], now: float, dry_run: bool) -> list[str]:
    """Delete (unless `dry_run`) the cached repositories unused for their upstream's time; their names."""
    if not evictions:
        return []
    evicted: list[str] = []
    for name, entry in sorted((await cached_repositories(registry)).items()):
        after = evictions.get(entry.upstream)
        if after is None or now - entry.used < after:
            continue
        evicted.append(name)
        if dry_run:
            continue
        with contextlib.suppress(RegistryError):  # gone already (`moorage repo rm`): its records go all the same
            await registry.repositories.delete(name, force=True)
        for record in (paths.proxy_cached(name), paths.proxy_used(name)):  # not the records of names under it
            with contextlib.suppress(PathNotFound):
                await registry.backend.delete(record)
        logger.info("gc: evicted the cached repository %s (from %s, unused for %.0fs)", name, entry.upstream, after)
    return evicted
