"""Retention rules and immutable tags, checked against hand-computed expectations on both backends."""

from __future__ import annotations

from typing import Any

import httpx

from registry.gc.collector import GcReport
from registry.gc.settings import ImmutableTagRule, RetentionRule
from tests.api.conftest import ClientFactory
from tests.api.gc_helpers import EventRecorder, collect, pull_completely, push_index
from tests.api.helpers import OCI_MANIFEST, error_code, push_image

IMMUTABLE = {"immutable_tags": [{"repository": "team/*", "tags": ["v*"]}]}


async def tags_of(client: httpx.AsyncClient, name: str) -> list[str]:
    response = await client.get(f"/v2/{name}/tags/list")
    assert response.status_code == 200, response.text
    return sorted(response.json()["tags"] or [])


async def test_retention_keeps_what_the_rules_say(client: httpx.AsyncClient, storage_config: dict[str, Any]) -> None:
    # Pushed in this order; among tags pushed within one clock tick the name decides, so the names follow it too.
    release, _ = await push_image(client, "team/app", "release-1", seed="release")
    immutable, _ = await push_image(client, "team/app", "v1", seed="v1")
    old, _ = await push_image(client, "team/app", "a-old", seed="a")
    mid, _ = await push_image(client, "team/app", "b-mid", seed="b")
    index, children = await push_index(client, "team/app", "multi", ["amd64", "arm64"])
    new, _ = await push_image(client, "team/app", "c-new", seed="c")
    scratch, _ = await push_image(client, "team/app", "scratch", seed="scratch")
    assert (await client.delete("/v2/team/app/manifests/scratch")).status_code == 202
    other, _ = await push_image(client, "other/app", "a-old", seed="other")
    other_scratch, _ = await push_image(client, "other/app", "scratch", seed="other-scratch")
    assert (await client.delete("/v2/other/app/manifests/scratch")).status_code == 202

    rules = (
        RetentionRule(repository="team/*", keep_last=2, keep_tags="^release-", untagged_older_than=0.0),
        RetentionRule(repository="**", keep_last=0),  # first match wins: never applies to team/app
    )
    immutable_rules = (ImmutableTagRule(repository="team/*", tags=["v*"]),)
    options: dict[str, Any] = {"retention": rules[:1], "immutable_tags": immutable_rules, "grace": 3600.0}

    dry = await collect(storage_config, dry_run=True, **options)
    expected_tags = {("team/app", "a-old"), ("team/app", "b-mid")}
    expected_manifests = {("team/app", old), ("team/app", mid), ("team/app", scratch)}
    assert {(r.repository, r.target) for r in dry.removals if r.kind == "tag"} == expected_tags
    assert {(r.repository, r.target) for r in dry.manifests_removed} == expected_manifests
    assert all("keep_last=2" in r.reason for r in dry.removals)
    assert await tags_of(client, "team/app") == ["a-old", "b-mid", "c-new", "multi", "release-1", "v1"]

    recorder = EventRecorder()
    report: GcReport = await collect(storage_config, recorder, **options)
    assert {(r.repository, r.target) for r in report.removals if r.kind == "tag"} == expected_tags
    assert {(r.repository, r.target) for r in report.manifests_removed} == expected_manifests
    assert recorder.changed == ["team/app"]
    assert await tags_of(client, "team/app") == ["c-new", "multi", "release-1", "v1"]
    for digest in (release, immutable, index, *children, new):
        await pull_completely(client, "team/app", digest)
    for digest in (old, mid, scratch):
        gone = await client.get(f"/v2/team/app/manifests/{digest}", headers={"Accept": OCI_MANIFEST})
        assert gone.status_code == 404 and error_code(gone) == "MANIFEST_UNKNOWN"
    # other/app matches no team/* rule: untouched, its untagged manifest included.
    assert await tags_of(client, "other/app") == ["a-old"]
    await pull_completely(client, "other/app", other_scratch)

    # The catch-all rule prunes every tag but an immutable one and, without untagged_older_than, no manifest.
    catch_all = await collect(storage_config, retention=rules[1:], immutable_tags=immutable_rules, grace=3600.0)
    assert {(r.repository, r.target) for r in catch_all.removals} == {
        ("team/app", "c-new"),
        ("team/app", "multi"),
        ("team/app", "release-1"),
        ("other/app", "a-old"),
    }
    assert await tags_of(client, "team/app") == ["v1"]
    await pull_completely(client, "other/app", other)


async def test_immutable_tags_cannot_move_or_go(client_factory: ClientFactory) -> None:
    client = await client_factory(sections=IMMUTABLE)
    digest, body = await push_image(client, "team/app", "v1.0", seed="one")
    again = await client.put("/v2/team/app/manifests/v1.0", content=body, headers={"Content-Type": OCI_MANIFEST})
    assert again.status_code == 201, "re-pushing the same digest is fine"

    other, other_body = await push_image(client, "team/app", "latest", seed="two")
    moved = await client.put("/v2/team/app/manifests/v1.0", content=other_body, headers={"Content-Type": OCI_MANIFEST})
    assert moved.status_code == 403 and error_code(moved) == "DENIED"
    error = moved.json()["errors"][0]
    assert "immutable" in error["message"] and "v*" in error["message"]
    assert error["detail"]["tag"] == "v1.0" and "team/*" in error["detail"]["rule"]
    extra_tag = await client.put(
        f"/v2/team/app/manifests/{other}",
        params={"tag": "v1.0"},
        content=other_body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert extra_tag.status_code == 403 and error_code(extra_tag) == "DENIED"

    by_tag = await client.delete("/v2/team/app/manifests/v1.0")
    assert by_tag.status_code == 403 and error_code(by_tag) == "DENIED"
    by_digest = await client.delete(f"/v2/team/app/manifests/{digest}")
    assert by_digest.status_code == 403 and error_code(by_digest) == "DENIED"
    current = await client.get("/v2/team/app/manifests/v1.0", headers={"Accept": OCI_MANIFEST})
    assert current.headers["docker-content-digest"] == digest

    # A new protected tag can be created; unprotected tags and other repositories move freely.
    assert (await push_image(client, "team/app", "v2.0", seed="two"))[0] == other
    await push_image(client, "team/app", "latest", seed="three")
    await push_image(client, "elsewhere/app", "v1.0", seed="one")
    await push_image(client, "elsewhere/app", "v1.0", seed="two")
    assert (await client.delete("/v2/elsewhere/app/manifests/v1.0")).status_code == 202
    deleted = await client.delete("/api/v1/repositories/team/app")
    assert deleted.status_code == 403 and error_code(deleted) == "DENIED"
