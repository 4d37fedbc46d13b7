from __future__ import annotations

import json

import httpx
import pytest

from tests.api.conftest import ClientFactory
from tests.api.helpers import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    descriptor,
    digest_of,
    encode,
    error_code,
    image_manifest,
    push_blob,
    push_image,
)

SKOPEO_ACCEPT = [
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
]


async def test_push_and_get_by_tag_and_digest(client: httpx.AsyncClient) -> None:
    digest, body = await push_image(client, "team/app", "1.0")
    for reference in ("1.0", digest):
        response = await client.get(f"/v2/team/app/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
        assert response.status_code == 200
        assert response.content == body
        assert response.headers["Content-Type"] == OCI_MANIFEST
        assert response.headers["Docker-Content-Digest"] == digest
        head = await client.head(f"/v2/team/app/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
        assert head.status_code == 200
        assert head.headers["Content-Length"] == str(len(body))
        assert head.headers["Docker-Content-Digest"] == digest
        assert head.content == b""


async def test_put_response_headers(client: httpx.AsyncClient) -> None:
    config, layer = b'{"os":"linux"}', b"layer"
    await push_blob(client, "team/app", config)
    await push_blob(client, "team/app", layer)
    body = encode(image_manifest(config, [layer]))
    response = await client.put("/v2/team/app/manifests/v1", content=body, headers={"Content-Type": OCI_MANIFEST})
    assert response.status_code == 201
    assert response.headers["Docker-Content-Digest"] == digest_of(body)
    assert response.headers["Location"] == f"/v2/team/app/manifests/{digest_of(body)}"
    assert "OCI-Subject" not in response.headers


async def test_stored_byte_exact(client: httpx.AsyncClient) -> None:
    config, layer = b"{}", b"l"
    await push_blob(client, "team/app", config)
    await push_blob(client, "team/app", layer)
    manifest = image_manifest(config, [layer])
    body = b"  " + json.dumps(manifest, indent=7, sort_keys=True).encode() + b"\n\n"
    response = await client.put("/v2/team/app/manifests/odd", content=body, headers={"Content-Type": OCI_MANIFEST})
    assert response.status_code == 201
    assert (await client.get("/v2/team/app/manifests/odd")).content == body


async def test_docker_schema2_manifest(client: httpx.AsyncClient) -> None:
    _digest, body = await push_image(client, "team/app", "docker", media_type=DOCKER_MANIFEST)
    response = await client.get("/v2/team/app/manifests/docker", headers={"Accept": DOCKER_MANIFEST})
    assert response.headers["Content-Type"] == DOCKER_MANIFEST
    assert response.content == body


@pytest.mark.parametrize(("index_type", "child_type"), [(OCI_INDEX, OCI_MANIFEST), (DOCKER_LIST, DOCKER_MANIFEST)])
async def test_index_with_children(client: httpx.AsyncClient, index_type: str, child_type: str) -> None:
    amd, amd_body = await push_image(client, "team/app", "amd", seed="amd", media_type=child_type)
    arm, arm_body = await push_image(client, "team/app", "arm", seed="arm", media_type=child_type)
    index = {
        "schemaVersion": 2,
        "mediaType": index_type,
        "manifests": [
            descriptor(child_type, amd_body, platform={"architecture": "amd64", "os": "linux"}),
            descriptor(child_type, arm_body, platform={"architecture": "arm64", "os": "linux"}),
        ],
    }
    body = encode(index)
    response = await client.put("/v2/team/app/manifests/multi", content=body, headers={"Content-Type": index_type})
    assert response.status_code == 201, response.text
    get = await client.get("/v2/team/app/manifests/multi", headers=[("Accept", t) for t in SKOPEO_ACCEPT])
    assert get.status_code == 200
    assert get.headers["Content-Type"] == index_type
    assert get.content == body
    for child in (amd, arm):
        assert (await client.get(f"/v2/team/app/manifests/{child}")).status_code == 200


async def test_index_with_unknown_child(client: httpx.AsyncClient) -> None:
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor(OCI_MANIFEST, b"not pushed")]}
    response = await client.put(
        "/v2/team/app/manifests/multi", content=encode(index), headers={"Content-Type": OCI_INDEX}
    )
    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_BLOB_UNKNOWN"


