"""Whether the index takes a repository for a pull-through cache (registry/index/scan.py): a cached manifest's
config is read only when the repository holds it, so the answer must never be a guess."""

from __future__ import annotations

import pytest

from registry import paths
from registry.index.scan import _is_cached
from registry.proxy.cache import ProxyCache
from registry.proxy.settings import ProxySettings, UpstreamSettings
from registry.store.registry import Registry
from storage_backends import StorageUnavailable
from storage_backends.memory import MemoryBackend


async def test_the_index_never_takes_a_name_for_local_when_storage_cannot_say() -> None:
    """In mirror mode whether a name is a cache is a record in storage. A listing takes what storage could say (a
    failure: not marked cached); the index, which reads a cache's configs only when linked, must not: it fails
    (and retries) instead of reading a config unchecked."""

    class Failing(MemoryBackend):
        async def exists(self, path: str) -> bool:
            if path == paths.proxy_cached("library/alpine"):
                raise StorageUnavailable("the store does not answer")
            return await super().exists(path)

    settings = ProxySettings(upstreams=[UpstreamSettings(name="hub", url="https://93.184.216.34", prefix="")])
    cache = ProxyCache(settings)
    registry = Registry(Failing(), read_through=cache)
    try:
        assert await cache.origins(["library/alpine"]) == {}
        with pytest.raises(StorageUnavailable):
            await _is_cached(registry, "library/alpine")
    finally:
        await cache.aclose()
