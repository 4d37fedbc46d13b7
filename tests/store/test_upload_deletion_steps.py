"""A deletion (of the upload, or of the repository, on worker two) followed by a straggling PATCH storing `evil`
(as long as `good`, so worker one's stale running hash covers it) at each step of a completion on worker one; a
second completion on worker one starts right after. On a linking store (the filesystem's semantics, modelled in
memory) and on a copying one (S3's) the blob's path holds `good` or nothing, checked after every storage call: not
even for a moment other bytes. (Written by a review of the linking design; copying stores since 2026-12-07.)"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

import pytest

from registry import paths
from registry.digests import Digest
from registry.errors import RegistryError
from registry.store.registry import Registry
from storage_backends import FileInfo
from tests.store.test_upload_races import Hook, HookedBackend, digest_of, one_chunk, waiting_patch

STEPS = ["read-start", "list", "checkpoint", "place", "alive-check", "move", "layer-link", "cancel"]


class Probe(HookedBackend):
    """Calls `hook` once, at the first call of the chosen step, and checks the blob after every call."""

    def __init__(self, links: bool) -> None:
        super().__init__(links=links)
        self.step: str | None = None
        self.hook: Hook | None = None
        self.claimed: Digest | None = None
        self.bad: list[str] = []

    async def _at(self, step: str) -> None:
        if self.step == step and self.hook is not None:
            hook, self.hook = self.hook, None
            await hook()
        self._check()

    def _check(self) -> None:
        if self.claimed is None:
            return
        found = self._objects.get(paths.blob_data(self.claimed))
        if found is not None and hashlib.sha256(found.data).hexdigest() != self.claimed.hex:
            self.bad.append(f"other bytes at the blob (step {self.step})")

    async def get_content(self, path: str) -> bytes:
        if path.endswith("/startedat"):
            await self._at("read-start")
        elif "/digests/" in path:
            await self._at("checkpoint")
        try:
            return await super().get_content(path)
        finally:
            self._check()

    async def list(self, path: str) -> list[FileInfo]:
        if path.endswith("/chunks"):
            await self._at("list")
        return await super().list(path)

    async def link(self, src: str, dst: str) -> bool:
        await self._at("place")
        try:
            return await super().link(src, dst)
        finally:
            self._check()

    async def copy(self, src: str, dst: str, exclusive: bool = False) -> bool:
        if dst.endswith("/data"):  # a copying store publishes by copying the chunk into the blob
            await self._at("move")
        try:
            return await super().copy(src, dst, exclusive)
        finally:
            self._check()

    async def stat(self, path: str) -> FileInfo:
        if path.endswith("/startedat"):
            await self._at("alive-check")
        return await super().stat(path)

    async def move(self, src: str, dst: str, exclusive: bool = False) -> bool:
        await self._at("move")
        try:
            return await super().move(src, dst, exclusive)
        finally:
            self._check()

    async def put_content(self, path: str, data: bytes, exclusive: bool = False, durable: bool = True) -> bool:
        if "/_layers/" in path:
            await self._at("layer-link")
        elif "/publishing/" in path:  # a copying store's marker
            await self._at("place")
        try:
            return await super().put_content(path, data, exclusive, durable)
        finally:
            self._check()

    async def delete(self, path: str) -> None:
        if path.endswith("/startedat"):
            await self._at("cancel")
        try:
            return await super().delete(path)
        finally:
            self._check()

    async def delete_file(self, path: str) -> None:
        if path.endswith("/startedat"):
            await self._at("cancel")
        try:
            return await super().delete_file(path)
        finally:
            self._check()


@pytest.mark.parametrize("links", [True, False], ids=["linking", "copying"])
@pytest.mark.parametrize("deletion", ["upload", "repository"])
@pytest.mark.parametrize("step", STEPS)
async def test_deletion_then_straggler_at_each_step(step: str, deletion: str, links: bool) -> None:
    backend = Probe(links)
    one, two = Registry(backend), Registry(backend)
    for store in (one, two):
        await store.start()
    try:
        name, good, evil = "team/app", b"G" * 4096, b"E" * 4096
        seed = (await one.uploads.start(name)).upload_id
        await one.uploads.append(name, seed, one_chunk(b"seed"))
        await one.uploads.complete(name, seed, digest_of(b"seed"))
        upload_id = (await one.uploads.start(name)).upload_id
        gate, straggler = await waiting_patch(two, name, upload_id, evil)
        await one.uploads.append(name, upload_id, one_chunk(good))
        claimed = digest_of(good)
        backend.claimed = claimed
        second: list[asyncio.Task[object]] = []

        async def hook() -> None:
            if deletion == "upload":
                with contextlib.suppress(RegistryError):
                    await two.uploads.delete(name, upload_id)
            else:
                await two.repositories.delete(name, force=True)
            gate.set()
            with contextlib.suppress(RegistryError):
                await straggler
            second.append(asyncio.create_task(one.uploads.complete(name, upload_id, claimed)))
            for _ in range(30):
                await asyncio.sleep(0)

        backend.step, backend.hook = step, hook
        completer = two if step == "checkpoint" else one  # worker two has no running hash: reads the checkpoint
        with contextlib.suppress(RegistryError):
            await completer.uploads.complete(name, upload_id, claimed)
        for task in second:
            with contextlib.suppress(RegistryError):
                await task
        assert backend.hook is None, f"step {step} never reached"
        assert not backend.bad, backend.bad
    finally:
        for store in (one, two):
            await store.aclose()
