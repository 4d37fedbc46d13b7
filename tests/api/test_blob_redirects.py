"""Blob GETs redirected to the store (S3 presigned URLs) name only data that is in place: a blob GC set aside
since the registry last saw it is restored before the redirect, never handed out as a URL that answers 404."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from registry import paths
from registry.digests import Digest
from registry.store.registry import Registry
from tests.api.conftest import ClientFactory, make_settings
from tests.api.helpers import push_blob
from tests.s3_server import MotoServer

LAYER = b"a layer fetched straight from the bucket" * 100


@pytest.fixture
def storage_config(s3_server: MotoServer) -> Iterator[dict[str, Any]]:
    bucket = s3_server.new_bucket()
    yield s3_server.storage_settings(bucket)  # redirects on: the store's default
    s3_server.drop_bucket(bucket)


async def test_a_redirect_never_names_a_blob_gc_set_aside(
    client_factory: ClientFactory, storage_config: dict[str, Any]
) -> None:
    client = await client_factory()
    digest = await push_blob(client, "team/app", LAYER)
    first = await client.get(f"/v2/team/app/blobs/{digest}")
    assert first.status_code == 307
    async with httpx.AsyncClient() as bucket:
        assert (await bucket.get(first.headers["Location"])).content == LAYER
        # Another replica's GC sets the blob aside: this process's 1 s memory still says it is there.
        raw = Registry.from_settings(make_settings(storage_config)).backend
        await raw.start()
        parsed = Digest.parse(digest)
        assert await raw.move(paths.blob_data(parsed), paths.quarantined_blob(parsed), exclusive=True)
        again = await client.get(f"/v2/team/app/blobs/{digest}")
        assert again.status_code == 307
        assert (await bucket.get(again.headers["Location"])).content == LAYER
        # Gone for good (deleted, not set aside): 404 from the registry, not a redirect to nothing.
        await raw.delete(paths.blob_data(parsed))
        gone = await client.get(f"/v2/team/app/blobs/{digest}")
        assert gone.status_code == 404
        await raw.aclose()
