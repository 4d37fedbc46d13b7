"""The UI's pages as HTML, without a browser: what each shows, and every error as a page."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

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
from tests.ui.conftest import UiFactory, indexed, post_form, text_of

HISTORY = [
    {"created": "2026-01-01T00:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file:abc in /"},
    {"created": "2026-01-01T00:00:01Z", "created_by": '/bin/sh -c #(nop)  CMD ["sh"]', "empty_layer": True},
    {"created": "2026-01-01T00:00:02Z", "created_by": "RUN apk add curl", "comment": "buildkit.dockerfile.v0"},
]


async def push_rich_image(client: httpx.AsyncClient, name: str, tag: str, **labels: str) -> tuple[str, list[bytes]]:
    """An image with a real-looking config (entrypoint, env, ports, labels, history) and two layers."""
    layers = [b"base layer " * 300, f"curl layer of {name}".encode() * 50]
    config = {
        "architecture": "arm64",
        "os": "linux",
        "created": "2026-01-01T00:00:02Z",
        "config": {
            "Entrypoint": ["/usr/bin/tini", "--"],
            "Cmd": ["serve", "--port", "8080"],
            "Env": ["PATH=/usr/bin", "MODE=prod"],
            "ExposedPorts": {"8080/tcp": {}},
            "Labels": {"org.opencontainers.image.description": f"The {name} service", **labels},
            "WorkingDir": "/srv",
        },
        "history": HISTORY,
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    config_bytes = json.dumps(config).encode()
    for blob in (config_bytes, *layers):
        await push_blob(client, name, blob)
    body = encode(image_manifest(config_bytes, layers))
    response = await client.put(
        f"/v2/{name}/manifests/{tag}",
        content=body,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert response.status_code == 201, response.text
    return digest_of(body), layers


async def test_the_root_redirects_to_the_repositories(ui_factory: UiFactory) -> None:
    ui = await ui_factory()
    response = await ui.get("/")
    assert response.status_code == 307 and response.headers["location"] == "/ui/"


async def test_the_ui_can_be_turned_off(ui_factory: UiFactory) -> None:
    ui = await ui_factory({"ui": {"enabled": False}})
    for path in ("/", "/ui/", "/ui/login", "/ui/static/ui.css"):
        assert (await ui.get(path)).status_code == 404, path


async def test_repositories_list_search_sort_and_pages(ui_factory: UiFactory) -> None:
    ui = await ui_factory({"ui": {"page_size": 5}})
    for i in range(12):
        await push_image(ui, f"team/app{i:02d}", "1.0", seed=f"s{i}")
    await push_image(ui, "team/app07", "2.0", seed="big")
    await push_rich_image(ui, "tools/curl", "1.0", **{"com.example.team": "ops"})
    await indexed(ui, "tools/curl")
    first = await ui.get("/ui/")
    assert first.status_code == 200
    names = re.findall(r'class="repository-link" href="/ui/r/([^"]+)"', first.text)
    assert names == ["team/app00", "team/app01", "team/app02", "team/app03", "team/app04"]
    seen = list(names)
    page = first
    while (found := re.search(r'id="next-page" rel="next" href="([^"]+)"', page.text)) is not None:
        page = await ui.get(found.group(1).replace("&amp;", "&"))
        assert page.status_code == 200
        seen += re.findall(r'class="repository-link" href="/ui/r/([^"]+)"', page.text)
    assert seen == sorted(seen) and len(seen) == 13
    by_tags = await ui.get("/ui/", params={"sort": "tags"})
    assert re.findall(r'class="repository-link" href="/ui/r/([^"]+)"', by_tags.text)[0] == "team/app07"
    by_size = await ui.get("/ui/", params={"sort": "size"})
    assert re.findall(r'class="repository-link" href="/ui/r/([^"]+)"', by_size.text)[0] == "tools/curl"
    search = await ui.get("/ui/", params={"q": "curl"})
    assert re.findall(r'class="repository-link" href="/ui/r/([^"]+)"', search.text) == ["tools/curl"]
    assert "The tools/curl service" in text_of(search)
    labelled = await ui.get("/ui/", params={"q": "label:com.example.team=ops platform:linux/arm64"})
    assert re.findall(r'class="repository-link" href="/ui/r/([^"]+)"', labelled.text) == ["tools/curl"]
    nothing = await ui.get("/ui/", params={"q": "nothing-like-this"})
    assert 'id="no-repositories"' in nothing.text


async def test_a_bad_query_or_page_link_is_an_error_page(ui_factory: UiFactory) -> None:
    ui = await ui_factory()
    for params, status in (
        ({"after": "not-a-cursor"}, 400),
        ({"q": "platform:linux"}, 400),
        ({"q": "x" * 2000}, 400),
        ({"sort": "size", "after": "WyJhIiwiYiJd"}, 400),  # ["a","b"]: a name cursor, not a size one
    ):
        response = await ui.get("/ui/", params=params)
        assert response.status_code == status, (params, response.text)
        assert 'id="error"' in response.text and response.headers["content-type"].startswith("text/html")
    repeated = await ui.get("/ui/?q=a&q=b")
    assert repeated.status_code == 400 and 'id="error"' in repeated.text


async def test_repository_page(ui_factory: UiFactory) -> None:
    ui = await ui_factory({"immutable_tags": [{"repository": "tools/**", "tags": ["1.*"]}]})
    await push_rich_image(ui, "tools/curl", "1.0")
    source = {"org.opencontainers.image.source": "https://example.com/curl"}
    digest, _ = await push_rich_image(ui, "tools/curl", "latest", **source)
    await indexed(ui, "tools/curl")
    await ui.get("/v2/tools/curl/manifests/latest", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    page = await ui.get("/ui/r/tools/curl")
    assert page.status_code == 200
    text = text_of(page)
    assert "docker pull registry.test/tools/curl:latest" in text
    assert "podman pull registry.test/tools/curl:latest" in text
    assert "moorage pull registry.test/tools/curl:latest" in text
    assert 'id="source-link" href="https://example.com/curl"' in page.text
    assert "The tools/curl service" in text
    rows = dict(re.findall(r'<tr class="tag" data-tag="([^"]+)">(.*?)</tr>', page.text, re.S))
    assert set(rows) == {"1.0", "latest"}
    assert digest in rows["latest"] and "linux/arm64" in rows["latest"]
    assert "immutable" in rows["1.0"] and "delete-tag" not in rows["1.0"]
    assert "delete-tag" in rows["latest"]
    for _ in range(50):  # pull counts are written in batches
        page = await ui.get("/ui/r/tools/curl")
        rows = dict(re.findall(r'<tr class="tag" data-tag="([^"]+)">(.*?)</tr>', page.text, re.S))
        if '<td class="pulls">1</td>' in rows["latest"]:
            break
        await __import__("asyncio").sleep(0.1)
    assert '<td class="pulls">1</td>' in rows["latest"] and '<td class="pulls">0</td>' in rows["1.0"]


async def test_image_page_shows_layers_config_history_and_referrers(ui_factory: UiFactory) -> None:
    ui = await ui_factory()
    digest, layers = await push_rich_image(ui, "tools/curl", "1.0")
    await push_rich_image(ui, "other/curl", "1.0")  # shares the base layer
    signature = b"a signature"
    await push_blob(ui, "tools/curl", signature)
    empty = b"{}"
    await push_blob(ui, "tools/curl", empty)
    subject_size = len((await ui.get(f"/v2/tools/curl/manifests/{digest}")).content)
    referrer = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.dev.cosign.simplesigning.v1+json",
        "config": descriptor("application/vnd.oci.empty.v1+json", empty),
        "layers": [descriptor("application/vnd.dev.cosign.simplesigning.v1+json", signature)],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": subject_size},
    }
    body = encode(referrer)
    put = await ui.put(
        f"/v2/tools/curl/manifests/{digest_of(body)}",
        content=body,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert put.status_code == 201, put.text
    await indexed(ui, "other/curl")
    await indexed(ui, "tools/curl")
    page = await ui.get(f"/ui/r/tools/curl/-/images/{digest}")
    assert page.status_code == 200, page.text
    found = re.findall(
        r'<tr class="layer" data-digest="([^"]+)">.*?data-bytes="(\d+)".*?class="shared">([^<]*)<', page.text, re.S
    )
    assert [(d, int(s)) for d, s, _ in found] == [(digest_of(layer), len(layer)) for layer in layers]
    assert found[0][2] == "1 other repository" and found[1][2] == "only here"
    text = text_of(page)
    for shown in ('"/usr/bin/tini", "--"', '"serve", "--port", "8080"', "MODE=prod", "8080/tcp", "/srv", "linux/arm64"):
        assert shown in text, shown
    steps = re.findall(r'<tr class="step">.*?<code>(.*?)</code>.*?data-bytes="(\d*)"', page.text, re.S)
    assert [(s[0].replace("&#34;", '"'), s[1]) for s in steps] == [
        (HISTORY[0]["created_by"], str(len(layers[0]))),
        (HISTORY[1]["created_by"], ""),
        (HISTORY[2]["created_by"], str(len(layers[1]))),
    ]
    assert "application/vnd.dev.cosign.simplesigning.v1+json" in page.text and 'class="referrer"' in page.text


async def test_image_page_of_an_index_lists_its_platforms(ui_factory: UiFactory) -> None:
    ui = await ui_factory()
    children = []
    for arch in ("amd64", "arm64"):
        child_digest, child = await push_image(ui, "multi/app", child_digest_name(arch), seed=arch)
        platform = {"os": "linux", "architecture": arch}
        children.append({**descriptor("application/vnd.oci.image.manifest.v1+json", child), "platform": platform})
        assert child_digest == digest_of(child)
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}
    body = encode(index)
    put = await ui.put("/v2/multi/app/manifests/latest", content=body, headers={"Content-Type": OCI_INDEX})
    assert put.status_code == 201
    await indexed(ui, "multi/app")
    page = await ui.get(f"/ui/r/multi/app/-/images/{digest_of(body)}")
    assert page.status_code == 200
    platforms = re.findall(r'<td class="platform">([^<]+)</td>', page.text)
    assert platforms == ["linux/amd64", "linux/arm64"]
    child_link = re.search(r'class="child-link" href="([^"]+)"', page.text)
    assert child_link is not None and (await ui.get(child_link.group(1))).status_code == 200


def child_digest_name(arch: str) -> str:
    return f"child-{arch}"


async def test_error_pages(ui_factory: UiFactory) -> None:
    ui = await ui_factory()
    await push_image(ui, "team/app", "1.0")
    await indexed(ui, "team/app")
    for path, status in (
        ("/ui/r/no/such", 404),
        ("/ui/r/team/app/-/images/sha256:" + "0" * 64, 404),
        ("/ui/r/team/app/-/images/not-a-digest", 404),
        ("/ui/r/team/app/-/tags/nope/delete", 404),
        ("/ui/r/UPPER/case", 400),
        ("/ui/static/nope.css", 404),
    ):
        response = await ui.get(path)
        assert response.status_code == status, (path, response.status_code)
        if path.startswith("/ui/r/"):
            assert 'id="error"' in response.text and response.headers["content-type"].startswith("text/html"), path


async def test_delete_a_tag_through_the_confirmation(ui_factory: UiFactory) -> None:
    ui = await ui_factory({"immutable_tags": [{"repository": "team/**", "tags": ["1.*"]}]})
    await push_image(ui, "team/app", "1.0")
    await push_image(ui, "team/app", "2.0", seed="two")
    await indexed(ui, "team/app")
    confirm = await ui.get("/ui/r/team/app/-/tags/2.0/delete")
    assert confirm.status_code == 200 and 'id="confirm-delete"' in confirm.text
    done = await post_form(ui, "/ui/r/team/app/-/tags/2.0/delete", "/ui/r/team/app/-/tags/2.0/delete")
    assert done.status_code == 303 and done.headers["location"] == "/ui/r/team/app?deleted=2.0"
    assert (await ui.get("/v2/team/app/tags/list")).json()["tags"] == ["1.0"]
    shown = await ui.get(done.headers["location"])
    assert 'id="flash"' in shown.text and 'data-tag="2.0"' not in shown.text
    immutable = await ui.get("/ui/r/team/app/-/tags/1.0/delete")
    assert immutable.status_code == 403 and 'id="immutable"' in immutable.text
    refused = await post_form(ui, "/ui/storage", "/ui/r/team/app/-/tags/1.0/delete")  # a token from any page
    assert refused.status_code == 403 and 'id="immutable"' in refused.text
    assert (await ui.get("/v2/team/app/tags/list")).json()["tags"] == ["1.0"]


async def test_storage_page_and_gc_dry_run(ui_factory: UiFactory) -> None:
    ui = await ui_factory()
    await push_rich_image(ui, "tools/curl", "1.0")
    await push_rich_image(ui, "other/curl", "1.0")
    page = await ui.get("/ui/storage")
    assert page.status_code == 200
    logical = int(re.search(r'id="logical-bytes" data-bytes="(\d+)"', page.text).group(1))  # type: ignore[union-attr]
    physical = int(re.search(r'id="physical-bytes" data-bytes="(\d+)"', page.text).group(1))  # type: ignore[union-attr]
    saved = int(re.search(r'id="saved-bytes" data-bytes="(\d+)"', page.text).group(1))  # type: ignore[union-attr]
    assert logical > physical > 0 and saved == logical - physical >= len(b"base layer " * 300)
    assert 'id="storage-chart"' in page.text and page.text.count('class="bar repo"') == 2
    assert 'id="gc-last">No garbage collection' in page.text
    report = await post_form(ui, "/ui/storage", "/ui/storage/gc")
    assert report.status_code == 200 and 'id="gc-report"' in report.text
    assert (await ui.get("/v2/tools/curl/tags/list")).status_code == 200


async def test_a_repository_with_many_tags_shows_them_in_pages(ui_factory: UiFactory) -> None:
    ui = await ui_factory()
    _, body = await push_image(ui, "team/app", "t000")
    for i in range(1, 120):
        put = await ui.put(f"/v2/team/app/manifests/t{i:03d}", content=body, headers={"Content-Type": OCI_MANIFEST})
        assert put.status_code == 201
    await indexed(ui, "team/app")
    seen: list[str] = []
    for page in (1, 2, 3):
        shown = await ui.get("/ui/r/team/app", params={"page": str(page)})
        assert shown.status_code == 200 and len(shown.content) < 100_000
        seen += re.findall(r'<tr class="tag" data-tag="([^"]+)">', shown.text)
    assert seen == [f"t{i:03d}" for i in range(119, -1, -1)]
    for bad in ("0", "-1", "x", "99999999999"):
        assert (await ui.get("/ui/r/team/app", params={"page": bad})).status_code == 400


async def test_an_unexpected_failure_is_an_error_page(
    ui_factory: UiFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ui = await ui_factory()
    await push_image(ui, "team/app", "1.0")
    await indexed(ui, "team/app")

    async def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("registry.ui.pages.image_view", broken)
    digest = (await ui.get("/v2/team/app/manifests/1.0")).headers["docker-content-digest"]
    page = await ui.get(f"/ui/r/team/app/-/images/{digest}")
    assert page.status_code == 500 and 'data-code="UNKNOWN"' in page.text and "a bug" not in page.text
    assert "unexpected error on GET" in caplog.text
