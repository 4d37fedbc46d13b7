"""The registry's semantic layer in one object: what handlers call."""

from __future__ import annotations

from registry.index.base import MetadataIndex
from registry.settings import Settings
from registry.store.blobs import BlobStore
from registry.store.manifests import ManifestStore
from registry.store.referrers import ReferrerStore
from registry.store.repositories import RepositoryStore
from registry.store.tags import TagStore
from registry.store.uploads import UploadObserver, UploadStore
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


class Registry:
    def __init__(
        self,
        backend: StorageBackend,
        *,
        delete_enabled: bool = True,
        manifest_max_bytes: int = 4 * 1024 * 1024,
        observer: UploadObserver | None = None,
    ) -> None:
        self.backend = backend
        self.delete_enabled = delete_enabled
        self.blobs = BlobStore(backend)
        self.uploads = UploadStore(backend, self.blobs, observer)
        self.tags = TagStore(backend)
        self.referrers = ReferrerStore(backend)
        self.manifests = ManifestStore(backend, self.blobs, self.tags, self.referrers, manifest_max_bytes)
        self.repositories = RepositoryStore(backend)
        # Set by the app when the metadata index is on; whoever changes a repository behind the API's back
        # (GC, retention, repository deletion) tells it.
        self.index: MetadataIndex | None = None

    @classmethod
    def from_settings(
        cls, settings: Settings, *, backend: StorageBackend | None = None, observer: UploadObserver | None = None
    ) -> Registry:
        return cls(
            backend or backend_from_settings(settings),
            delete_enabled=settings.storage.delete,
            manifest_max_bytes=settings.storage.manifest_max_bytes,
            observer=observer,
        )

    async def start(self) -> None:
        await self.backend.start()

    async def check_storage(self) -> None:
        """One cheap call that needs the store to answer. Raises StorageError (or OSError) when it cannot."""
        await self.backend.check()

    async def aclose(self) -> None:
        await self.backend.aclose()
