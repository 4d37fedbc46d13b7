"""HTTP handlers, one module per API resource, wired here in the order of the spec's endpoint table.

Each route declares the access it needs (registry/routing.py); the check runs after routing, before the handler.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from registry.handlers import (
    admin,
    auth_token,
    base,
    blobs,
    health,
    listings,
    manifests,
    policy,
    referrers,
    search,
    uploads,
)
from registry.routing import CATALOG, PING, PUBLIC, ApiRoute, on_repository

PULL, PUSH, DELETE = on_repository("pull"), on_repository("push"), on_repository("delete")


def routes(*, metrics: bool = False) -> list[BaseRoute]:
    """The API's routes, the probes, and `/metrics` when it is served on the registry's port."""
    probes: list[BaseRoute] = [
        ApiRoute("/healthz", health.healthz, methods=["GET"], access=PUBLIC),
        ApiRoute("/readyz", health.readyz, methods=["GET"], access=PUBLIC),
    ]
    if metrics:
        probes.append(ApiRoute("/metrics", health.metrics, methods=["GET"], access=PUBLIC))
    # Last: the API's routes are the hot path, and no API path can be taken for a probe's.
    return api_routes() + search.routes() + admin.routes() + policy.routes() + auth_token.routes() + probes


def api_routes() -> list[BaseRoute]:
    # `{name:path}` matches names with slashes; more specific suffixes come first.
    upload = "/v2/{name:path}/blobs/uploads/{upload_id}"
    return [
        ApiRoute("/v2/", base.api_version, methods=["GET"], access=PING),
        ApiRoute("/v2/_catalog", listings.catalog, methods=["GET"], access=CATALOG),
        ApiRoute("/v2/{name:path}/blobs/uploads/", uploads.start_upload, methods=["POST"], access=uploads.start_access),
        ApiRoute("/v2/{name:path}/blobs/uploads", uploads.start_upload, methods=["POST"], access=uploads.start_access),
        ApiRoute(upload, uploads.patch_upload, methods=["PATCH"], access=PUSH),
        ApiRoute(upload, uploads.finish_upload, methods=["PUT"], access=PUSH),
        ApiRoute(upload, uploads.upload_status, methods=["GET"], access=PUSH),
        ApiRoute(upload, uploads.cancel_upload, methods=["DELETE"], access=PUSH),
        ApiRoute("/v2/{name:path}/blobs/{digest}", blobs.get_blob, methods=["GET", "HEAD"], access=PULL),
        ApiRoute("/v2/{name:path}/blobs/{digest}", blobs.delete_blob, methods=["DELETE"], access=DELETE),
        ApiRoute("/v2/{name:path}/manifests/{reference}", manifests.get_manifest, methods=["GET", "HEAD"], access=PULL),
        ApiRoute("/v2/{name:path}/manifests/{reference}", manifests.put_manifest, methods=["PUT"], access=PUSH),
        ApiRoute("/v2/{name:path}/manifests/{reference}", manifests.delete_manifest, methods=["DELETE"], access=DELETE),
        ApiRoute("/v2/{name:path}/tags/list", listings.list_tags, methods=["GET"], access=PULL),
        ApiRoute("/v2/{name:path}/referrers/{digest}", referrers.list_referrers, methods=["GET"], access=PULL),
    ]
