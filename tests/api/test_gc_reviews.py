"""GC driven by the metadata database (registry/gc/reviews.py), on SQLite and on PostgreSQL: it removes what the
mark over storage removes when the change went through the registry, keeps what a racing push needs, costs no
storage reads on an unchanged registry, and refuses to act on a database that is behind storage."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from registry import paths
from registry.digests import Digest
from registry.gc import eviction, reviews
from registry.gc.collector import GcOptions, GcReport
from registry.gc.modes import collector
from registry.gc.reviews import GcBusy, ReviewCollector
from registry.gc.settings import ImmutableTagRule, RetentionRule
from registry.index.base import IndexUnavailable
from registry.index.database import FULL_GC_NEEDED
from registry.index.local import LocalIndex
from registry.store.registry import Registry
from storage_backends import PathNotFound
from tests.api.conftest import IndexLocation
from tests.api.gc_helpers import pull_completely, push_index
from tests.api.helpers import (
    OCI_INDEX,
    OCI_MANIFEST,
    descriptor,
    digest_of,
    encode,
    image_manifest,
    push_blob,
    push_image,
)
from tests.api.test_retention import tags_of
from tests.api.test_search_index import INDEXES, serving

FILESYSTEM = pytest.mark.parametrize("storage_config", ["filesystem"], indirect=True)


@contextlib.asynccontextmanager
async def registry_with_index(
    storage_config: dict[str, Any], index_location: IndexLocation
) -> AsyncIterator[tuple[httpx.AsyncClient, Registry, LocalIndex]]:
    async with serving(storage_config, index_location()) as (client, registry):
        index = INDEXES[id(registry)]
        assert await index.wait_ready(10.0)
        yield client, registry, index


async def review(registry: Registry, index: LocalIndex, **options: Any) -> GcReport:
    await index.settled()
    return await ReviewCollector(registry, index, GcOptions(**{"grace": 0.0, "settle": 0.0, **options})).run()


async def stored(registry: Registry, digest: str) -> bool:
    try:
        await registry.backend.stat(paths.blob_data(Digest.parse(digest)))
    except PathNotFound:
        return False
    return True


async def push_layers(client: httpx.AsyncClient, name: str, tag: str, blobs: list[bytes]) -> str:
    config, *layers = blobs
    for blob in blobs:
        await push_blob(client, name, blob)
    body = encode(image_manifest(config, layers))
    response = await client.put(f"/v2/{name}/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST})
    assert response.status_code == 201, response.text
    return digest_of(body)


async def test_a_deleted_image_leaves_its_own_blobs_to_gc_and_keeps_the_shared_ones(
    storage_config: dict[str, Any], index_location: IndexLocation
) -> None:
    shared, only_a, only_b = b"shared" * 500, b"only a" * 300, b"only b" * 200
    config_a, config_b = b'{"a": 1}', b'{"b": 2}'
    async with registry_with_index(storage_config, index_location) as (client, registry, index):
        manifest_a = await push_layers(client, "team/a", "v1", [config_a, shared, only_a])
        await push_layers(client, "team/b", "v1", [config_b, shared, only_b])
        first = await review(registry, index)
        assert first.blobs_removed == {} and first.blobs_in_use == 5  # each blob pushed came up once: all in use

        assert (await client.delete(f"/v2/team/a/manifests/{manifest_a}")).status_code == 202
        report = await review(registry, index)
        gone = {digest_of(config_a), digest_of(only_a), manifest_a}
        assert {str(d) for d in report.blobs_removed} == gone
        assert report.bytes_reclaimed == len(config_a) + len(only_a) + report.blobs_removed[Digest.parse(manifest_a)]
        assert {(n, str(d)) for n, d in report.links_removed} == {
            ("team/a", digest_of(config_a)),
            ("team/a", digest_of(only_a)),
        }
        for digest in gone:
            assert not await stored(registry, digest)
        assert await stored(registry, digest_of(shared))
        await pull_completely(client, "team/b", "v1")
        assert (await client.head(f"/v2/team/a/blobs/{digest_of(only_a)}")).status_code == 404
        again = await review(registry, index)
        assert again.blobs_removed == {} and again.removals == []


@FILESYSTEM
async def test_a_blob_pushed_and_never_referenced_goes_after_the_grace_period(
    storage_config: dict[str, Any], index_location: IndexLocation
) -> None:
    async with registry_with_index(storage_config, index_location) as (client, registry, index):
        lonely = await push_blob(client, "team/x", b"never referenced" * 100)
        kept = await review(registry, index, grace=3600.0)
        assert kept.blobs_removed == {} and await stored(registry, lonely)
        report = await review(registry, index)
        assert [str(d) for d in report.blobs_removed] == [lonely]
        assert [(n, str(d)) for n, d in report.links_removed] == [("team/x", lonely)]
        assert (await client.head(f"/v2/team/x/blobs/{lonely}")).status_code == 404


@FILESYSTEM
async def test_a_blob_referenced_before_its_review_stays(
    storage_config: dict[str, Any], index_location: IndexLocation
) -> None:
    async with registry_with_index(storage_config, index_location) as (client, registry, index):
        old = await push_layers(client, "team/x", "v1", [b'{"c": 1}', b"layer" * 100])
        assert (await client.delete(f"/v2/team/x/manifests/{old}")).status_code == 202
        await push_layers(client, "team/y", "v1", [b'{"c": 1}', b"layer" * 100])  # the same blobs, elsewhere
        report = await review(registry, index)
        assert report.blobs_removed == {}  # the same manifest, config and layer: team/y references all three
        assert report.blobs_in_use == 3
        await pull_completely(client, "team/y", "v1")


@FILESYSTEM
async def test_an_untagged_index_goes_with_its_children_in_one_run(
    storage_config: dict[str, Any], index_location: IndexLocation
) -> None:
    async with registry_with_index(storage_config, index_location) as (client, registry, index):
        old_index, old_children = await push_index(client, "team/m", "v1", ["amd64", "arm64"])
        new_index, new_children = await push_index(client, "team/m", "v1", ["amd64-2", "arm64-2"])  # moves v1
        kept_without_rule = await review(registry, index)
        assert kept_without_rule.removals == []  # delete_untagged is off: untagged manifests stay

        report = await review(registry, index, delete_untagged=True)
        removed = {r.target for r in report.manifests_removed}
        assert removed == {old_index, *old_children}, report.removals
        assert all(r.reason == "untagged (gc.delete_untagged)" for r in report.manifests_removed)
        for child in old_children:
            assert (await client.head(f"/v2/team/m/manifests/{child}")).status_code == 404
        await pull_completely(client, "team/m", "v1")
        for digest in (new_index, *new_children):
            assert (await client.head(f"/v2/team/m/manifests/{digest}")).status_code == 200


async def push_signature(client: httpx.AsyncClient, name: str, subject_body: bytes, seed: str) -> str:
    await push_blob(client, name, b"{}")
    await push_blob(client, name, seed.encode())
    signature = encode(
        image_manifest(b"{}", [seed.encode()], subject=descriptor(OCI_MANIFEST, subject_body), artifactType="a/b")
    )
    digest = digest_of(signature)
    response = await client.put(
        f"/v2/{name}/manifests/{digest}", content=signature, headers={"Content-Type": OCI_MANIFEST}
    )
    assert response.status_code == 201, response.text
    return digest


@FILESYSTEM
async def test_referrers_stay_with_their_subject_unless_told_otherwise(
    storage_config: dict[str, Any], index_location: IndexLocation
) -> None:
    async with registry_with_index(storage_config, index_location) as (client, registry, index):
        subject, subject_body = await push_image(client, "team/s", "v1", seed="subject")
        signature = await push_signature(client, "team/s", subject_body, "signature")
        kept = await review(registry, index, delete_untagged=True)
        assert kept.removals == []

        # The subject's removal queues its referrers again: then they go.
        assert (await client.delete(f"/v2/team/s/manifests/{subject}")).status_code == 202
        cascade = await review(registry, index, delete_untagged=True)
        assert [r.target for r in cascade.manifests_removed] == [signature]
        assert Digest.parse(digest_of(b"signature")) in cascade.blobs_removed

        # Without keep_referrers (a change of rules: every untagged manifest is reviewed again), they go at once.
        other, other_body = await push_image(client, "team/s", "v2", seed="other")
        unsigned = await push_signature(client, "team/s", other_body, "second signature")
        assert (await review(registry, index, delete_untagged=True)).removals == []
        report = await review(registry, index, delete_untagged=True, keep_referrers=False)
        assert [r.target for r in report.manifests_removed] == [unsigned]
        assert (await client.head(f"/v2/team/s/manifests/{other}")).status_code == 200


@FILESYSTEM
async def test_retention_rules_remove_what_the_mark_over_storage_removes(
    storage_config: dict[str, Any], index_location: IndexLocation
) -> None:
    # The scenario of test_retention.py's first test, collected from the database instead.
    async with registry_with_index(storage_config, index_location) as (client, registry, index):
        await push_image(client, "team/app", "release-1", seed="release")
        await push_image(client, "team/app", "v1", seed="v1")
        old, _ = await push_image(client, "team/app", "a-old", seed="a")
        mid, _ = await push_image(client, "team/app", "b-mid", seed="b")
        index_digest, children = await push_index(client, "team/app", "multi", ["amd64", "arm64"])
        await push_image(client, "team/app", "c-new", seed="c")
        scratch, _ = await push_image(client, "team/app", "scratch", seed="scratch")
        assert (await client.delete("/v2/team/app/manifests/scratch")).status_code == 202
        await push_image(client, "other/app", "a-old", seed="other")
        rules = (RetentionRule(repository="team/*", keep_last=2, keep_tags="^release-", untagged_older_than=0.0),)
        options: dict[str, Any] = {
            "retention": rules,
            "immutable_tags": (ImmutableTagRule(repository="team/*", tags=["v*"]),),
            "grace": 3600.0,
        }
        dry = await review(registry, index, dry_run=True, **options)
        assert {(r.repository, r.target) for r in dry.removals if r.kind == "tag"} == {
            ("team/app", "a-old"),
            ("team/app", "b-mid"),
        }
        assert await tags_of(client, "team/app") == ["a-old", "b-mid", "c-new", "multi", "release-1", "v1"]

        report = await review(registry, index, **options)
        assert {(r.repository, r.target) for r in report.removals if r.kind == "tag"} == {
            ("team/app", "a-old"),
            ("team/app", "b-mid"),
        }
        assert {r.target for r in report.manifests_removed} == {old, mid, scratch}
        assert await tags_of(client, "team/app") == ["c-new", "multi", "release-1", "v1"]
        assert await tags_of(client, "other/app") == ["a-old"]
        for digest in (index_digest, *children):
            await pull_completely(client, "team/app", digest)
        # Nothing pushed since: the next run prunes nothing and reads no tags.
        assert (await review(registry, index, **options)).removals == []


class CountingCalls:
    """Counts the storage calls a run makes (reads, listings, writes), by name."""

    NAMES = ("stat", "exists", "get_content", "put_content", "walk", "list", "delete", "move", "touch")

    def __init__(self, registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        backend = registry.backend
        for name in self.NAMES:
            original = getattr(backend, name)
            monkeypatch.setattr(backend, name, self._counting(name, original))

    def _counting(self, name: str, original: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(f"{name} {args[0] if args else ''}")
            return original(*args, **kwargs)

        return counted


@FILESYSTEM
async def test_a_run_on_an_unchanged_registry_reads_nothing_from_storage(
    storage_config: dict[str, Any], index_location: IndexLocation, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with registry_with_index(storage_config, index_location) as (client, registry, index):
        for n in range(5):
            await push_image(client, f"team/app{n}", "v1", seed=str(n))
        gone, _ = await push_image(client, "team/app0", "old", seed="old")
        assert (await client.delete(f"/v2/team/app0/manifests/{gone}")).status_code == 202
        first = await review(registry, index)
        assert Digest.parse(gone) in first.blobs_removed
        await index.settled()  # the records of what the first run removed are written (the index's own trace)
        counting = CountingCalls(registry, monkeypatch)
        second = await review(registry, index)
        assert second.blobs_removed == {} and second.blobs_in_use == 0
        # The summary for the UI is written; nothing is read, listed or moved. (The index's own poll of the change
        # records, every second in the background, may fall within the run: it is not GC's.)
        calls = [call for call in counting.calls if call != f"walk {paths.INDEX_CHANGES}"]
        assert calls == [f"put_content {paths.GC_LAST_REPORT}"], counting.calls


@FILESYSTEM
async def test_a_push_during_the_settle_period_gets_its_blob_back(
    storage_config: dict[str, Any], index_location: IndexLocation
) -> None:
    layer = b"needed again" * 100
    async with registry_with_index(storage_config, index_location) as (client, registry, index):
        first = await push_layers(client, "team/r", "v1", [b'{"r": 1}', layer])
        assert (await client.delete(f"/v2/team/r/manifests/{first}")).status_code == 202
        await index.settled()
        run = asyncio.create_task(ReviewCollector(registry, index, GcOptions(grace=0.0, settle=1.0)).run())
        quarantined = paths.quarantined_blob(Digest.parse(digest_of(layer)))
        for _ in range(200):
            if await registry.backend.exists(quarantined):
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the layer was never set aside")
        # A client that pushed this layer long ago pushes a manifest using it again: the store restores it.
        body = encode(image_manifest(b'{"r": 2}', [layer]))
        await push_blob(client, "team/r", b'{"r": 2}')
        response = await client.put("/v2/team/r/manifests/v2", content=body, headers={"Content-Type": OCI_MANIFEST})
        assert response.status_code == 201, response.text
        report = await run
        assert Digest.parse(digest_of(layer)) not in report.blobs_removed
        await pull_completely(client, "team/r", "v2")


@FILESYSTEM
async def test_a_database_behind_storage_is_not_trusted(
    storage_config: dict[str, Any], index_location: IndexLocation
) -> None:
    async with registry_with_index(storage_config, index_location) as (client, registry, index):
        lonely = await push_blob(client, "team/x", b"lonely" * 100)
        await index.settled()
        index._failed.add("team/other")  # a refresh that failed: the poll loop retries it
        with pytest.raises(IndexUnavailable, match="behind on 1 repositories"):
            await review(registry, index)
        index._failed.clear()
        database = index.gc_database()
        database.set_meta({"import_through": "team/m"})
        with pytest.raises(IndexUnavailable, match="import"):
            await review(registry, index)
        database.set_meta({"import_through": ""})
        assert database.claim("gc-review", "another process", 60.0)
        with pytest.raises(GcBusy):
            await review(registry, index)
        database.release("gc-review", "another process")
        assert [str(d) for d in (await review(registry, index)).blobs_removed] == [lonely]


@FILESYSTEM
async def test_one_run_goes_through_every_page_of_the_queues(
    storage_config: dict[str, Any], index_location: IndexLocation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reviews, "REVIEW_BATCH", 2)
    async with registry_with_index(storage_config, index_location) as (client, registry, index):
        images = [await push_image(client, "team/p", f"v{n}", seed=f"page {n}") for n in range(4)]
        for n in range(4):
            assert (await client.delete(f"/v2/team/p/manifests/v{n}")).status_code == 202  # untagged: 4 to review
        report = await review(registry, index, delete_untagged=True)
        assert {r.target for r in report.manifests_removed} == {digest for digest, _ in images}
        # Each image: its manifest, config and layer, set aside page by page and all decided after one settle.
        assert len(report.blobs_removed) == 12, report.blobs_removed
        assert (await review(registry, index, delete_untagged=True)).blobs_removed == {}


# Regressions found by review: each interleaving below lost a blob or a review before it was fixed.


@FILESYSTEM
async def test_a_push_between_the_age_test_and_the_move_keeps_its_blob(
    storage_config: dict[str, Any], index_location: IndexLocation, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two replicas on one storage and database: GC runs on the first; a client pushes through the second, whose
    # index update lags, and the first follows the change records late (within what GC tolerates).
    layer = b"needed again" * 100
    root = storage_config["filesystem"]["root"]
    where = index_location()
    async with serving(storage_config, where) as (client, registry), serving(storage_config, where) as (other, two):
        index, index2 = INDEXES[id(registry)], INDEXES[id(two)]
        assert await index.wait_ready(10.0) and await index2.wait_ready(10.0)
        first = await push_layers(client, "team/r", "v1", [b'{"r": 1}', layer])
        assert (await client.delete(f"/v2/team/r/manifests/{first}")).status_code == 202
        await index.settled()
        target = Digest.parse(digest_of(layer))
        old = time.time() - 3600  # released and untouched for an hour: GC may take it out (grace 10 min)
        os.utime(os.path.join(root, paths.blob_data(target)), (old, old))
        with index.gc_database()._transaction() as sql:
            sql.execute("UPDATE gc_blob_review SET since = since - 3600")
        await push_blob(other, "team/r", b'{"r": 2}')
        await index2.settled()
        body = encode(image_manifest(b'{"r": 2}', [layer]))
        original_apply = index2._apply

        async def slow_apply(change: Any) -> bool:  # the second replica's index update lags
            await asyncio.sleep(3.0)
            return await original_apply(change)

        monkeypatch.setattr(index2, "_apply", slow_apply)

        async def no_poll() -> None:
            return None

        monkeypatch.setattr(index, "poll", no_poll)
        original_move = registry.backend.move
        pushed: dict[str, int] = {}

        async def move(source: str, destination: str, **options: Any) -> bool:
            if source == paths.blob_data(target) and not pushed:
                # The PUT lands between set_aside's age test and its move (on S3 a move is a copy then a delete:
                # a whole PUT fits in the copy of a large layer).
                response = await other.put(
                    "/v2/team/r/manifests/v2", content=body, headers={"Content-Type": OCI_MANIFEST}
                )
                pushed["status"] = response.status_code
            return await original_move(source, destination, **options)

        monkeypatch.setattr(registry.backend, "move", move)
        report = await ReviewCollector(registry, index, GcOptions(grace=600.0, settle=0.5)).run()
        assert pushed["status"] == 201
        assert target not in report.blobs_removed and target in report.blobs_restored
        await pull_completely(client, "team/r", "v2")


@FILESYSTEM
async def test_an_index_untagged_during_a_run_is_not_kept_on_a_stale_verdict(
    storage_config: dict[str, Any], index_location: IndexLocation, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with registry_with_index(storage_config, index_location) as (client, registry, index):
        digest, children = await push_index(client, "team/m", "v1", ["amd64", "arm64"])
        await asyncio.sleep(1.2)
        await index.settled()
        original_settled = index.settled
        untagged: list[int] = []

        async def settled() -> None:
            await original_settled()
            if not untagged:  # after the first pass found the children kept by the tagged index
                untagged.append((await client.delete("/v2/team/m/manifests/v1")).status_code)
                await original_settled()

        monkeypatch.setattr(index, "settled", settled)
        report = await review(registry, index, grace=1.0, delete_untagged=True)
        assert untagged == [202]
        assert {r.target for r in report.manifests_removed} == {digest, *children}


@FILESYSTEM
async def test_children_of_an_index_tagged_during_a_run_stay(
    storage_config: dict[str, Any], index_location: IndexLocation, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with registry_with_index(storage_config, index_location) as (client, registry, index):
        digest, children = await push_index(client, "team/m", "v1", ["amd64", "arm64"])
        body = (await client.get(f"/v2/team/m/manifests/{digest}", headers={"Accept": OCI_INDEX})).content
        assert (await client.delete("/v2/team/m/manifests/v1")).status_code == 202
        await push_blob(client, "team/m", b"{}")
        await push_blob(client, "team/m", b"sig")
        signature = encode(image_manifest(b"{}", [b"sig"], subject=descriptor(OCI_INDEX, body), artifactType="a/b"))
        referrer = digest_of(signature)
        put = await client.put(
            f"/v2/team/m/manifests/{referrer}", content=signature, headers={"Content-Type": OCI_MANIFEST}
        )
        assert put.status_code == 201
        assert (await review(registry, index, grace=1.0, delete_untagged=True)).removals == []  # all young yet
        await asyncio.sleep(1.2)
        await index.settled()
        with index.gc_database()._transaction() as sql:  # reviewed in this order: the referrer, the index, children
            sql.execute("UPDATE gc_manifest_review SET due = 1 WHERE digest = ?", (referrer,))
            sql.execute("UPDATE gc_manifest_review SET due = 2 WHERE digest = ?", (digest,))
            for child in children:
                sql.execute("UPDATE gc_manifest_review SET due = 3 WHERE digest = ?", (child,))
        original = registry.manifests.delete_if_untagged
        tagged: list[int] = []

        async def delete_if_untagged(name: str, target: Digest, subject: Digest | None) -> bool:
            deleted = await original(name, target, subject)
            if str(target) == referrer and not tagged:  # the index is tagged again (a release promoted) meanwhile
                again = await client.put("/v2/team/m/manifests/v2", content=body, headers={"Content-Type": OCI_INDEX})
                tagged.append(again.status_code)
                await index.settled()
            return deleted

        monkeypatch.setattr(registry.manifests, "delete_if_untagged", delete_if_untagged)
        report = await review(registry, index, grace=1.0, delete_untagged=True)
        assert tagged == [201]
        assert [r.target for r in report.manifests_removed] == [referrer]
        await pull_completely(client, "team/m", "v2")


@FILESYSTEM
async def test_a_manifest_pushed_again_right_after_gc_deleted_it_is_reviewed_again(
    storage_config: dict[str, Any], index_location: IndexLocation, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with registry_with_index(storage_config, index_location) as (client, registry, index):
        await push_image(client, "team/x", "v1", seed="keep")
        await push_blob(client, "team/x", b'{"s": "m"}')
        await push_blob(client, "team/x", b"layer m" * 50)
        body = encode(image_manifest(b'{"s": "m"}', [b"layer m" * 50]))
        m = digest_of(body)
        put = await client.put(f"/v2/team/x/manifests/{m}", content=body, headers={"Content-Type": OCI_MANIFEST})
        assert put.status_code == 201
        await asyncio.sleep(1.2)
        original = registry.manifests.delete_if_untagged
        pushed: dict[str, int] = {}

        async def delete_if_untagged(name: str, digest: Digest, subject: Digest | None) -> bool:
            deleted = await original(name, digest, subject)
            if deleted and not pushed:  # pushed again, and in the index, before GC forgets its review
                again = await client.put(
                    f"/v2/team/x/manifests/{m}", content=body, headers={"Content-Type": OCI_MANIFEST}
                )
                pushed["status"] = again.status_code
                await index.settled()
            return deleted

        monkeypatch.setattr(registry.manifests, "delete_if_untagged", delete_if_untagged)
        first = await review(registry, index, delete_untagged=True, grace=1.0)
        assert pushed["status"] == 201 and [r.target for r in first.manifests_removed] == [m]
        monkeypatch.setattr(registry.manifests, "delete_if_untagged", original)
        assert (await client.head(f"/v2/team/x/manifests/{m}")).status_code == 200
        assert (await review(registry, index, delete_untagged=True, grace=1.0)).manifests_removed == []  # young
        await asyncio.sleep(1.5)
        later = await review(registry, index, delete_untagged=True, grace=1.0)
        assert [r.target for r in later.manifests_removed] == [m]  # what the mark over storage removes too


@FILESYSTEM
async def test_the_links_of_every_repository_go_with_the_blob(
    storage_config: dict[str, Any], index_location: IndexLocation
) -> None:
    shared = b"shared layer" * 300
    async with registry_with_index(storage_config, index_location) as (client, registry, index):
        a = await push_layers(client, "team/a", "v1", [b'{"a": 1}', shared])
        b = await push_layers(client, "team/b", "v1", [b'{"b": 1}', shared])
        assert (await review(registry, index)).blobs_removed == {}  # every pushed blob in use: reviewed, kept
        assert (await client.delete(f"/v2/team/a/manifests/{a}")).status_code == 202
        assert (await review(registry, index)).blobs_removed.keys() == {
            Digest.parse(a),
            Digest.parse(digest_of(b'{"a": 1}')),
        }
        assert (await client.delete(f"/v2/team/b/manifests/{b}")).status_code == 202
        report = await review(registry, index)
        target = Digest.parse(digest_of(shared))
        assert target in report.blobs_removed
        assert sorted(n for n, d in report.links_removed if d == target) == ["team/a", "team/b"]
        assert not await registry.backend.exists(paths.layer_link("team/a", target))


@FILESYSTEM
async def test_the_first_collection_of_a_new_database_marks_over_storage(
    storage_config: dict[str, Any], index_location: IndexLocation
) -> None:
    async with registry_with_index(storage_config, index_location) as (client, registry, index):
        await push_image(client, "team/app", "v1")
        # Stored behind the registry's back (before the database existed, say): no queue ever heard of it.
        before = digest_of(b"an orphan from before")
        await registry.blobs.put_small(Digest.parse(before), b"an orphan from before")
        options = GcOptions(grace=0.0, settle=0.0)
        first = await collector(registry, index, options, database=True)()
        assert [str(d) for d in first.blobs_removed] == [before]  # the mark over storage, once
        assert index.gc_database().get_meta(FULL_GC_NEEDED) == ""
        assert index.gc_database().get_meta(reviews.UPLOADS_SWEPT)  # the mark purged upload sessions as well
        after = digest_of(b"an orphan from after")
        await registry.blobs.put_small(Digest.parse(after), b"an orphan from after")
        second = await collector(registry, index, options, database=True)()
        assert second.blobs_removed == {}  # from the queues now: they never heard of it either
        assert [str(d) for d in (await collector(registry, index, options, database=False)()).blobs_removed] == [
            after
        ]  # what `moorage gc --full` is for
        await pull_completely(client, "team/app", "v1")


@FILESYSTEM
async def test_cached_repositories_unused_for_evict_after_go_with_their_blobs(
    storage_config: dict[str, Any], index_location: IndexLocation
) -> None:
    async with registry_with_index(storage_config, index_location) as (client, registry, index):
        for name in ("up/team/old", "up/team/fresh", "team/own"):
            await push_image(client, name, "v1", seed=name)
        for name in ("up/team/old", "up/team/fresh"):  # what the pull-through cache records of its repositories
            await registry.backend.put_content(paths.proxy_cached(name), b"up\n")
        await asyncio.sleep(0.6)
        await registry.backend.put_content(paths.proxy_used("up/team/fresh"), b"")  # pulled since
        report = await review(registry, index, evictions=(("up", 0.5),))
        assert report.evicted == ["up/team/old"]
        assert not await registry.repositories.exists("up/team/old")
        assert await registry.repositories.exists("up/team/fresh") and await registry.repositories.exists("team/own")
        assert not await registry.backend.exists(paths.proxy_cached("up/team/old"))
        await index.settled()
        assert "up/team/old" not in await index.catalog(None, None, None)
        later = await review(registry, index, evictions=(("up", 0.5),))
        assert report.blobs_removed or later.blobs_removed  # its blobs, reviewed once unreferenced


@FILESYSTEM
async def test_an_upstream_over_its_size_budget_loses_its_least_recently_used_repositories(
    storage_config: dict[str, Any], index_location: IndexLocation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(eviction, "BUDGET_SPARES_SECONDS", 0.0)
    names = ("up/team/a", "up/team/b", "up/team/c")
    async with registry_with_index(storage_config, index_location) as (client, registry, index):
        for name in names:
            await push_image(client, name, "v1", seed=name)
        for name in names:  # recorded in this order: "a" is the least recently used
            await registry.backend.put_content(paths.proxy_cached(name), b"up\n")
            await asyncio.sleep(0.05)
        sizes = {name: await eviction.repository_bytes(registry, name) for name in names}
        assert all(sizes.values())
        budget = sizes["up/team/b"] + sizes["up/team/c"]  # "a" has to go, and only "a"
        report = await review(registry, index, budgets=(("up", budget),), dry_run=True)
        assert report.evicted == ["up/team/a"] and await registry.repositories.exists("up/team/a")
        report = await review(registry, index, budgets=(("up", budget),))
        assert report.evicted == ["up/team/a"]
        assert [await registry.repositories.exists(name) for name in names] == [False, True, True]
        again = await review(registry, index, budgets=(("up", budget),))  # within the budget now
        assert again.evicted == []
