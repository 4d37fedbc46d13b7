"""The index updates only the rows a write names (registry/index/changes.py), and ends up holding exactly what a
fresh rebuild from storage holds, whatever sequence of pushes, retags and deletes led there (filesystem and S3)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry.gc.collector import GarbageCollector, GcOptions
from registry.gc.settings import RetentionRule
from registry.index.database import Database
from registry.index.local import LocalIndex
from registry.settings import Settings
from registry.store.registry import Registry
from registry.store.usage import measure
from tests.api.conftest import IndexLocation, make_settings
from tests.api.helpers import OCI_INDEX, OCI_MANIFEST, descriptor, encode, push_image
from tests.api.test_search_index import INDEXES, serving

# Random writes per sequence; fewer on S3, where moto makes each one slow (the thresholds below still hold).
OPERATIONS = {"filesystem": 60, "s3": 45}
# The index's engine and the storage meet only through the store's events: both engines on the filesystem, S3 with
# PostgreSQL (the replicas' setup). S3 with SQLite, the default there, repeated S3 with PostgreSQL at ~40 s a run.
STORAGE_AND_INDEX = pytest.mark.parametrize(
    ("storage_config", "index_location"),
    [("filesystem", "sqlite"), ("filesystem", "postgresql"), ("s3", "postgresql")],
    indirect=True,
)
TABLES = {
    "repositories": "name, description, pushed_at, tag_count, size, logical",
    "tags": "repository, tag, digest, pushed_at",
    "manifests": "repository, digest, media_type, artifact_type, size, platforms, created, labels, pushed_at, blobs, "
    "manifest_bytes",
    "labels": "repository, digest, key, value",
    "platforms": "repository, digest, platform",
    "blobs": "repository, digest, blob, size",
    "repository_blobs": "repository, blob, size, refs",
    "blob_refs": "blob, size, repositories",
}


def rows(target: Path | str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the index but pull counts (the one thing storage does not hold)."""
    db = Database.open(target) if isinstance(target, Path) else Database.connect(target)
    try:
        return {
            table: sorted(tuple(row) for row in db.engine.read(f"SELECT {columns} FROM {table}"))
            for table, columns in TABLES.items()
        }
    finally:
        db.close()


async def rebuilt(storage_config: dict[str, Any], target: Path | str) -> dict[str, list[tuple[Any, ...]]]:
    settings: Settings = make_settings(storage_config)
    registry = Registry.from_settings(settings)
    await registry.start()
    index = LocalIndex(registry, settings.index, target)
    await index.open()
    try:
        await index.rebuild()
    finally:
        await index.aclose()
        await registry.aclose()
    return rows(target)


async def random_writes(
    client: httpx.AsyncClient, registry: Registry, rng: random.Random, operations: int
) -> dict[str, int]:
    done: dict[str, int] = {}
    images: dict[str, list[tuple[str, bytes]]] = {}  # repository -> (digest, body) of images pushed there
    for step in range(operations):
        repository = rng.choice(["team/app", "team/web", "solo"])
        pushed = images.setdefault(repository, [])
        choice = rng.random()
        if not pushed or choice < 0.3:
            labels = {"org.opencontainers.image.description": f"step {step}"} if rng.random() < 0.5 else {}
            digest, body = await push_image(
                client, repository, rng.choice(["latest", f"v{step}", "stable"]), seed=f"{step}", annotations=labels
            )
            pushed.append((digest, body))
            kind = "push"
        elif choice < 0.45:
            digest, body = rng.choice(pushed)
            tags = [f"re{step}", "latest"] if rng.random() < 0.5 else [f"re{step}"]
            query = "&".join(f"tag={t}" for t in tags[1:])
            response = await client.put(
                f"/v2/{repository}/manifests/{tags[0]}" + (f"?{query}" if query else ""),
                content=body,
                headers={"Content-Type": OCI_MANIFEST},
            )
            assert response.status_code == 201, response.text
            kind = "retag"
        elif choice < 0.55 and len(pushed) >= 2:
            children = [(OCI_MANIFEST, child) for _, child in rng.sample(pushed, 2)]
            body = index_of(children)
            response = await client.put(
                f"/v2/{repository}/manifests/multi{step}", content=body, headers={"Content-Type": OCI_INDEX}
            )
            assert response.status_code in (201, 400), response.text  # 400: a child was deleted meanwhile
            kind = "index"
        elif choice < 0.75:
            tags = (await client.get(f"/v2/{repository}/tags/list")).json().get("tags") or []
            if not tags:
                continue
            response = await client.delete(f"/v2/{repository}/manifests/{rng.choice(tags)}")
            assert response.status_code == 202, response.text
            kind = "untag"
        elif choice < 0.9:
            digest, _ = pushed.pop(rng.randrange(len(pushed)))
            response = await client.delete(f"/v2/{repository}/manifests/{digest}")
            assert response.status_code in (202, 404), response.text
            kind = "delete"
        elif choice < 0.95:
            response = await client.delete(f"/api/v1/repositories/{repository}")
            assert response.status_code in (202, 404), response.text
            images.pop(repository, None)
            kind = "repository delete"
        else:
            # GC in this process (as its schedule runs it): retention untags, untagged manifests go, their blobs
            # are swept; what was pushed before may be gone, so later steps push afresh.
            rule = RetentionRule(repository="team/*", keep_last=2)
            options = GcOptions(grace=0.0, settle=0.0, delete_untagged=True, retention=[rule])
            await GarbageCollector(registry, options).run()
            images.clear()
            kind = "gc"
        done[kind] = done.get(kind, 0) + 1
    return done