async def test_manifest_naming_a_missing_layer(client: httpx.AsyncClient) -> None:
    config = b"{}"
    await push_blob(client, "team/app", config)
    body = encode(image_manifest(config, [b"missing layer"]))
    response = await client.put("/v2/team/app/manifests/v1", content=body, headers={"Content-Type": OCI_MANIFEST})
    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_BLOB_UNKNOWN"
    assert response.json()["errors"][0]["detail"]["digest"] == digest_of(b"missing layer")
    assert (await client.get("/v2/team/app/manifests/v1")).status_code == 404


async def test_manifest_naming_a_blob_of_another_repository(client: httpx.AsyncClient) -> None:
    config, layer = b"{}", b"layer"
    await push_blob(client, "team/app", config)
    await push_blob(client, "team/other", layer)
    body = encode(image_manifest(config, [layer]))
    response = await client.put("/v2/team/app/manifests/v1", content=body, headers={"Content-Type": OCI_MANIFEST})
    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_BLOB_UNKNOWN"


async def test_foreign_layers_need_not_exist(client: httpx.AsyncClient) -> None:
    config = b"{}"
    await push_blob(client, "team/app", config)
    manifest = image_manifest(config, [], media_type=DOCKER_MANIFEST)
    manifest["layers"] = [
        descriptor(
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            b"windows",
            urls=["https://example.invalid/layer"],
        )
    ]
    response = await client.put(
        "/v2/team/app/manifests/win", content=encode(manifest), headers={"Content-Type": DOCKER_MANIFEST}
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1,2]",
        b'{"schemaVersion": 1}',
        b'{"schemaVersion": 2, "mediaType": "'
        + OCI_MANIFEST.encode()
        + b'", "config": {"mediaType": "x", "digest": "sha256:12", "size": 1}, "layers": []}',
        b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'", "layers": []}',
        b'{"schemaVersion": 2, "mediaType": "' + OCI_INDEX.encode() + b'"}',
        b'{"schemaVersion": 2, "mediaType": "application/x-unknown", "config": {}}',
    ],
)
async def test_invalid_manifests(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.put("/v2/team/app/manifests/bad", content=body, headers={"Content-Type": OCI_MANIFEST})
    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_INVALID"


async def test_content_type_must_match_media_type_field(client: httpx.AsyncClient) -> None:
    config, layer = b"{}", b"l"
    await push_blob(client, "team/app", config)
    await push_blob(client, "team/app", layer)
    body = encode(image_manifest(config, [layer]))
    response = await client.put("/v2/team/app/manifests/v1", content=body, headers={"Content-Type": DOCKER_MANIFEST})
    assert response.status_code == 400
    assert error_code(response) == "MANIFEST_INVALID"


async def test_manifest_without_media_type_field_keeps_pushed_type(client: httpx.AsyncClient) -> None:
    config, layer = b"{}", b"l"
    await push_blob(client, "team/app", config)
    await push_blob(client, "team/app", layer)
    manifest = image_manifest(config, [layer])
    del manifest["mediaType"]
    response = await client.put(
        "/v2/team/app/manifests/v1", content=encode(manifest), headers={"Content-Type": OCI_MANIFEST}
    )
    assert response.status_code == 201
    assert (await client.get("/v2/team/app/manifests/v1")).headers["Content-Type"] == OCI_MANIFEST


async def test_size_limit(client_factory: ClientFactory) -> None:
    client = await client_factory(manifest_max_bytes=2048)
    config = b"{}"
    await push_blob(client, "team/app", config)
    manifest = image_manifest(config, [], annotations={"padding": "x" * 4096})
    response = await client.put(
        "/v2/team/app/manifests/big", content=encode(manifest), headers={"Content-Type": OCI_MANIFEST}
    )
    assert response.status_code == 413
    assert error_code(response) == "MANIFEST_TOO_LARGE"


async def test_default_limit_accepts_4_mib(client: httpx.AsyncClient) -> None:
    config = b"{}"
    await push_blob(client, "team/app", config)
    manifest = image_manifest(config, [], annotations={"padding": "x" * (4 * 1024 * 1024 - 1024)})
    response = await client.put(
        "/v2/team/app/manifests/big", content=encode(manifest), headers={"Content-Type": OCI_MANIFEST}
    )
    assert response.status_code == 201
    too_big = image_manifest(config, [], annotations={"padding": "x" * (4 * 1024 * 1024)})
    response = await client.put(
        "/v2/team/app/manifests/big", content=encode(too_big), headers={"Content-Type": OCI_MANIFEST}
    )
    assert response.status_code == 413


async def test_put_by_digest(client: httpx.AsyncClient) -> None:
    config, layer = b"{}", b"l"
    await push_blob(client, "team/app", config)
    await push_blob(client, "team/app", layer)
    body = encode(image_manifest(config, [layer]))
    wrong = await client.put(
        f"/v2/team/app/manifests/{digest_of(b'other')}", content=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert wrong.status_code == 400
    assert error_code(wrong) == "DIGEST_INVALID"
    right = await client.put(
        f"/v2/team/app/manifests/{digest_of(body)}", content=body, headers={"Content-Type": OCI_MANIFEST}
    )
    assert right.status_code == 201
    tags = await client.get("/v2/team/app/tags/list")
    assert tags.json()["tags"] == []


async def test_put_by_digest_with_tags(client: httpx.AsyncClient) -> None:
    config, layer = b"{}", b"l"
    await push_blob(client, "team/app", config)
    await push_blob(client, "team/app", layer)
    body = encode(image_manifest(config, [layer]))
    response = await client.put(
        f"/v2/team/app/manifests/{digest_of(body)}",
        params=[("tag", "a"), ("tag", "b")],
        content=body,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert response.status_code == 201
    assert response.headers.get_list("OCI-Tag") == ["a", "b"]
    assert (await client.get("/v2/team/app/tags/list")).json()["tags"] == ["a", "b"]


@pytest.mark.parametrize("tag", ["-bad", "a" * 129, "bad:tag", ".dot"])
async def test_bad_tag(client: httpx.AsyncClient, tag: str) -> None:
    _, body = await push_image(client, "team/app", "good")
    response = await client.put(f"/v2/team/app/manifests/{tag}", content=body, headers={"Content-Type": OCI_MANIFEST})
    assert response.status_code == 400
    assert error_code(response) in ("TAG_INVALID", "DIGEST_INVALID")
    # A reference no tag can have is unknown to GET and HEAD (the OCI conformance suite v1.1.1 expects 404);
    # one shaped like a digest (`alg:...`) is a malformed digest.
    for method in ("GET", "HEAD"):
        unknown = await client.request(method, f"/v2/team/app/manifests/{tag}")
        assert unknown.status_code == (400 if ":" in tag else 404), method
        if method == "GET":
            assert error_code(unknown) == ("DIGEST_INVALID" if ":" in tag else "MANIFEST_UNKNOWN")


async def test_unknown_manifest(client: httpx.AsyncClient) -> None:
    await push_image(client, "team/app", "1.0")
    for reference in ("2.0", digest_of(b"nothing")):
        response = await client.get(f"/v2/team/app/manifests/{reference}")
        assert response.status_code == 404
        assert error_code(response) == "MANIFEST_UNKNOWN"
    assert (await client.head("/v2/team/app/manifests/2.0")).status_code == 404
    assert (await client.get("/v2/nothing/here/manifests/latest")).status_code == 404


async def test_manifest_of_another_repository_is_unknown(client: httpx.AsyncClient) -> None:
    digest, _ = await push_image(client, "team/app", "1.0")
    response = await client.get(f"/v2/team/other/manifests/{digest}")
    assert response.status_code == 404


async def test_negotiation_over_every_accept_line(client: httpx.AsyncClient) -> None:
    await push_image(client, "team/app", "oci")
    lines = [("Accept", media) for media in SKOPEO_ACCEPT]
    assert (await client.get("/v2/team/app/manifests/oci", headers=lines)).status_code == 200
    docker_only = await client.get("/v2/team/app/manifests/oci", headers={"Accept": DOCKER_MANIFEST})
    assert docker_only.status_code == 404
    assert error_code(docker_only) == "MANIFEST_UNKNOWN"
    combined = f"{DOCKER_MANIFEST}, {OCI_MANIFEST};q=0.5"
    assert (await client.get("/v2/team/app/manifests/oci", headers={"Accept": combined})).status_code == 200
    assert (await client.get("/v2/team/app/manifests/oci", headers={"Accept": "*/*"})).status_code == 200


async def test_retag_moves_the_tag(client: httpx.AsyncClient) -> None:
    first, _ = await push_image(client, "team/app", "latest", seed="one")
    second, _ = await push_image(client, "team/app", "latest", seed="two")
    assert first != second
    response = await client.head("/v2/team/app/manifests/latest")
    assert response.headers["Docker-Content-Digest"] == second
    assert (await client.head(f"/v2/team/app/manifests/{first}")).status_code == 200


async def test_delete_by_tag_untags(client: httpx.AsyncClient) -> None:
    digest, _ = await push_image(client, "team/app", "1.0")
    response = await client.delete("/v2/team/app/manifests/1.0")
    assert response.status_code == 202
    assert (await client.get("/v2/team/app/manifests/1.0")).status_code == 404
    assert (await client.get(f"/v2/team/app/manifests/{digest}")).status_code == 200
    assert (await client.delete("/v2/team/app/manifests/1.0")).status_code == 404


async def test_delete_by_digest_removes_revision_and_tags(client: httpx.AsyncClient) -> None:
    digest, body = await push_image(client, "team/app", "1.0")
    await client.put("/v2/team/app/manifests/stable", content=body, headers={"Content-Type": OCI_MANIFEST})
    await push_image(client, "team/app", "other", seed="other")
    response = await client.delete(f"/v2/team/app/manifests/{digest}")
    assert response.status_code == 202
    assert (await client.get(f"/v2/team/app/manifests/{digest}")).status_code == 404
    assert (await client.get("/v2/team/app/manifests/1.0")).status_code == 404
    assert (await client.get("/v2/team/app/tags/list")).json()["tags"] == ["other"]
    missing = await client.delete(f"/v2/team/app/manifests/{digest}")
    assert missing.status_code == 404
    assert error_code(missing) == "MANIFEST_UNKNOWN"


async def test_manifest_delete_disabled(client_factory: ClientFactory) -> None:
    client = await client_factory(delete=False)
    digest, _ = await push_image(client, "team/app", "1.0")
    for reference in ("1.0", digest):
        response = await client.delete(f"/v2/team/app/manifests/{reference}")
        assert response.status_code == 405
        assert error_code(response) == "UNSUPPORTED"
    assert (await client.get("/v2/team/app/manifests/1.0")).status_code == 200


async def test_subject_need_not_exist_and_is_echoed(client: httpx.AsyncClient) -> None:
    subject = digest_of(b"a manifest pushed later")
    config = b"{}"
    await push_blob(client, "team/app", config)
    manifest = image_manifest(
        config,
        [],
        artifactType="application/vnd.example.sbom",
        subject={"mediaType": OCI_MANIFEST, "digest": subject, "size": 23},
    )
    manifest["config"]["mediaType"] = "application/vnd.oci.empty.v1+json"
    response = await client.put(
        f"/v2/team/app/manifests/{digest_of(encode(manifest))}",
        content=encode(manifest),
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert response.status_code == 201, response.text
    assert response.headers["OCI-Subject"] == subject
