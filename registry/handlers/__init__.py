"""HTTP handlers, one module per API resource, wired here in the order of the spec's endpoint table."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from registry.handlers import admin, auth_token, base, blobs, health, listings, manifests, referrers, search, uploads


def routes(*, metrics: bool = False) -> list[BaseRoute]:
    """The API's routes, the probes, and `/metrics` when it is served on the registry's port."""
    probes = [
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
    ]
    if metrics:
        probes.append(Route("/metrics", health.metrics, methods=["GET"]))
    # Last: the API's routes are the hot path, and no API path can be taken for a probe's.
    return api_routes() + search.routes() + admin.routes() + auth_token.routes() + probes


def api_routes() -> list[BaseRoute]:
    # `{name:path}` matches names with slashes; more specific suffixes come first.
    return [
        Route("/v2/", base.api_version, methods=["GET"]),
        Route("/v2/_catalog", listings.catalog, methods=["GET"]),
        Route("/v2/{name:path}/blobs/uploads/", uploads.start_upload, methods=["POST"]),
        Route("/v2/{name:path}/blobs/uploads", uploads.start_upload, methods=["POST"]),
        Route("/v2/{name:path}/blobs/uploads/{upload_id}", uploads.patch_upload, methods=["PATCH"]),
        Route("/v2/{name:path}/blobs/uploads/{upload_id}", uploads.finish_upload, methods=["PUT"]),
        Route("/v2/{name:path}/blobs/uploads/{upload_id}", uploads.upload_status, methods=["GET"]),
        Route("/v2/{name:path}/blobs/uploads/{upload_id}", uploads.cancel_upload, methods=["DELETE"]),
        Route("/v2/{name:path}/blobs/{digest}", blobs.get_blob, methods=["GET", "HEAD"]),
        Route("/v2/{name:path}/blobs/{digest}", blobs.delete_blob, methods=["DELETE"]),
        Route("/v2/{name:path}/manifests/{reference}", manifests.get_manifest, methods=["GET", "HEAD"]),
        Route("/v2/{name:path}/manifests/{reference}", manifests.put_manifest, methods=["PUT"]),
        Route("/v2/{name:path}/manifests/{reference}", manifests.delete_manifest, methods=["DELETE"]),
        Route("/v2/{name:path}/tags/list", listings.list_tags, methods=["GET"]),
        Route("/v2/{name:path}/referrers/{digest}", referrers.list_referrers, methods=["GET"]),
    ]
