"""Building blocks for API tests: push blobs and manifests the way clients do, and read spec errors."""

from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import urlencode

import httpx

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"errors"}, body
    error = body["errors"][0]
    assert {"code", "message"} <= set(error), error
    return str(error["code"])


async def push_blob(client: httpx.AsyncClient, name: str, data: bytes) -> str:
    digest = digest_of(data)
    response = await client.post(f"/v2/{name}/blobs/uploads/", params={"digest": digest}, content=data)
    assert response.status_code == 201, response.text
    return digest


def descriptor(media_type: str, data: bytes, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data), **extra}


def image_manifest(config: bytes, layers: list[bytes], media_type: str = OCI_MANIFEST, **extra: Any) -> dict[str, Any]:
    config_type, layer_type = (
        (DOCKER_CONFIG, DOCKER_LAYER) if media_type == DOCKER_MANIFEST else (OCI_CONFIG, OCI_LAYER)
    )
    return {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config_type, config),
        "layers": [descriptor(layer_type, layer) for layer in layers],
        **extra,
    }


def encode(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, indent=2).encode()


async def push_image(
    client: httpx.AsyncClient,
    name: str,
    reference: str,
    *,
    seed: str = "x",
    media_type: str = OCI_MANIFEST,
    **extra: Any,
) -> tuple[str, bytes]:
    """Push config, one layer and the manifest; returns (manifest digest, manifest bytes)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layer = f"layer-{seed}".encode() * 100
    await push_blob(client, name, config)
    await push_blob(client, name, layer)
    body = encode(image_manifest(config, [layer], media_type, **extra))
    response = await client.put(f"/v2/{name}/manifests/{reference}", content=body, headers={"Content-Type": media_type})
    assert response.status_code == 201, response.text
    return digest_of(body), body


def at(location: str, **params: str) -> str:
    """A Location the registry gave out, with more query parameters, as clients send it (httpx's `params=`
    would replace the Location's own query, its `_state` included)."""
    return location + ("&" if "?" in location else "?") + urlencode(params)
