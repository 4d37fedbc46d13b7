"""`moorage inspect`: what an image is: manifest, config, platforms and sizes."""

from __future__ import annotations

import json
from typing import Any

from registry.client.api import RegistryClient
from registry.client.manifests import Manifest, format_platform
from registry.client.progress import human_size
from registry.client.reference import Reference


def _image_summary(image: Manifest, config: dict[str, Any] | None) -> dict[str, Any]:
    blobs = image.blobs
    summary: dict[str, Any] = {
        "digest": image.digest,
        "mediaType": image.media_type,
        "size": len(image.data) + sum(blob.size for blob in blobs),
        "layers": [layer.to_json() for layer in image.layers],
        "config": config,
    }
    if config is not None:
        summary["platform"] = format_platform(
            {k: str(config[k]) for k in ("os", "architecture", "variant") if config.get(k)}
        )
    return summary


async def _config(registry: RegistryClient, repository: str, image: Manifest) -> dict[str, Any] | None:
    descriptor = image.config
    if descriptor is None or not descriptor.media_type.endswith("json") or descriptor.size > 4 * 1024 * 1024:
        return None
    data = await registry.get_blob_bytes(repository, descriptor.digest, descriptor.size)
    try:
        config = json.loads(data)
    except ValueError:
        return None
    return config if isinstance(config, dict) else None


async def inspect_image(registry: RegistryClient, ref: Reference) -> dict[str, Any]:
    """A JSON-able description of `ref`: for an index, one entry per platform."""
    registry.allow(ref.repository, "pull")
    top = await registry.get_manifest(ref.repository, ref.reference)
    result: dict[str, Any] = {
        "reference": str(ref),
        "digest": top.digest,
        "mediaType": top.media_type,
        "manifest": top.document,
    }
    if top.is_index:
        images = []
        for child in top.children:
            image = await registry.get_manifest(ref.repository, child.digest)
            summary = _image_summary(image, await _config(registry, ref.repository, image))
            summary["platform"] = format_platform(child.platform)
            images.append(summary)
        result["images"] = images
        result["platforms"] = [image["platform"] for image in images]
        result["size"] = len(top.data) + sum(image["size"] for image in images)
    else:
        summary = _image_summary(top, await _config(registry, ref.repository, top))
        result.update({k: v for k, v in summary.items() if k not in ("digest", "mediaType")})
        result["platforms"] = [summary["platform"]] if "platform" in summary else []
    return result


def format_inspection(info: dict[str, Any]) -> list[str]:
    lines = [
        f"Name:       {info['reference']}",
        f"Digest:     {info['digest']}",
        f"Media type: {info['mediaType']}",
        f"Platforms:  {', '.join(info['platforms']) or 'unknown'}",
        f"Size:       {human_size(info['size'])} ({info['size']} bytes, manifests, configs and layers)",
    ]
    for image in info.get("images", []):
        lines.append(f"  {image['platform']:<16} {image['digest']}  {human_size(image['size'])}")
    for layer in info.get("layers", []):
        lines.append(f"  layer {layer['digest']}  {human_size(layer['size'])}  {layer['mediaType']}")
    config = info.get("config") or {}
    inner = config.get("config") or {}
    if config.get("created"):
        lines.append(f"Created:    {config['created']}")
    for key in ("Entrypoint", "Cmd"):
        if inner.get(key):
            lines.append(f"{key + ':':<11} {json.dumps(inner[key])}")
    return lines
