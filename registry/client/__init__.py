"""The companion client: push, pull and manage images on any OCI registry.

The CLI (`registry.client.cli`) is a thin layer over this API::

    ref = parse_reference("localhost:5000/team/app:1.0")
    source, _ = open_source("./layout")
    async with RegistryClient.connect(ref.registry) as registry:
        digest = await push_image(source, source.choose_root(ref.tag), ref, registry, QuietReporter())
        await pull_image(ref, Path("./copy"), registry, QuietReporter(), platform=parse_platform("linux/arm64"))

Modules: `reference` (image references), `errors`, `credentials` (docker config, env), `transport` (httpx with
auth and retries), `api` (registry endpoints), `uploads` (mount, resumable chunked upload), `manifests`
(descriptors, platforms), `layouts` (reading OCI layouts, OCI archives, docker-save tarballs), `archives` (writing
docker archives), `push`, `pull`, `copy`, `inspection`, `progress`, `tasks` (bounded concurrency), `cli`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry.client.api import RegistryClient
    from registry.client.copy import copy_image
    from registry.client.errors import ClientError
    from registry.client.layouts import ImageSource, open_source
    from registry.client.manifests import parse_platform
    from registry.client.progress import QuietReporter, make_reporter
    from registry.client.pull import pull_image
    from registry.client.push import push_image
    from registry.client.reference import Reference, parse_reference, parse_repository

# Loaded on first use: `moorage serve` imports `registry.client.cli` for its parser and must not pay for httpx.
_EXPORTS = {
    "ClientError": "errors",
    "ImageSource": "layouts",
    "QuietReporter": "progress",
    "Reference": "reference",
    "RegistryClient": "api",
    "copy_image": "copy",
    "make_reporter": "progress",
    "open_source": "layouts",
    "parse_platform": "manifests",
    "parse_reference": "reference",
    "parse_repository": "reference",
    "pull_image": "pull",
    "push_image": "push",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"registry.client.{_EXPORTS[name]}"), name)


__all__ = [
    "ClientError",
    "ImageSource",
    "QuietReporter",
    "Reference",
    "RegistryClient",
    "copy_image",
    "make_reporter",
    "open_source",
    "parse_platform",
    "parse_reference",
    "parse_repository",
    "pull_image",
    "push_image",
]