@STORAGE_AND_INDEX
async def test_the_index_equals_a_rebuild_after_random_writes(
    storage_config: dict[str, Any], index_location: IndexLocation
) -> None:
    path = index_location()
    async with serving(storage_config, path) as (client, registry):
        operations = OPERATIONS["filesystem" if "filesystem" in storage_config else "s3"]
        done = await random_writes(client, registry, random.Random(7), operations)
    assert done.get("push", 0) > 5 and done.get("retag", 0) > 3 and done.get("delete", 0) > 3, done
    assert done.get("gc", 0) >= 1 and done.get("repository delete", 0) >= 1, done
    incremental = rows(path)
    fresh = await rebuilt(storage_config, index_location())
    assert incremental == fresh
    assert incremental["tags"], "the sequence must leave something to compare"
    # The reference counts give what `moorage du` measures by reading every manifest in storage.
    db = Database.open(path) if isinstance(path, Path) else Database.connect(path)
    try:
        logical, physical = dict(db.logical_sizes()), db.physical_size()
    finally:
        db.close()
    registry = Registry.from_settings(make_settings(storage_config))
    try:
        usage = await measure(registry)
    finally:
        await registry.aclose()
    assert {name: size for name, size in logical.items() if size} == {
        r.name: r.logical_bytes for r in usage.repositories if r.logical_bytes
    }
    assert physical == usage.physical_bytes > 0


def index_of(children: list[tuple[str, bytes]]) -> bytes:
    """An OCI index of these (media type, manifest) children, for amd64, arm64 and s390x in that order."""
    platforms = [{"os": "linux", "architecture": a} for a in ("amd64", "arm64", "s390x")]
    return encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                descriptor(media_type, child, platform=platform)
                for (media_type, child), platform in zip(children, platforms, strict=False)
            ],
        }
    )


async def put_index(client: httpx.AsyncClient, repository: str, tag: str, children: list[tuple[str, bytes]]) -> str:
    body = index_of(children)
    response = await client.put(f"/v2/{repository}/manifests/{tag}", content=body, headers={"Content-Type": OCI_INDEX})
    assert response.status_code == 201, response.text
    return str(response.headers["Docker-Content-Digest"])


async def test_an_index_follows_its_children_going_and_coming_back(
    storage_config: dict[str, Any], index_location: IndexLocation
) -> None:
    """An index's size, platforms and labels are made of its children's records: deleting a child (or pushing it
    again) changes the rows of the indexes above it, nested ones included, as a rebuild would have them. Each write
    is applied on its own, so that none rides along with the write that made the index."""
    path = index_location()
    name = "team/multi"
    async with serving(storage_config, path) as (client, registry):
        index = INDEXES[id(registry)]
        amd64 = await push_image(client, name, "amd64", seed="amd64", annotations={"team": "a"})
        arm64 = await push_image(client, name, "arm64", seed="arm64")
        inner = await put_index(client, name, "inner", [(OCI_MANIFEST, amd64[1]), (OCI_MANIFEST, arm64[1])])
        inner_body = (await client.get(f"/v2/{name}/manifests/{inner}", headers={"Accept": OCI_INDEX})).content
        await put_index(client, name, "outer", [(OCI_INDEX, inner_body)])
        await index.settled()
        before = rows(path)
        sizes = {row[1]: row[4] for row in before["manifests"]}
        assert sizes[inner] == len(inner_body) + sizes[amd64[0]] + sizes[arm64[0]]

        response = await client.delete(f"/v2/{name}/manifests/{amd64[0]}")
        assert response.status_code == 202, response.text
        await index.settled()
        gone = rows(path)
        assert gone == await rebuilt(storage_config, index_location())
        sizes = {row[1]: row[4] for row in gone["manifests"]}
        assert sizes[inner] < len(inner_body) + sizes[arm64[0]] + 1000  # the deleted child counts its manifest only
        assert (name, inner, "team", "a") not in gone["labels"]

        again = await client.put(
            f"/v2/{name}/manifests/{amd64[0]}", content=amd64[1], headers={"Content-Type": OCI_MANIFEST}
        )
        assert again.status_code == 201, again.text
        await index.settled()
        back = rows(path)
        assert back == await rebuilt(storage_config, index_location())
        # As before the delete, but for the push time of the child pushed again.
        without_times = [row[:8] + row[9:] for row in back["manifests"]]
        assert without_times == [row[:8] + row[9:] for row in before["manifests"]]
        assert (back["labels"], back["platforms"]) == (before["labels"], before["platforms"])
