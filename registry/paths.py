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
# Ours: authentication state every replica shares (CI tokens are stored as hashes, never as secrets).
TOKEN_SIGNING_KEY = "moorage/auth/token-signing-key.pem"
CI_TOKENS = "moorage/auth/ci-tokens"


def ci_token(name: str) -> str:
    """A CI token's record; `name` is validated by registry.auth.ci_tokens first."""
    return f"{CI_TOKENS}/{name}.json"


# Ours: the metadata index's change records (one per repository change, read by every process) and the identity of
# this storage's index generation; the filesystem backend keeps the SQLite file itself there too.
INDEX_CHANGES = "moorage/index-changes"
INDEX_EPOCH = "moorage/index-epoch"
INDEX_DATABASE = "moorage/index.sqlite"
# Ours: access rules, visibility, quotas, personal tokens and the audit log changed through the admin API (not
# derived from anything: never replaced), when no `database.url` is set.
POLICY_DATABASE = "moorage/policy.sqlite"
# Ours: blobs GC has set aside (restorable until it deletes them), and the scheduled GC's per-slot leases.
GC_QUARANTINE = "moorage/gc/quarantine"
GC_LEASES = "moorage/gc/leases"
GC_LAST_REPORT = "moorage/gc/last-report.json"
UI_SESSIONS = "moorage/ui/sessions"
# Ours: the repositories that are caches of an upstream registry (registry/proxy), each naming its upstream.
PROXY_CACHED = "moorage/proxy/cached"


def proxy_cached(name: str) -> str:
    """The record saying repository `name` caches an upstream's (`_upstream`: no name component starts with `_`)."""
    return f"{PROXY_CACHED}/{name}/_upstream"


def proxy_used(name: str) -> str:
    """Rewritten (at most every so often) while the cached repository `name` is pulled: its time says when last."""
    return f"{PROXY_CACHED}/{name}/_used"


def parse_proxy_record(path: str) -> tuple[str, str] | None:
    """(repository, record kind: "_upstream" or "_used") of a path under PROXY_CACHED, or None."""
    prefix = f"{PROXY_CACHED}/"
    if not path.startswith(prefix):
        return None
    name, _, kind = path[len(prefix) :].rpartition("/")
    return (name, kind) if name and kind in ("_upstream", "_used") else None


def ui_session(key: str) -> str:
    """A UI session's record, under the hash of its cookie's secret (a reader of storage cannot sign in with it)."""
    return f"{UI_SESSIONS}/{key}"


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


def revision_tags_dir(name: str, digest: Digest) -> str:
    """Ours: one empty file per tag pointed at this revision (a tag moved away since leaves its file), so that the
    tags of a manifest are found without reading every tag. Apart from the revision: a deletion of the revision
    that races a tag write must still find the tag when it looks again."""
    return f"{REPOSITORIES}/{name}/_manifests/revision-tags/{digest.algorithm}/{digest.hex}"


def revision_tag(name: str, digest: Digest, tag: str) -> str:
    return f"{revision_tags_dir(name, digest)}/{tag}"


def revision_tags_complete(name: str) -> str:
    """Ours: present once every tag of the repository has its `revision_tag` file (tags written before those files
    existed get theirs on the first lookup)."""
    return f"{REPOSITORIES}/{name}/_manifests/revision-tags-complete"


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


def upload_publishing_dir(name: str, upload_id: str) -> str:
    return f"{upload_dir(name, upload_id)}/publishing"


def upload_publishing(name: str, upload_id: str, token: str) -> str:
    """Ours, one per completion in flight (`token` is random): a second name for a single-chunk upload's chunk where
    storage links, an empty marker where it copies."""
    return f"{upload_publishing_dir(name, upload_id)}/{token}"


def upload_digest_checkpoint(name: str, upload_id: str, algorithm: str, offset: int) -> str:
    """Ours: the hex digest of the upload's first `offset` bytes, written by the process that hashed them."""
    return f"{upload_dir(name, upload_id)}/digests/{algorithm}/{offset:020d}"


def parse_chunk_offset(chunk_path: str) -> int:
    return int(chunk_path.rsplit("/", 1)[1])


def repository_marker_dirs() -> tuple[str, ...]:
    """Directory names whose presence makes a directory under repositories/ a repository."""
    return ("_manifests", "_layers")


def uploads_dir_name() -> str:
    """The directory name of a repository's upload sessions (no marker: sessions alone make no repository)."""
    return "_uploads"


def repository_name_of(repository_dir: str) -> str:
    return repository_dir[len(REPOSITORIES) + 1 :]


def quarantined_blob(digest: Digest) -> str:
    """Where GC keeps a blob between taking it out of `blobs/` and deleting it (see registry/gc/collector.py)."""
    return f"{GC_QUARANTINE}/{digest.algorithm}/{digest.hex}"


def gc_lease(slot: int) -> str:
    return f"{GC_LEASES}/{slot:012d}"


def parse_gc_lease(path: str) -> int | None:
    base = path.rsplit("/", 1)[-1]
    return int(base) if base.isdigit() else None


def parse_blob_data(path: str) -> tuple[str, str] | None:
    """(algorithm, hex) of a `blobs/<alg>/<hh>/<hex>/data` path; None for anything else."""
    parts = path[len(BLOBS) + 1 :].split("/") if path.startswith(BLOBS + "/") else []
    if len(parts) != 4 or parts[3] != "data":
        return None
    return parts[0], parts[2]


def parse_quarantined_blob(path: str) -> tuple[str, str] | None:
    parts = path[len(GC_QUARANTINE) + 1 :].split("/") if path.startswith(GC_QUARANTINE + "/") else []
    return (parts[0], parts[1]) if len(parts) == 2 else None


def parse_repository_path(path: str) -> tuple[str, str, list[str]] | None:
    """(repository name, area, parts after the area) of a path under repositories/, the area being one of
    `_manifests`, `_layers`, `_uploads`; None for anything else. No name component starts with `_`."""
    if not path.startswith(REPOSITORIES + "/"):
        return None
    parts = path[len(REPOSITORIES) + 1 :].split("/")
    for i, part in enumerate(parts):
        if part.startswith("_"):
            if i == 0:
                return None
            return "/".join(parts[:i]), part, parts[i + 1 :]
    return None


def repository_areas(name: str) -> tuple[str, ...]:
    """Everything a repository owns, without the repositories nested under its name (`a` vs `a/b`), in the
    order a deletion removes them: what makes blobs visible before the manifests that reference them."""
    return tuple(f"{repository(name)}/{area}" for area in ("_layers", "_manifests", "_uploads"))


def manifest_revisions_dir(name: str) -> str:
    """Holds `<algorithm>/<hex>/link` for every manifest revision of the repository."""
    return f"{REPOSITORIES}/{name}/_manifests/revisions"


def index_change(key: str) -> str:
    return f"{INDEX_CHANGES}/{key}"


def index_change_key(path: str) -> str:
    return path.rsplit("/", 1)[1]
