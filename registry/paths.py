"""The on-storage layout, compatible with CNCF Distribution's. The only module that knows where things live.

Every digest and name is validated before it becomes part of a path (see digests.py and names.py).
"""

from __future__ import annotations

from registry.digests import Digest

ROOT = "docker/registry/v2"
BLOBS = f"{ROOT}/blobs"
REPOSITORIES = f"{ROOT}/repositories"
# Ours, outside Distribution's tree: the generated secret every worker and replica shares.
HTTP_SECRET = "moorage/http-secret"


def blob_data(digest: Digest) -> str:
    return f"{BLOBS}/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}/data"


def blob_dir(digest: Digest) -> str:
    return f"{BLOBS}/{digest.algorithm}/{digest.hex[:2]}/{digest.hex}"


def repository(name: str) -> str:
    return f"{REPOSITORIES}/{name}"


def layer_link(name: str, digest: Digest) -> str:
    return f"{REPOSITORIES}/{name}/_layers/{digest.algorithm}/{digest.hex}/link"


def layer_link_dir(name: str, digest: Digest) -> str:
    return f"{REPOSITORIES}/{name}/_layers/{digest.algorithm}/{digest.hex}"


def manifest_revision_link(name: str, digest: Digest) -> str:
    return f"{manifest_revision_dir(name, digest)}/link"


def manifest_revision_dir(name: str, digest: Digest) -> str:
    return f"{REPOSITORIES}/{name}/_manifests/revisions/{digest.algorithm}/{digest.hex}"


def manifest_media_type(name: str, digest: Digest) -> str:
    """Ours, beside the revision link: the Content-Type a manifest without a mediaType field was pushed with."""
    return f"{manifest_revision_dir(name, digest)}/mediatype"


def tags_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_manifests/tags"


def tag_dir(name: str, tag: str) -> str:
    return f"{REPOSITORIES}/{name}/_manifests/tags/{tag}"


def tag_current_link(name: str, tag: str) -> str:
    return f"{tag_dir(name, tag)}/current/link"


def tag_index_link(name: str, tag: str, digest: Digest) -> str:
    return f"{tag_dir(name, tag)}/index/{digest.algorithm}/{digest.hex}/link"


def referrers_dir(name: str, subject: Digest) -> str:
    """Ours: one link per manifest whose `subject` is the given digest."""
    return f"{REPOSITORIES}/{name}/_manifests/referrers/{subject.algorithm}/{subject.hex}"


def referrer_link(name: str, subject: Digest, referrer: Digest) -> str:
    return f"{referrers_dir(name, subject)}/{referrer.algorithm}/{referrer.hex}/link"


def uploads_dir(name: str) -> str:
    return f"{REPOSITORIES}/{name}/_uploads"


def upload_dir(name: str, upload_id: str) -> str:
    return f"{REPOSITORIES}/{name}/_uploads/{upload_id}"


def upload_started_at(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/startedat"


def upload_chunks_dir(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/chunks"


def upload_chunk(name: str, upload_id: str, offset: int) -> str:
    # Zero-padded so that the lexical order of chunk names is their byte order.
    return f"{upload_chunks_dir(name, upload_id)}/{offset:020d}"


def upload_digest_checkpoint(name: str, upload_id: str, algorithm: str, offset: int) -> str:
    """Ours: the hex digest of the upload's first `offset` bytes, written by the process that hashed them."""
    return f"{upload_dir(name, upload_id)}/digests/{algorithm}/{offset:020d}"


def parse_chunk_offset(chunk_path: str) -> int:
    return int(chunk_path.rsplit("/", 1)[1])


def repository_marker_dirs() -> tuple[str, ...]:
    """Directory names whose presence makes a directory under repositories/ a repository."""
    return ("_manifests", "_layers")


def repository_name_of(repository_dir: str) -> str:
    return repository_dir[len(REPOSITORIES) + 1 :]
