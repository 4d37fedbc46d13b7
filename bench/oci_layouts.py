"""Build the benchmark's inputs: OCI image layouts that skopeo reads (`oci:DIR:TAG`) and a raw blob for curl.

Every layer is an uncompressed tar holding one file of pseudo-random bytes (incompressible, so nobody can win by
compressing), generated and written in 1 MiB chunks: a 1 GiB layer never sits in memory. The content is
deterministic (seeded), so a cache directory can be reused between runs: `ready.json` records what was built
and is written last, and a build whose parameters match it is skipped.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CHUNK = 1024 * 1024
TAR_BLOCK = 512
TAR_TRAILER = 2 * TAR_BLOCK
EPOCH = 1_700_000_000
FORMAT_VERSION = 1

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
TAG = "latest"


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int


@dataclass(frozen=True)
class Layout:
    """One OCI layout directory holding one image tagged `TAG`."""

    path: str
    manifest: Blob
    config: Blob
    layers: list[Blob]

    @property
    def ref(self) -> str:
        return f"oci:{self.path}:{TAG}"

    @property
    def total_bytes(self) -> int:
        return self.manifest.size + self.config.size + sum(layer.size for layer in self.layers)


@dataclass(frozen=True)
class Inputs:
    """Everything the rounds reuse: the big image, the raw blob file and the small images."""

    big: Layout
    raw_path: str
    raw: Blob
    small: list[Layout]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Inputs:
        def layout(o: dict[str, Any]) -> Layout:
            return Layout(o["path"], Blob(**o["manifest"]), Blob(**o["config"]), [Blob(**b) for b in o["layers"]])

        return cls(layout(obj["big"]), obj["raw_path"], Blob(**obj["raw"]), [layout(o) for o in obj["small"]])


def _random_stream(path: Path, size: int, seed: str, header: bytes = b"", trailer: bytes = b"") -> Blob:
    """Write header + (size - len(header) - len(trailer)) random bytes + trailer, hashing as it goes.

    `path` is the file to write, or a directory: then the file is named by its sha256 hex digest (a layout's blob).
    """
    body = size - len(header) - len(trailer)
    if body < 0:
        raise ValueError(f"size {size} is smaller than header and trailer")
    rng = random.Random(seed)
    h = hashlib.sha256()
    tmp = path / ".partial" if path.is_dir() else path.with_name(path.name + ".partial")
    with tmp.open("wb") as f:
        h.update(header)
        f.write(header)
        left = body
        while left > 0:
            chunk = rng.randbytes(min(CHUNK, left))
            left -= len(chunk)
            h.update(chunk)
            f.write(chunk)
        h.update(trailer)
        f.write(trailer)
    digest = "sha256:" + h.hexdigest()
    tmp.replace(path / h.hexdigest() if path.is_dir() else path)
    return Blob(digest, size)


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = EPOCH
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _write_layer(blobs: Path, size: int, seed: str) -> Blob:
    """An uncompressed tar of exactly `size` bytes (a multiple of 512): one file of random bytes."""
    if size % TAR_BLOCK or size < 4 * TAR_BLOCK:
        raise ValueError(f"layer size {size} must be a multiple of {TAR_BLOCK} and at least {4 * TAR_BLOCK}")
    content = size - TAR_BLOCK - TAR_TRAILER
    header = _tar_header(f"bench/{seed}.bin", content)
    return _random_stream(blobs, size, seed, header, b"\0" * TAR_TRAILER)


def _add_json(blobs: Path, obj: Any) -> tuple[Blob, bytes]:
    data = json.dumps(obj, indent=2, sort_keys=True).encode() + b"\n"
    hexdigest = hashlib.sha256(data).hexdigest()
    (blobs / hexdigest).write_bytes(data)
    return Blob("sha256:" + hexdigest, len(data)), data


def build_layout(path: Path, layer_sizes: list[int], seed: str) -> Layout:
    """A layout at `path` with one image (tag `TAG`) whose layers have the given sizes."""
    if path.exists():
        shutil.rmtree(path)
    blobs = path / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    layers = [_write_layer(blobs, size, f"{seed}-layer{i}") for i, size in enumerate(layer_sizes)]
    config_obj = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": {"Cmd": ["/bin/true"], "Labels": {"moorage.bench": seed}},
        # Uncompressed layers: the diff ID is the layer digest.
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": f"moorage bench {seed}"}],
    }
    config, _ = _add_json(blobs, config_obj)
    manifest_obj = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": MT_LAYER_TAR, "digest": b.digest, "size": b.size} for b in layers],
    }
    manifest, _ = _add_json(blobs, manifest_obj)
    index = {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [
            {
                "mediaType": MT_MANIFEST,
                "digest": manifest.digest,
                "size": manifest.size,
                "annotations": {"org.opencontainers.image.ref.name": TAG},
            }
        ],
    }
    (path / "index.json").write_text(json.dumps(index, indent=2))
    return Layout(str(path), manifest, config, layers)


def build_inputs(
    cache: Path, *, big_size: int, small_images: int, small_layers: int, small_layer_size: int, log: Any = print
) -> Inputs:
    """Build (or reuse from `cache`) the big image, the raw blob and the small images."""
    params = {
        "format": FORMAT_VERSION,
        "big_size": big_size,
        "small_images": small_images,
        "small_layers": small_layers,
        "small_layer_size": small_layer_size,
    }
    marker = cache / "ready.json"
    if marker.is_file():
        try:
            saved = json.loads(marker.read_text())
            if saved.get("params") == params:
                inputs = Inputs.from_json(saved["inputs"])
                if Path(inputs.raw_path).is_file() and Path(inputs.big.path, "index.json").is_file():
                    log(f"inputs: reusing {cache}")
                    return inputs
        except (OSError, ValueError, KeyError, TypeError):
            pass
        marker.unlink()
    cache.mkdir(parents=True, exist_ok=True)
    log(f"inputs: building in {cache} (big layer {big_size} bytes, {small_images} x {small_layers} small layers)")
    big = build_layout(cache / "big", [big_size], "big")
    raw_dir = cache / "raw"
    raw_dir.mkdir(exist_ok=True)
    raw_path = raw_dir / "blob.bin"
    raw = _random_stream(raw_path, big_size, "raw")
    small = [
        build_layout(cache / "small" / f"{i:02d}", [small_layer_size] * small_layers, f"small{i:02d}")
        for i in range(small_images)
    ]
    inputs = Inputs(big, str(raw_path), raw, small)
    marker.write_text(json.dumps({"params": params, "inputs": inputs.to_json()}, indent=2))
    return inputs
