"""Image references: `host[:port]/repository[:tag][@digest]`, as docker, skopeo and crane write them."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from registry.client.errors import ClientError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"
_NAME_RE = re.compile(r"^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*\Z")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z")
_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+\Z")
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")


@dataclass(frozen=True)
class Reference:
    """An image in a repository on a registry; `tag` and `digest` are both optional."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What goes after `/manifests/`: the digest when there is one, else the tag (default `latest`)."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_tag(self, tag: str) -> Reference:
        return replace(self, tag=check_tag(tag), digest=None)

    def with_digest(self, digest: str) -> Reference:
        return replace(self, digest=digest)

    @property
    def repository_name(self) -> str:
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.repository_name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    @property
    def short(self) -> str:
        """`repository:tag` or `repository@digest`, for messages."""
        return str(self)[len(self.registry) + 1 :]


def _looks_like_host(part: str) -> bool:
    return "." in part or ":" in part or part == "localhost" or part.startswith("[")


def _split_registry(text: str) -> tuple[str, str]:
    first, sep, rest = text.partition("/")
    if sep and _looks_like_host(first):
        return first, rest
    return DOCKER_HUB, (text if "/" in text else f"library/{text}")


def check_tag(tag: str) -> str:
    if not _TAG_RE.match(tag):
        raise ClientError(f"invalid tag: {tag!r}")
    return tag


def parse_reference(text: str) -> Reference:
    """Parse `host[:port]/repo[:tag][@digest]`; without a host the image is on Docker Hub, as with docker."""
    if not text:
        raise ClientError("empty image reference")
    remainder, _, digest = text.partition("@")
    registry, path = _split_registry(remainder)
    tag: str | None = None
    name, colon, maybe_tag = path.rpartition(":")
    if colon and "/" not in maybe_tag:
        tag, path = maybe_tag, name
    if not _NAME_RE.match(path):
        raise ClientError(f"invalid repository name in {text!r}: {path!r}")
    if tag is not None:
        check_tag(tag)
    if digest and not _DIGEST_RE.match(digest):
        raise ClientError(f"invalid digest in {text!r}: {digest!r}")
    return Reference(registry, path, tag, digest or None)


def parse_repository(text: str) -> Reference:
    """Parse `host[:port]/repo` (no tag or digest)."""
    ref = parse_reference(text)
    if ref.tag or ref.digest:
        raise ClientError(f"expected a repository without tag or digest: {text!r}")
    return ref


def parse_registry(text: str) -> str:
    """A registry host as given on the command line (`host[:port]`), with any scheme or path dropped."""
    host = re.sub(r"^[a-z]+://", "", text.strip()).split("/", 1)[0]
    if not host:
        raise ClientError(f"invalid registry: {text!r}")
    return host


def api_host(registry: str) -> str:
    return DOCKER_HUB_API if registry == DOCKER_HUB else registry


def is_local(registry: str) -> bool:
    """localhost and loopback registries are reached over plain HTTP, as docker does."""
    host = registry.rsplit(":", 1)[0] if not registry.startswith("[") else registry.split("]")[0] + "]"
    return host in _LOCAL_HOSTS
