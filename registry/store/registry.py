"""The registry's semantic layer in one object: what handlers call."""

from __future__ import annotations

import math

from registry.settings import Settings
from registry.store.admission import Admissions
from registry.store.blobs import BlobStore
from registry.store.events import EventBus
from registry.store.manifests import ManifestStore
from registry.store.quarantine import DEFAULT_TOUCH_AFTER
from registry.store.read_through import ReadThrough
from registry.store.referrers import ReferrerStore
from registry.store.repositories import RepositoryStore
from registry.store.tag_policy import TagPolicy
from registry.store.tags import TagStore
from registry.store.uploads import UploadStore
from storage_backends import StorageBackend, create_backend


def backend_from_settings(settings: Settings) -> StorageBackend:
    storage = settings.storage
    if storage.backend == "s3":
        options = storage.s3.model_dump()
        secret = storage.s3.secret_access_key
        options["secret_access_key"] = secret.get_secret_value() if secret else None
        options["redirect"] = not storage.redirect.disable
        options["redirect_expiry_seconds"] = storage.redirect.expiry_seconds
        return create_backend("s3", options)
    return create_backend("filesystem", storage.filesystem.model_dump())


# A client's existence check refreshes a blob older than this fraction of GC's grace period (see registry/gc/).
TOUCH_FRACTION = 0.5


class Registry:
    """Every write goes through here and emits its events on `events` (registry/store/events.py)."""

    def __init__(
        self,
        backend: StorageBackend,
        *,
        delete_enabled: bool = True,
        manifest_max_bytes: int = 4 * 1024 * 1024,
        tag_policy: TagPolicy | None = None,
        touch_after: float = DEFAULT_TOUCH_AFTER,
        read_through: ReadThrough | None = None,
    ) -> None:
        self.backend = backend
        self.delete_enabled = delete_enabled
        self.read_through = read_through
        self.events = EventBus()
        self.admissions = Admissions()  # what may refuse new bytes in a repository (quotas)
        self.blobs = BlobStore(
            backend, self.events, touch_after=touch_after, read_through=read_through, admissions=self.admissions
        )
        self.uploads = UploadStore(backend, self.blobs, self.events, self.admissions)
        self.tags = TagStore(backend, self.events, tag_policy)
        self.referrers = ReferrerStore(backend)
        self.manifests = ManifestStore(
            backend, self.blobs, self.tags, self.referrers, self.events, manifest_max_bytes, read_through
        )
        self.repositories = RepositoryStore(backend, self.tags, self.blobs, self.uploads, self.events)
        if read_through is not None:
            read_through.bind(self)

    @classmethod
    def from_settings(
        cls, settings: Settings, *, backend: StorageBackend | None = None, read_through: ReadThrough | None = None
    ) -> Registry:
        grace = settings.gc.grace
        return cls(
            backend or backend_from_settings(settings),
            delete_enabled=settings.storage.delete,
            manifest_max_bytes=settings.storage.manifest_max_bytes,
            tag_policy=TagPolicy(settings.immutable_tags),
            # With no grace period, ages protect nothing: never pay for a touch.
            touch_after=grace * TOUCH_FRACTION if grace > 0 else math.inf,
            read_through=read_through,
        )

    async def start(self) -> None:
        await self.backend.start()

    async def check_storage(self) -> None:
        """One cheap call that needs the store to answer. Raises StorageError (or OSError) when it cannot."""
        await self.backend.check()

    async def aclose(self) -> None:
        await self.uploads.aclose()
        await self.backend.aclose()
