"""`docker search` (`/v1/_ping`, `/v1/search`), `/api/v1/search` and `/api/v1/repositories/<name>`."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.types import Receive, Scope, Send

from registry.app import create_app
from registry.routing import LISTING_SCOPE_KEY
from tests.api.conftest import ClientFactory, make_settings
from tests.api.helpers import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    descriptor,
    digest_of,
    encode,
    error_code,
    push_blob,
)

# Nothing here depends on the storage backend: the filesystem only (test_blobs, test_uploads, ... cover S3).
pytestmark = pytest.mark.parametrize("storage_config", ["filesystem"], indirect=True)

DESCRIPTION = "org.opencontainers.image.description"


async def push(
    client: httpx.AsyncClient,
    name: str,
    *tags: str,
    architecture: str = "amd64",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    artifact_type: str | None = None,
    seed: str = "",
) -> dict[str, Any]:
    """An image for one platform under `tags`; returns its descriptor (with `platform`) for an index."""
    config = json.dumps(
        {
            "architecture": architecture,
            "os": "linux",
            "created": "2024-05-01T10:00:00Z",
            "config": {"Labels": labels or {}},
            "seed": f"{name}-{architecture}-{seed}",
        }
    ).encode()
    layer = f"{name}-{architecture}-{seed}".encode() * 50
    await push_blob(client, name, config)
    await push_blob(client, name, layer)
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, layer)],
    }
    if annotations:
        manifest["annotations"] = annotations
    if artifact_type:
        manifest["artifactType"] = artifact_type
    body = encode(manifest)
    reference = tags[0] if tags else digest_of(body)
    query = [("tag", tag) for tag in tags[1:]]
    response = await client.put(
        f"/v2/{name}/manifests/{reference}", content=body, params=query, headers={"Content-Type": OCI_MANIFEST}
    )
    assert response.status_code == 201, response.text
    size = len(body) + len(config) + len(layer)
    return {**descriptor(OCI_MANIFEST, body), "platform": {"os": "linux", "architecture": architecture}, "total": size}


async def push_index(client: httpx.AsyncClient, name: str, tag: str, annotations: dict[str, str]) -> dict[str, Any]:
    children = [await push(client, name, architecture=arch, labels={"team": "core"}) for arch in ("amd64", "arm64")]
    body = encode(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{k: v for k, v in child.items() if k != "total"} for child in children],
            "annotations": annotations,
        }
    )
    response = await client.put(f"/v2/{name}/manifests/{tag}", content=body, headers={"Content-Type": OCI_INDEX})
    assert response.status_code == 201, response.text
    return {"digest": digest_of(body), "size": len(body) + sum(child["total"] for child in children)}


async def names(client: httpx.AsyncClient, q: str, **params: Any) -> list[str]:
    response = await client.get("/api/v1/search", params={"q": q, **params})
    assert response.status_code == 200, response.text
    return [hit["name"] for hit in response.json()["results"]]


async def test_ping_answers_what_the_docker_cli_reads(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/_ping")
    assert response.status_code == 200
    assert response.headers["X-Docker-Registry-Version"] == "0.6.0"
    assert response.headers["X-Docker-Registry-Standalone"] == "true"
    assert response.json() == {"version": "0.6.0", "standalone": True}


async def test_docker_search_contract(client: httpx.AsyncClient) -> None:
    await push(client, "team/web", "1", annotations={DESCRIPTION: "the web front"})
    await push(client, "team/webhooks", "1", labels={DESCRIPTION: "from a label"})
    await push(client, "other/db", "1")
    # Exactly what the docker CLI sends (moby registry/search_session.go).
    headers = {"X-Docker-Token": "true", "User-Agent": "docker/27.5.1 go/go1.22.10"}
    response = await client.get("/v1/search?q=web&n=25", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {
        "query": "web",
        "num_results": 2,
        "results": [
            {
                "name": "team/web",
                "description": "the web front",
                "star_count": 0,
                "is_official": False,
                "is_automated": False,
            },
            {
                "name": "team/webhooks",
                "description": "from a label",
                "star_count": 0,
                "is_official": False,
                "is_automated": False,
            },
        ],
    }
    limited = await client.get("/v1/search", params={"q": "", "n": "2"}, headers=headers)
    assert [r["name"] for r in limited.json()["results"]] == ["other/db", "team/web"]
    assert limited.json()["num_results"] == 2
    assert (await client.get("/v1/search", params={"q": "nothing"})).json() == {
        "query": "nothing",
        "num_results": 0,
        "results": [],
    }


@pytest.mark.parametrize("n", ["0", "101", "-1", "ten", "2.5"])
async def test_search_refuses_a_bad_n(client: httpx.AsyncClient, n: str) -> None:
    for path in ("/v1/search", "/api/v1/search"):
        response = await client.get(path, params={"q": "x", "n": n})
        assert response.status_code == 400
        assert error_code(response) == "PAGINATION_NUMBER_INVALID"


async def test_default_page_is_25(client: httpx.AsyncClient) -> None:
    for i in range(26):
        response = await client.put(
            f"/v2/many/r{i:02d}/manifests/1",
            content=encode({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}),
            headers={"Content-Type": OCI_INDEX},
        )
        assert response.status_code == 201
    assert len((await client.get("/v1/search", params={"q": "many"})).json()["results"]) == 25
    response = await client.get("/api/v1/search", params={"q": "many"})
    assert len(response.json()["results"]) == 25
    assert "Link" in response.headers


async def test_search_api_filters_ranks_and_pages(client: httpx.AsyncClient) -> None:
    multi = await push_index(client, "team/app", "1.0", {DESCRIPTION: "multi-arch app"})
    await push(client, "team/app", "old", seed="old")
    await push(client, "app", "latest")
    await push(client, "team/webapp", "v1", architecture="arm64", labels={"tier": "front"})
    await push(client, "team/apple-pie", "v1")
    await push(client, "team/signed", "v1")
    await push(client, "team/signed", artifact_type="application/vnd.example.sbom")
    await push(client, "team/db", "v1", annotations={DESCRIPTION: "keeps the app's data"})

    assert await names(client, "app") == ["app", "team/app", "team/apple-pie", "team/webapp", "team/db"]
    response = await client.get("/api/v1/search", params={"q": "team/app"})
    hit = response.json()["results"][0]
    assert hit["name"] == "team/app"
    assert hit["tags"] == ["1.0"] or hit["tags"] == ["old"]
    assert await names(client, "platform:linux/arm64") == ["team/app", "team/webapp"]
    arm = (await client.get("/api/v1/search", params={"q": "platform:linux/arm64 app"})).json()["results"]
    assert arm[0] == {
        "name": "team/app",
        "repository": "team/app",
        "description": "multi-arch app",
        "tags": ["1.0"],
        "digest": multi["digest"],
        "mediaType": OCI_INDEX,
        "artifactType": None,
        "size": multi["size"],
        "platforms": ["linux/amd64", "linux/arm64"],
        "created": "2024-05-01T10:00:00Z",
        "pushedAt": arm[0]["pushedAt"],
        "pulls": 0,
        "cachedFrom": None,
    }
    assert arm[0]["pushedAt"].endswith("Z")
    assert await names(client, "label:tier=front") == ["team/webapp"]
    assert await names(client, "label:team=core") == ["team/app"]  # an index carries its children's labels
    assert await names(client, "label:tier=back") == []
    assert await names(client, "type:application/vnd.example.sbom") == ["team/signed"]
    assert await names(client, "tag:o*") == ["team/app"]
    tagged = (await client.get("/api/v1/search", params={"q": "tag:o*"})).json()["results"][0]
    assert tagged["tags"] == ["old"]

    # Pages of two, following Link to the end.
    seen: list[str] = []
    url: str | None = "/api/v1/search?q=app&n=2"
    while url:
        response = await client.get(url)
        seen += [hit["name"] for hit in response.json()["results"]]
        link = response.headers.get("Link")
        url = link.split(";")[0].strip("<>") if link else None
        assert link is None or link.endswith('rel="next"')
    assert seen == ["app", "team/app", "team/apple-pie", "team/webapp", "team/db"]

    response = await client.get("/api/v1/search", params={"q": "label:"})
    assert response.status_code == 400 and error_code(response) == "UNSUPPORTED"


async def test_repository_summary(client: httpx.AsyncClient) -> None:
    image = await push(client, "team/tool", "v1", "latest", labels={DESCRIPTION: "a tool"})
    response = await client.get("/api/v1/repositories/team/tool")
    assert response.status_code == 200
    body = response.json()
    assert (body["name"], body["description"], body["manifests"], body["pulls"]) == ("team/tool", "a tool", 1, 0)
    assert [(t["tag"], t["digest"], t["size"], t["platforms"]) for t in body["tags"]] == [
        ("latest", image["digest"], image["total"], ["linux/amd64"]),
        ("v1", image["digest"], image["total"], ["linux/amd64"]),
    ]
    missing = await client.get("/api/v1/repositories/team/none")
    assert missing.status_code == 404 and error_code(missing) == "NAME_UNKNOWN"
    invalid = await client.get("/api/v1/repositories/Team/BAD")
    assert invalid.status_code == 400 and error_code(invalid) == "NAME_INVALID"


async def test_pulls_are_counted(client_factory: ClientFactory) -> None:
    client = await client_factory(sections={"index": {"poll_interval": 0.05}})
    await push(client, "team/pulled", "v1")
    for _ in range(3):
        assert (await client.get("/v2/team/pulled/manifests/v1", headers={"Accept": OCI_MANIFEST})).status_code == 200
    assert (await client.head("/v2/team/pulled/manifests/v1", headers={"Accept": OCI_MANIFEST})).status_code == 200
    pulls = 0
    for _ in range(200):  # written in batches by the poll loop
        pulls = (await client.get("/api/v1/repositories/team/pulled")).json()["pulls"]
        if pulls >= 3:
            break
        await _pause()
    assert pulls == 3


async def _pause() -> None:
    import asyncio

    await asyncio.sleep(0.02)


async def test_search_is_off_with_the_index(client_factory: ClientFactory) -> None:
    client = await client_factory(sections={"index": {"enabled": False}})
    await push(client, "team/web", "1")
    assert (await client.get("/v2/_catalog")).json() == {"repositories": ["team/web"]}
    for path in ("/v1/search", "/api/v1/search", "/api/v1/repositories/team/web"):
        response = await client.get(path, params={"q": "web"})
        assert response.status_code == 404 and error_code(response) == "NOT_FOUND"


class OnlyTeam:
    """An access view (what the auth middleware puts in the scope) letting the caller pull `team/...` only."""

    def allows(self, repository: str, action: str) -> bool:
        return action == "pull" and repository.startswith("team/")


async def test_callers_find_only_what_they_may_pull(storage_config: dict[str, Any]) -> None:
    app = create_app(make_settings(storage_config))

    async def restricted(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":  # pushes go through unrestricted
            scope = {**scope, LISTING_SCOPE_KEY: OnlyTeam()}
        await app(scope, receive, send)

    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=restricted)
        async with httpx.AsyncClient(transport=transport, base_url="http://registry.test") as client:
            await push(client, "team/app", "1")
            await push(client, "other/app", "1")
            assert (await client.get("/v2/_catalog")).json() == {"repositories": ["team/app"]}
            assert await names(client, "app") == ["team/app"]
            docker = (await client.get("/v1/search", params={"q": "app"})).json()
            assert [r["name"] for r in docker["results"]] == ["team/app"]
            hidden = await client.get("/api/v1/repositories/other/app")
            assert hidden.status_code == 404 and error_code(hidden) == "NAME_UNKNOWN"
