from __future__ import annotations

import json

import httpx

from tests.api.helpers import OCI_INDEX, OCI_MANIFEST, descriptor, digest_of, encode, error_code, push_blob, push_image

EMPTY_CONFIG = b"{}"
EMPTY_TYPE = "application/vnd.oci.empty.v1+json"


async def push_artifact(
    client: httpx.AsyncClient,
    name: str,
    subject_body: bytes,
    artifact_type: str | None,
    annotations: dict[str, str],
    payload: bytes = b"payload",
) -> str:
    await push_blob(client, name, EMPTY_CONFIG)
    await push_blob(client, name, payload)
    manifest: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(EMPTY_TYPE if artifact_type else "application/vnd.example.config+json", EMPTY_CONFIG),
        "layers": [descriptor("application/vnd.example.layer", payload)],
        "subject": descriptor(OCI_MANIFEST, subject_body),
        "annotations": annotations,
    }
    if artifact_type:
        manifest["artifactType"] = artifact_type
    body = encode(manifest)
    digest = digest_of(body)
    response = await client.put(f"/v2/{name}/manifests/{digest}", content=body, headers={"Content-Type": OCI_MANIFEST})
    assert response.status_code == 201, response.text
    assert response.headers["OCI-Subject"] == digest_of(subject_body)
    return digest


async def test_unknown_subject_gives_an_empty_index(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/v2/team/app/referrers/{digest_of(b'nothing')}")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == OCI_INDEX
    assert response.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}


async def test_bad_digest(client: httpx.AsyncClient) -> None:
    response = await client.get("/v2/team/app/referrers/sha256:nope")
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"


async def test_referrers_listed_with_artifact_type_and_annotations(client: httpx.AsyncClient) -> None:
    subject, subject_body = await push_image(client, "team/app", "1.0")
    sbom = await push_artifact(client, "team/app", subject_body, "application/vnd.example.sbom", {"kind": "sbom"})
    sig = await push_artifact(
        client, "team/app", subject_body, "application/vnd.example.sig", {"kind": "sig"}, payload=b"signature"
    )
    legacy = await push_artifact(client, "team/app", subject_body, None, {}, payload=b"legacy")
    response = await client.get(f"/v2/team/app/referrers/{subject}")
    assert response.status_code == 200
    manifests = {m["digest"]: m for m in response.json()["manifests"]}
    assert set(manifests) == {sbom, sig, legacy}
    assert manifests[sbom]["artifactType"] == "application/vnd.example.sbom"
    assert manifests[sbom]["annotations"] == {"kind": "sbom"}
    assert manifests[sbom]["mediaType"] == OCI_MANIFEST
    assert manifests[legacy]["artifactType"] == "application/vnd.example.config+json"
    assert "annotations" not in manifests[legacy]
    assert "OCI-Filters-Applied" not in response.headers
    filtered = await client.get(
        f"/v2/team/app/referrers/{subject}", params={"artifactType": "application/vnd.example.sig"}
    )
    assert filtered.headers["OCI-Filters-Applied"] == "artifactType"
    assert [m["digest"] for m in filtered.json()["manifests"]] == [sig]


async def test_referrer_pushed_before_its_subject(client: httpx.AsyncClient) -> None:
    subject_body = b'{"schemaVersion":2}'
    referrer = await push_artifact(client, "team/app", subject_body, "application/vnd.example.sbom", {})
    response = await client.get(f"/v2/team/app/referrers/{digest_of(subject_body)}")
    assert [m["digest"] for m in response.json()["manifests"]] == [referrer]


async def test_deleted_referrer_disappears(client: httpx.AsyncClient) -> None:
    subject, subject_body = await push_image(client, "team/app", "1.0")
    referrer = await push_artifact(client, "team/app", subject_body, "application/vnd.example.sbom", {})
    assert (await client.delete(f"/v2/team/app/manifests/{referrer}")).status_code == 202
    response = await client.get(f"/v2/team/app/referrers/{subject}")
    assert response.json()["manifests"] == []


async def test_referrers_are_per_repository(client: httpx.AsyncClient) -> None:
    subject, subject_body = await push_image(client, "team/app", "1.0")
    await push_artifact(client, "team/app", subject_body, "application/vnd.example.sbom", {})
    response = await client.get(f"/v2/team/other/referrers/{subject}")
    assert response.json()["manifests"] == []


async def test_tag_schema_fallback_index_is_included(client: httpx.AsyncClient) -> None:
    subject, _subject_body = await push_image(client, "team/app", "1.0")
    old, old_body = await push_image(client, "team/app", "old-sig", seed="old")
    entry = descriptor(OCI_MANIFEST, old_body, artifactType="application/vnd.example.old")
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]}
    tag = subject.replace(":", "-")
    response = await client.put(
        f"/v2/team/app/manifests/{tag}", content=json.dumps(index).encode(), headers={"Content-Type": OCI_INDEX}
    )
    assert response.status_code == 201, response.text
    listed = await client.get(f"/v2/team/app/referrers/{subject}")
    assert [m["digest"] for m in listed.json()["manifests"]] == [old]
