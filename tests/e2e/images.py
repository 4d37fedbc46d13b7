"""Build and read OCI image layouts on disk (https://github.com/opencontainers/image-spec/blob/main/image-layout.md).

The layouts are what skopeo's `oci:DIR:TAG` transport reads and writes: `DIR/oci-layout`, `DIR/index.json` and
`DIR/blobs/sha256/<hex>`. Layers are real tar archives (uncompressed or gzip), configs are real image configs, so
any client that unpacks or validates them is satisfied. Large layers are streamed to disk, never held in memory.
"""

from __future__ import annotations

import filecmp
import gzip
import hashlib
import io
import json
import random
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OCI_LAYOUT_VERSION = "1.0.0"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"

CHUNK = 1024 * 1024
# A fixed timestamp keeps layers (and so digests) reproducible.
EPOCH = 1_700_000_000


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: dict[str, str] | None = None
    annotations: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform:
            out["platform"] = dict(self.platform)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Descriptor:
        return cls(
            media_type=obj["mediaType"],
            digest=obj["digest"],
            size=int(obj["size"]),
            platform=obj.get("platform"),
            annotations=obj.get("annotations"),
        )

    def with_platform(self, platform: dict[str, str]) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size, platform, self.annotations)


@dataclass(frozen=True)
class Image:
    """One single-platform image written into a layout."""

    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    diff_ids: tuple[str, ...]
    architecture: str
    os: str

    @property
    def blob_digests(self) -> list[str]:
        return [self.config.digest, *(layer.digest for layer in self.layers)]


@dataclass(frozen=True)
class ImageIndex:
    """A multi-platform index and its images, written into a layout."""

    index: Descriptor
    images: tuple[Image, ...]

    def image_for(self, architecture: str, os_name: str = "linux") -> Image:
        for image in self.images:
            if image.architecture == architecture and image.os == os_name:
                return image
        raise KeyError(f"no {os_name}/{architecture} image in the index")


def _chunks(header: bytes, rng: random.Random, size: int, trailer: bytes) -> Iterator[bytes]:
    yield header
    left = size
    while left > 0:
        n = min(CHUNK, left)
        left -= n
        yield rng.randbytes(n)
    yield trailer


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = EPOCH
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def make_tar(files: dict[str, bytes]) -> bytes:
    """A reproducible, uncompressed tar archive holding `files` (path -> content), directories included."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for path in sorted(files):
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d)
                    info = _tar_info(d, 0)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
            data = files[path]
            tar.addfile(_tar_info(path, len(data)), io.BytesIO(data))
    return buf.getvalue()


def gzip_bytes(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


class OciLayout:
    """An OCI image layout directory: add blobs, images and indexes, and tag them in index.json.

    `OciLayout(path)` creates an empty layout; `OciLayout.open(path)` reads one that exists (e.g. written by skopeo).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._refs: list[Descriptor] = []
        self.path.mkdir(parents=True, exist_ok=True)
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        (self.path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
        self._write_index()

    @classmethod
    def open(cls, path: Path) -> OciLayout:
        layout = cls.__new__(cls)
        layout.path = path
        layout._refs = [Descriptor.from_json(e) for e in layout.read_index().get("manifests", [])]
        return layout

    @property
    def blobs_dir(self) -> Path:
        return self.path / "blobs" / "sha256"

    def blob_path(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        return self.path / "blobs" / algorithm / hexdigest

    def add_blob(self, data: bytes, media_type: str) -> Descriptor:
        digest = sha256_digest(data)
        path = self.blob_path(digest)
        if not path.exists():
            path.write_bytes(data)
        return Descriptor(media_type, digest, len(data))

    def add_json(self, obj: Any, media_type: str) -> tuple[Descriptor, bytes]:
        data = canonical_json(obj)
        return self.add_blob(data, media_type), data

    def tag(self, descriptor: Descriptor, tag: str) -> None:
        annotations = dict(descriptor.annotations or {})
        annotations[REF_NAME] = tag
        self._refs = [d for d in self._refs if (d.annotations or {}).get(REF_NAME) != tag]
        self._refs.append(
            Descriptor(descriptor.media_type, descriptor.digest, descriptor.size, descriptor.platform, annotations)
        )
        self._write_index()

    def _write_index(self) -> None:
        index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [d.to_json() for d in self._refs]}
        (self.path / "index.json").write_bytes(canonical_json(index))

    def add_layer(self, files: dict[str, bytes], *, compress: bool) -> tuple[Descriptor, str]:
        """Write a tar layer; return its descriptor and its diff_id (digest of the uncompressed tar)."""
        tar = make_tar(files)
        diff_id = sha256_digest(tar)
        if compress:
            return self.add_blob(gzip_bytes(tar), MT_LAYER_GZIP), diff_id
        return self.add_blob(tar, MT_LAYER_TAR), diff_id

    def add_large_layer(self, size: int, *, seed: int = 0) -> tuple[Descriptor, str]:
        """Stream an uncompressed tar layer of exactly `size` bytes (a multiple of 512, at least 2 KiB) of random data.

        The archive holds one regular file whose content is random; the tar headers, padding and end-of-archive
        blocks are counted in `size`. Memory use stays at one chunk.
        """
        if size % 512 or size < 4 * 512:
            raise ValueError("a large layer's size must be a multiple of 512 and at least 2048 bytes")
        # One header block for the member, two zero blocks at the end; the content fills the rest exactly.
        content_size = size - 3 * 512
        header = _tar_info("large.bin", content_size).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
        tmp = self.blobs_dir / f".large-{seed}.tmp"
        h = hashlib.sha256()
        rng = random.Random(seed)
        with tmp.open("wb") as f:
            for chunk in _chunks(header, rng, content_size, b"\0" * (2 * 512)):
                f.write(chunk)
                h.update(chunk)
        digest = "sha256:" + h.hexdigest()
        tmp.rename(self.blob_path(digest))
        return Descriptor(MT_LAYER_TAR, digest, size), digest

    def add_image(
        self,
        layers: Iterable[tuple[Descriptor, str]],
        *,
        architecture: str = "amd64",
        os_name: str = "linux",
        variant: str | None = None,
        tag: str | None = None,
        labels: dict[str, str] | None = None,
    ) -> Image:
        """Write a config and a manifest for `layers` ((descriptor, diff_id) pairs); tag it if `tag` is given."""
        layer_list = list(layers)
        diff_ids = [diff_id for _, diff_id in layer_list]
        config: dict[str, Any] = {
            "created": "2024-01-01T00:00:00Z",
            "architecture": architecture,
            "os": os_name,
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/sh"],
                "Labels": labels or {},
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "moorage e2e"} for _ in diff_ids],
        }
        if variant:
            config["variant"] = variant
        config_desc, _ = self.add_json(config, MT_CONFIG)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": config_desc.to_json(),
            "layers": [desc.to_json() for desc, _ in layer_list],
        }
        manifest_desc, _ = self.add_json(manifest, MT_MANIFEST)
        platform = {"architecture": architecture, "os": os_name}
        if variant:
            platform["variant"] = variant
        if tag:
            self.tag(manifest_desc, tag)
        return Image(
            manifest=manifest_desc.with_platform(platform),
            config=config_desc,
            layers=tuple(desc for desc, _ in layer_list),
            diff_ids=tuple(diff_ids),
            architecture=architecture,
            os=os_name,
        )

    def add_index(self, images: Iterable[Image], *, tag: str | None = None) -> ImageIndex:
        image_list = tuple(images)
        index = {
            "schemaVersion": 2,
            "mediaType": MT_INDEX,
            "manifests": [image.manifest.to_json() for image in image_list],
        }
        desc, _ = self.add_json(index, MT_INDEX)
        if tag:
            self.tag(desc, tag)
        return ImageIndex(index=desc, images=image_list)

    # Reading back (for layouts that skopeo wrote).

    def read_index(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.path / "index.json").read_text())
        return data

    def ref(self, tag: str) -> Descriptor:
        """The descriptor that index.json gives for `tag`."""
        for entry in self.read_index().get("manifests", []):
            if entry.get("annotations", {}).get(REF_NAME) == tag:
                return Descriptor.from_json(entry)
        raise KeyError(f"tag {tag!r} not in {self.path / 'index.json'}")

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    def read_json_blob(self, digest: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.read_blob(digest))
        return data

    def blob_digests(self) -> set[str]:
        return {"sha256:" + p.name for p in self.blobs_dir.iterdir() if not p.name.startswith(".")}

    def reachable_blobs(self, digest: str) -> Iterator[str]:
        """`digest` and every blob it references, recursively (index -> manifests -> config and layers)."""
        yield digest
        path = self.blob_path(digest)
        if path.stat().st_size > 4 * 1024 * 1024:
            return  # a layer: never parse big blobs as JSON
        try:
            doc = json.loads(path.read_bytes())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return
        if not isinstance(doc, dict):
            return
        media_type = doc.get("mediaType", "")
        if "manifests" in doc and media_type != MT_MANIFEST:
            for entry in doc["manifests"]:
                yield from self.reachable_blobs(entry["digest"])
        elif "layers" in doc and "config" in doc:
            yield doc["config"]["digest"]
            for layer in doc["layers"]:
                yield layer["digest"]


