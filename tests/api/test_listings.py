from __future__ import annotations

import httpx
import pytest

from tests.api.helpers import OCI_MANIFEST, error_code, push_image

TAGS = ["1.0", "1.1", "2.0", "latest", "A", "b_2"]


async def push_tags(client: httpx.AsyncClient, name: str, tags: list[str]) -> None:
    _, body = await push_image(client, name, tags[0])
    for tag in tags[1:]:
        response = await client.put(f"/v2/{name}/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST})
        assert response.status_code == 201


async def test_tags_in_lexical_order(client: httpx.AsyncClient) -> None:
    await push_tags(client, "team/app", TAGS)
    response = await client.get("/v2/team/app/tags/list")
    assert response.status_code == 200
    assert response.json() == {"name": "team/app", "tags": sorted(TAGS)}
    assert "Link" not in response.headers


async def test_tags_pagination(client: httpx.AsyncClient) -> None:
    await push_tags(client, "team/app", TAGS)
    expected = sorted(TAGS)
    seen: list[str] = []
    url: str | None = "/v2/team/app/tags/list?n=4"
    pages = 0
    while url:
        response = await client.get(url)
        page = response.json()["tags"]
        assert len(page) == 4 or "Link" not in response.headers
        seen += page
        pages += 1
        link = response.headers.get("Link")
        url = link.split(";")[0].strip("<>") if link else None
        if link:
            assert link.endswith('rel="next"')
    assert seen == expected
    assert pages == 2


async def test_tags_last_is_exclusive(client: httpx.AsyncClient) -> None:
    await push_tags(client, "team/app", TAGS)
    response = await client.get("/v2/team/app/tags/list", params={"last": "1.1"})
    assert response.json()["tags"] == [t for t in sorted(TAGS) if t > "1.1"]
    response = await client.get("/v2/team/app/tags/list", params={"n": 2, "last": "1.0"})
    assert response.json()["tags"] == ["1.1", "2.0"]


async def test_n_zero_and_n_beyond(client: httpx.AsyncClient) -> None:
    await push_tags(client, "team/app", TAGS)
    zero = await client.get("/v2/team/app/tags/list", params={"n": 0})
    assert zero.json()["tags"] == []
    assert "Link" not in zero.headers
    many = await client.get("/v2/team/app/tags/list", params={"n": 100})
    assert many.json()["tags"] == sorted(TAGS)
    assert "Link" not in many.headers


@pytest.mark.parametrize("n", ["-1", "ten"])
async def test_invalid_n(client: httpx.AsyncClient, n: str) -> None:
    await push_tags(client, "team/app", TAGS)
    response = await client.get("/v2/team/app/tags/list", params={"n": n})
    assert response.status_code == 400
    assert error_code(response) == "PAGINATION_NUMBER_INVALID"


async def test_tags_of_unknown_repository(client: httpx.AsyncClient) -> None:
    response = await client.get("/v2/nobody/here/tags/list")
    assert response.status_code == 404
    assert error_code(response) == "NAME_UNKNOWN"


async def test_tags_of_repository_with_no_tags_left(client: httpx.AsyncClient) -> None:
    await push_tags(client, "team/app", ["only"])
    await client.delete("/v2/team/app/manifests/only")
    response = await client.get("/v2/team/app/tags/list")
    assert response.status_code == 200
    assert response.json()["tags"] == []


async def test_catalog(client: httpx.AsyncClient) -> None:
    names = ["zeta", "team/app", "team/app/sub", "team-b/app", "alpha", "a.b/c_d"]
    for name in names:
        await push_image(client, name, "1")
    response = await client.get("/v2/_catalog")
    assert response.status_code == 200
    assert response.json() == {"repositories": sorted(names)}
    first = await client.get("/v2/_catalog", params={"n": 2})
    assert first.json()["repositories"] == sorted(names)[:2]
    link = first.headers["Link"]
    assert link.startswith("</v2/_catalog?") and link.endswith('rel="next"')
    second = await client.get(link.split(";")[0].strip("<>"))
    assert second.json()["repositories"] == sorted(names)[2:4]


async def test_catalog_empty(client: httpx.AsyncClient) -> None:
    response = await client.get("/v2/_catalog")
    assert response.json() == {"repositories": []}