def small_image(layout: OciLayout, *, name: str, architecture: str = "amd64", tag: str | None = None) -> Image:
    """A small two-layer image (one gzip layer, one uncompressed) whose content names `name` and the platform."""
    base = layout.add_layer(
        {
            "etc/os-release": f"NAME=moorage-e2e\nID={name}\nARCH={architecture}\n".encode(),
            "bin/hello": f"#!/bin/sh\necho hello from {name} on {architecture}\n".encode(),
        },
        compress=True,
    )
    app = layout.add_layer(
        {
            "app/data.bin": random.Random(f"{name}/{architecture}").randbytes(64 * 1024),
            "app/README": f"{name} {architecture}\n".encode(),
        },
        compress=False,
    )
    return layout.add_image([base, app], architecture=architecture, tag=tag, labels={"e2e.name": name})


def multiarch_index(layout: OciLayout, *, name: str, tag: str | None = None) -> ImageIndex:
    """An OCI index of a linux/amd64 and a linux/arm64 image, each with distinct layers."""
    images = [small_image(layout, name=name, architecture=arch) for arch in ("amd64", "arm64")]
    return layout.add_index(images, tag=tag)


def assert_same_blobs(expected: OciLayout, actual: OciLayout, root_digest: str) -> list[str]:
    """Every blob reachable from `root_digest` in `expected` is in `actual`, byte for byte, and hashes to its name.

    Returns the digests compared (root first).
    """
    digests = list(dict.fromkeys(expected.reachable_blobs(root_digest)))
    for digest in digests:
        want, got = expected.blob_path(digest), actual.blob_path(digest)
        assert got.is_file(), f"blob {digest} is missing from the pulled layout {actual.path}"
        assert got.stat().st_size == want.stat().st_size, (
            f"blob {digest}: pulled {got.stat().st_size} bytes, pushed {want.stat().st_size}"
        )
        assert file_digest(got) == digest, f"blob {digest}: the pulled content hashes to {file_digest(got)}"
        assert filecmp.cmp(want, got, shallow=False), f"blob {digest}: pulled bytes differ from pushed bytes"
    return digests
